"""OpenAI-compatibility details and tool calls over HTTP, against a real `quickdraft serve` of the demo chat
model smollm2-135m (ChatML, a template that knows no tools: they are offered in the Hermes form).

Answers are greedy, so they are compared exactly (with each other, streamed against whole); what a tiny
model writes is never asserted, only shapes, equalities and what a grammar guarantees.
"""

from __future__ import annotations

import json

import httpx
import jsonschema
import pytest

from conftest import WEATHER_TOOL
from quickdraft.server.process import ServerProcess

MODEL = "smollm2-135m"
HELLO = [{"role": "user", "content": "What is the capital of France?"}]
WEATHER = WEATHER_TOOL
TIME = {"type": "function", "function": {"name": "get_time", "description": "The time in a time zone",
                                         "parameters": {"type": "object", "properties": {"zone": {"type": "string",
                                                                                                   "maxLength": 12}},
                                                        "required": ["zone"], "additionalProperties": False}}}
ASK = [{"role": "user", "content": "What is the weather like in Paris today?"}]


@pytest.fixture(scope="module")
def http(smol_server):
    with httpx.Client(base_url=smol_server.root, timeout=300) as c:
        yield c


def post(http, path, body) -> dict:
    r = http.post(path, json=body)
    assert r.status_code == 200, r.text
    return r.json()


def stream_events(http, path, body) -> list[dict]:
    events = []
    with http.stream("POST", path, json={**body, "stream": True}) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(json.loads(line[len("data: "):]))
    return events


# ---- compatibility ----------------------------------------------------------------------------------------------
def test_system_fingerprint_on_every_response_and_chunk(http):
    chat = post(http, "/v1/chat/completions", {"messages": HELLO, "max_tokens": 3})
    text = post(http, "/v1/completions", {"prompt": "Hello", "max_tokens": 3})
    chunks = stream_events(http, "/v1/chat/completions", {"messages": HELLO, "max_tokens": 3})
    fingerprint = chat["system_fingerprint"]
    assert fingerprint.startswith("fp_") and len(fingerprint) > 5
    assert text["system_fingerprint"] == fingerprint
    assert chunks and all(c["system_fingerprint"] == fingerprint for c in chunks)


def test_message_has_annotations(http):
    message = post(http, "/v1/chat/completions", {"messages": HELLO, "max_tokens": 3})["choices"][0]["message"]
    assert message["annotations"] == [] and message["refusal"] is None and "tool_calls" not in message


def test_any_model_name_is_answered_by_the_served_model(http):
    ours = post(http, "/v1/chat/completions", {"messages": HELLO, "max_tokens": 4})
    other = post(http, "/v1/chat/completions", {"messages": HELLO, "max_tokens": 4, "model": "gpt-4o"})
    assert other["model"] == ours["model"] == MODEL
    assert other["choices"][0]["message"]["content"] == ours["choices"][0]["message"]["content"]
    assert post(http, "/v1/completions", {"prompt": "Hi", "max_tokens": 2, "model": "x"})["model"] == MODEL
    card = http.get("/v1/models/some-other-name").json()
    assert card["id"] == MODEL


def test_strict_model_name_setting():
    with ServerProcess("--target", MODEL, "--draft", "none", "--set", "server.strict_model_name=true") as s:
        r = httpx.post(f"{s.base_url}/chat/completions", json={"messages": HELLO, "max_tokens": 2, "model": "gpt-4o"},
                       timeout=120)
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        assert httpx.get(f"{s.base_url}/models/gpt-4o").status_code == 404
        ok = httpx.post(f"{s.base_url}/chat/completions", json={"messages": HELLO, "max_tokens": 2, "model": MODEL},
                        timeout=120)
        assert ok.status_code == 200


def test_routes_without_v1(http):
    body = {"messages": HELLO, "max_tokens": 5}
    assert (post(http, "/chat/completions", body)["choices"][0]["message"]["content"]
            == post(http, "/v1/chat/completions", body)["choices"][0]["message"]["content"])
    assert (post(http, "/completions", {"prompt": "Once", "max_tokens": 4})["choices"][0]["text"]
            == post(http, "/v1/completions", {"prompt": "Once", "max_tokens": 4})["choices"][0]["text"])
    assert http.get("/models").json() == http.get("/v1/models").json()
    events = stream_events(http, "/chat/completions", body)
    assert events[-1]["choices"][0]["finish_reason"] is not None


@pytest.mark.parametrize("method, path, allowed", [
    ("GET", "/v1/chat/completions", "POST"),
    ("PUT", "/completions", "POST"),
    ("POST", "/v1/models", "GET"),
])
def test_405_names_the_allowed_methods(http, method, path, allowed):
    r = http.request(method, path)
    assert r.status_code == 405
    assert r.headers["allow"] == allowed
    assert r.json()["error"]["code"] == "method_not_allowed"


def test_top_p_zero_keeps_the_most_probable_token(http):
    """Sampling with top_p 0 leaves one token per position: the greedy answer, whatever the seed."""
    greedy = post(http, "/v1/completions", {"prompt": "The first three planets are", "max_tokens": 12})
    for seed in (1, 2):
        sampled = post(http, "/v1/completions", {"prompt": "The first three planets are", "max_tokens": 12,
                                                 "temperature": 1.5, "top_p": 0, "seed": seed})
        assert sampled["choices"][0]["text"] == greedy["choices"][0]["text"]


