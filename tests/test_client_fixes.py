"""What OpenAI clients met, fixed (issue 22): several choices per prompt (n), the limit on choices per request,
a tool call cut by max_tokens, a JSON schema that matches nothing, a GBNF grammar llama.cpp accepts, and tiny
temperatures. Through the FastAPI app in process, on the session's real smollm2-135m engine.

Sampled answers are compared with references (the same request with n = 1 and the documented seed), never
judged: a tiny model's answers are only checked for shape and equality.
"""

from __future__ import annotations

import json
import re

import pytest

from conftest import WEATHER_TOOL
from quickdraft.constraint import GrammarSpec
from quickdraft.server.prepare import choice_seed

MAX_CHOICES = 4
HELLO = [{"role": "user", "content": "Say hello."}]
COUNTING = "1, 2, 3, 4, 5,"
CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
SAMPLED = {"temperature": 1.0, "seed": 7}


@pytest.fixture(scope="module")
def api(smol_engine):
    from fastapi.testclient import TestClient

    from quickdraft.config import Config, LimitsConfig, ModelsConfig, ServerConfig
    from quickdraft.server.app import create_app

    config = Config(models=ModelsConfig(target="smollm2-135m", draft="ngram"),
                    server=ServerConfig(limits=LimitsConfig(max_choices=MAX_CHOICES)))
    with TestClient(create_app(smol_engine, config)) as client:
        yield client


def post(api, path: str, body: dict) -> dict:
    r = api.post(path, json=body)
    assert r.status_code == 200, r.text
    return r.json()


def error(api, path: str, body: dict) -> dict:
    r = api.post(path, json=body)
    assert r.status_code == 400, r.text
    return r.json()["error"]


def events(api, path: str, body: dict) -> list[dict]:
    with api.stream("POST", path, json={**body, "stream": True}) as r:
        assert r.status_code == 200
        lines = [line[len("data: "):] for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


# ---- n: several choices per prompt ------------------------------------------------------------------------------
def test_greedy_choices_are_the_same_answer(api):
    one = post(api, CHAT, {"messages": HELLO, "max_tokens": 8})
    three = post(api, CHAT, {"messages": HELLO, "max_tokens": 8, "n": 3})
    assert [c["index"] for c in three["choices"]] == [0, 1, 2]
    assert all(c["message"] == one["choices"][0]["message"] for c in three["choices"])
    # usage: the prompt once (the choices share it), every choice's completion
    assert three["usage"]["prompt_tokens"] == one["usage"]["prompt_tokens"]
    assert three["usage"]["completion_tokens"] == 3 * one["usage"]["completion_tokens"]


def test_sampled_choices_take_the_documented_seeds(api):
    body = {"messages": HELLO, "max_tokens": 8, **SAMPLED}
    three = post(api, CHAT, {**body, "n": 3})
    for j, choice in enumerate(three["choices"]):
        alone = post(api, CHAT, {**body, "seed": choice_seed(SAMPLED["seed"], j)})
        assert choice["message"] == alone["choices"][0]["message"], j
    assert choice_seed(SAMPLED["seed"], 0) == SAMPLED["seed"]  # choice 0 is the n = 1 answer
    assert len({choice_seed(SAMPLED["seed"], j) for j in range(3)}) == 3
    assert choice_seed(-1, 0) == 2**64 - 1 and choice_seed(None, 2) is None
    assert post(api, CHAT, {**body, "n": 3})["choices"] == three["choices"]  # reproducible


def test_prompts_times_n_are_numbered_prompt_major(api):
    prompts = [COUNTING, "a, b, c, d,"]
    body = {"max_tokens": 6, "echo": True, **SAMPLED}
    both = post(api, COMPLETIONS, {**body, "prompt": prompts, "n": 2})
    assert [c["index"] for c in both["choices"]] == [0, 1, 2, 3]
    prompt_tokens = 0
    for i, prompt in enumerate(prompts):
        for j in range(2):
            alone = post(api, COMPLETIONS, {**body, "prompt": prompt, "seed": choice_seed(SAMPLED["seed"], j)})
            assert both["choices"][i * 2 + j]["text"] == alone["choices"][0]["text"], (i, j)
            assert both["choices"][i * 2 + j]["text"].startswith(prompt)  # echo, per choice
        prompt_tokens += alone["usage"]["prompt_tokens"]
    assert both["usage"]["prompt_tokens"] == prompt_tokens


def test_streamed_choices_carry_their_index(api):
    whole = post(api, CHAT, {"messages": HELLO, "max_tokens": 6, "n": 2, **SAMPLED})
    chunks = events(api, CHAT, {"messages": HELLO, "max_tokens": 6, "n": 2, **SAMPLED,
                                "stream_options": {"include_usage": True}})
    for index in (0, 1):
        deltas = [c["choices"][0] for c in chunks if c["choices"] and c["choices"][0]["index"] == index]
        assert deltas[0]["delta"]["role"] == "assistant"
        content = "".join(d["delta"].get("content") or "" for d in deltas)
        assert content == whole["choices"][index]["message"]["content"]
        assert deltas[-1]["finish_reason"] == whole["choices"][index]["finish_reason"]
    assert chunks[-1]["usage"] == whole["usage"]


# ---- the limit on choices per request ----------------------------------------------------------------------------
@pytest.mark.parametrize("body, param", [
    ({"prompt": ["1, 2,"] * (MAX_CHOICES + 1)}, "prompt"),
    ({"prompt": [[16]] * 100_000}, "prompt"),  # a few hundred kB of tiny prompts, refused before tokenizing
    ({"prompt": "1, 2,", "n": MAX_CHOICES + 1}, "n"),
    ({"prompt": ["1, 2,", "3, 4,"], "n": MAX_CHOICES // 2 + 1}, "n"),
])
def test_more_choices_than_the_limit_are_a_400(api, body, param):
    e = error(api, COMPLETIONS, {**body, "max_tokens": 2})
    assert e["param"] == param and "server.limits.max_choices" in e["message"]
    assert post(api, COMPLETIONS, {"prompt": ["1, 2,"] * MAX_CHOICES, "max_tokens": 1})["usage"]["completion_tokens"] \
        == MAX_CHOICES


def test_the_limit_holds_for_chat_and_n_must_be_positive(api):
    assert error(api, CHAT, {"messages": HELLO, "n": MAX_CHOICES + 1})["param"] == "n"
    e = error(api, CHAT, {"messages": HELLO, "n": 0})
    assert e["param"] == "n" and e["code"] == "invalid_value"



def test_a_busy_server_still_answers_too_many_choices_with_a_400(api, monkeypatch):
    """Over the limit is final (400), not 'retry shortly' (429): the limit is checked before the queue."""
    from quickdraft.server.scheduler import QueueFull

    def busy(n_streams):
        raise QueueFull("the server is busy")

    monkeypatch.setattr(api.app.state.scheduler, "check_room", busy)
    assert error(api, COMPLETIONS, {"prompt": "1, 2,", "n": MAX_CHOICES + 1})["param"] == "n"
    assert api.post(COMPLETIONS, json={"prompt": "1, 2,", "max_tokens": 1}).status_code == 429


def test_llama_server_completion_has_the_same_limits(api):
    """/completion takes a list of prompts too (one result each), and no n: both bounded like /v1's."""
    e = error(api, "/completion", {"prompt": ["1, 2,"] * (MAX_CHOICES + 1), "n_predict": 1})
    assert e["param"] == "prompt" and "server.limits.max_choices" in e["message"]
    assert error(api, "/completion", {"prompt": "1, 2,", "n": 2, "n_predict": 1})["param"] == "n"

# ---- a tool call cut by max_tokens -----------------------------------------------------------------------------
FORCED = {"messages": [{"role": "user", "content": "What is the weather like in Paris?"}], "tools": [WEATHER_TOOL],
          "tool_choice": "required"}


def raw_answer(api_engine, max_tokens: int) -> str:
    """The model's own text for FORCED (the Hermes markup included), from the engine stream the server runs."""
    from quickdraft.config import Config
    from quickdraft.server.prepare import prepare_chat
    from quickdraft.server.schemas import ChatCompletionRequest

    req = ChatCompletionRequest.model_validate({**FORCED, "max_tokens": max_tokens})
    prepared = prepare_chat(api_engine, Config(), req)
    return "".join(step.text for step in prepared.streams[0])


def test_a_cut_tool_call_comes_back_as_a_partial_call(api, smol_engine):
    whole = raw_answer(smol_engine, 200)
    match = re.fullmatch(r'<tool_call>\n\{"name": "(\w+)", "arguments": (.*)\}\n</tool_call>', whole, re.DOTALL)
    assert match, whole
    name, arguments = match.groups()
    # cut in the tag, right after it, in the name, in the arguments
    for max_tokens in (2, 5, 12, 20):
        cut = raw_answer(smol_engine, max_tokens)
        assert whole.startswith(cut) and len(cut) < len(whole)
        body = {**FORCED, "max_tokens": max_tokens}
        choice = post(api, CHAT, body)["choices"][0]
        streamed = [c["choices"][0] for c in events(api, CHAT, body)]
        assert choice["finish_reason"] == streamed[-1]["finish_reason"] == "length"
        assert not choice["message"]["content"]  # never the <tool_call> markup
        assert not any(d["delta"].get("content") for d in streamed)
        if not cut.startswith("<tool_call>"):  # no call begun yet
            assert "tool_calls" not in choice["message"], choice
            continue
        (call,) = choice["message"]["tool_calls"]
        assert call["type"] == "function" and call["id"].startswith("call_")
        assert name.startswith(call["function"]["name"])  # as far as they were written
        assert arguments.startswith(call["function"]["arguments"])
        if '"arguments": ' in cut:
            assert call["function"]["name"] == name
            assert call["function"]["arguments"] == cut.split('"arguments": ', 1)[1]
        calls = [d["delta"]["tool_calls"][0] for d in streamed if d["delta"].get("tool_calls")]
        assert calls[0]["function"]["name"] == call["function"]["name"]
        assert "".join(c["function"]["arguments"] for c in calls) == call["function"]["arguments"]


def test_a_whole_forced_call_still_finishes_with_tool_calls(api):
    choice = post(api, CHAT, {**FORCED, "max_tokens": 200})["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert set(json.loads(choice["message"]["tool_calls"][0]["function"]["arguments"])) == {"city", "unit"}


# ---- grammars -----------------------------------------------------------------------------------------------------
def test_a_schema_that_matches_nothing_is_a_400(api):
    fmt = {"type": "json_schema", "json_schema": {"name": "loop", "schema": {"$ref": "#"}}}
    e = error(api, CHAT, {"messages": HELLO, "max_tokens": 8, "response_format": fmt})
    assert e["param"] == "response_format" and "matches no text" in e["message"]
    e = error(api, COMPLETIONS, {"prompt": "x", "max_tokens": 8, "json_schema": {"$ref": "#"}})
    assert e["param"] == "json_schema"
    # a schema that refers to itself with a way out still compiles
    nested = {"type": "object", "properties": {"child": {"$ref": "#"}}, "additionalProperties": False}
    body = post(api, COMPLETIONS, {"prompt": "A tree as JSON:", "max_tokens": 24, "json_schema": nested})
    assert body["choices"][0]["text"].startswith("{")


def test_gbnf_nested_repetition_is_accepted_with_its_language(api, smol_engine):
    body = {"prompt": "Scream:", "max_tokens": 12, "grammar": 'root ::= ("a"+)+'}
    text = post(api, COMPLETIONS, body)["choices"][0]["text"]
    assert re.fullmatch("a+", text), text
    same_language = smol_engine.generate("Scream:", max_tokens=12, grammar=GrammarSpec("regex", "a+"))
    assert text == same_language.text


# ---- tiny temperatures -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("extra", [{}, {"top_p": 0.9}, {"top_k": 5, "min_p": 0.05}])
def test_a_tiny_temperature_is_greedy(api, extra):
    greedy = post(api, COMPLETIONS, {"prompt": COUNTING, "max_tokens": 6, "temperature": 0})
    tiny = post(api, COMPLETIONS, {"prompt": COUNTING, "max_tokens": 6, "temperature": 1e-320, "seed": 3, **extra})
    assert tiny["choices"][0]["text"] == greedy["choices"][0]["text"]