def test_top_p_zero_is_the_argmax_in_the_sampler():
    import numpy as np

    from quickdraft.coupling import coupled_token
    from quickdraft.sampling import SamplingParams, distribution

    logits = np.random.default_rng(0).normal(size=5000).astype(np.float32)
    d = distribution(logits, SamplingParams(temperature=1.0, top_p=0.0))
    assert list(d.ids) == [int(np.argmax(logits))] and list(d.probs) == [1.0]
    for seed in range(20):
        params = SamplingParams(temperature=1.0, top_p=0.0, seed=seed)
        assert coupled_token(logits, params, position=seed) == int(np.argmax(logits))


# ---- tools ------------------------------------------------------------------------------------------------------
def the_call(body: dict) -> tuple[dict, dict]:
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls", choice
    calls = choice["message"]["tool_calls"]
    assert len(calls) == 1
    call = calls[0]
    assert call["type"] == "function" and call["id"].startswith("call_")
    return choice["message"], call["function"]


def test_named_tool_choice_gives_a_valid_call(http):
    body = post(http, "/v1/chat/completions", {
        "messages": ASK, "tools": [WEATHER, TIME], "max_tokens": 60,
        "tool_choice": {"type": "function", "function": {"name": "get_time"}}})
    message, function = the_call(body)
    assert message["content"] is None
    assert function["name"] == "get_time"
    jsonschema.validate(json.loads(function["arguments"]), TIME["function"]["parameters"])


def test_required_tool_choice_gives_a_call_of_an_offered_tool(http):
    body = post(http, "/v1/chat/completions", {"messages": ASK, "tools": [WEATHER, TIME], "max_tokens": 60,
                                               "tool_choice": "required"})
    _, function = the_call(body)
    tool = {"get_weather": WEATHER, "get_time": TIME}[function["name"]]
    jsonschema.validate(json.loads(function["arguments"]), tool["function"]["parameters"])


def test_streamed_call_deltas_add_up_to_the_whole_answer(http):
    body = {"messages": ASK, "tools": [WEATHER], "max_tokens": 60, "tool_choice": "required"}
    _, whole = the_call(post(http, "/v1/chat/completions", body))
    events = stream_events(http, "/v1/chat/completions", body)
    deltas = [e["choices"][0]["delta"] for e in events if e["choices"]]
    calls = [d["tool_calls"] for d in deltas if d.get("tool_calls")]
    head = calls[0][0]
    assert head["index"] == 0 and head["id"].startswith("call_") and head["type"] == "function"
    assert head["function"]["name"] == whole["name"]
    arguments = "".join(c[0]["function"].get("arguments", "") for c in calls)
    assert json.loads(arguments) == json.loads(whole["arguments"])
    assert not any(d.get("content") for d in deltas)  # the call is not also sent as text
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_auto_is_either_an_answer_or_a_parseable_call(http):
    body = post(http, "/v1/chat/completions", {"messages": ASK, "tools": [WEATHER], "max_tokens": 24})
    choice = body["choices"][0]
    if choice["finish_reason"] == "tool_calls":
        assert choice["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
    else:
        assert isinstance(choice["message"]["content"], str) and "tool_calls" not in choice["message"]


def test_tool_choice_none_offers_no_tools(http):
    """none renders no tools: the prompt, and so the greedy answer, is the one without tools."""
    plain = post(http, "/v1/chat/completions", {"messages": ASK, "max_tokens": 8})
    none = post(http, "/v1/chat/completions", {"messages": ASK, "max_tokens": 8, "tools": [WEATHER],
                                               "tool_choice": "none"})
    assert none["usage"]["prompt_tokens"] == plain["usage"]["prompt_tokens"]
    assert none["choices"][0]["message"] == plain["choices"][0]["message"]
    auto = post(http, "/v1/chat/completions", {"messages": ASK, "max_tokens": 1, "tools": [WEATHER]})
    assert auto["usage"]["prompt_tokens"] > plain["usage"]["prompt_tokens"]  # the tools are in the prompt


def test_tool_results_in_the_history(http):
    history = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "C"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 21, "sky": "clear"}'},
    ]
    body = post(http, "/v1/chat/completions", {"messages": history, "tools": [WEATHER], "max_tokens": 8,
                                               "tool_choice": "none"})
    assert body["choices"][0]["finish_reason"] in ("stop", "length")
    longer = post(http, "/v1/chat/completions", {"messages": ASK, "max_tokens": 1})
    assert body["usage"]["prompt_tokens"] > longer["usage"]["prompt_tokens"] + 20


@pytest.mark.parametrize("extra, param", [
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tools": [WEATHER, WEATHER]}, "tools"),
    ({"tools": [{"type": "retrieval"}]}, "tools[0].type"),
    ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools[0].function.name"),
    ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
])
def test_bad_tool_requests_are_400(http, extra, param):
    r = http.post("/v1/chat/completions", json={"messages": ASK, "max_tokens": 2, **extra})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_required_with_parallel_tool_calls_reads_every_call(http):
    """With parallel_tool_calls true the grammar allows several calls: whatever the model writes comes back
    as calls, each of an offered tool with valid arguments (how many is the model's choice)."""
    body = post(http, "/v1/chat/completions", {"messages": ASK, "tools": [WEATHER, TIME], "max_tokens": 160,
                                               "tool_choice": "required", "parallel_tool_calls": True})
    choice = body["choices"][0]
    calls = choice["message"].get("tool_calls") or []
    if choice["finish_reason"] == "tool_calls":
        assert calls and choice["message"]["content"] is None
    else:  # cut off by max_tokens in a later call: the complete ones still parse
        assert choice["finish_reason"] == "length"
    for call in calls:
        tool = {"get_weather": WEATHER, "get_time": TIME}[call["function"]["name"]]
        jsonschema.validate(json.loads(call["function"]["arguments"]), tool["function"]["parameters"])
