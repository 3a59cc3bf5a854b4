"""llama-server's own endpoints (/completion, /infill, /tokenize, /detokenize, /apply-template, /props) on
quickdraft's server: the model-agnostic parts of llama.cpp's own server tests (tools/server/tests/unit:
test_completion.py, test_tokenize.py, test_infill.py, test_template.py) against a real `quickdraft serve` of
smollm2-135m, and equality with the /v1 routes and the engine, which run the same generations.

Answers are greedy or seeded, so they are compared exactly; what the tiny model writes is never asserted.
"""

from __future__ import annotations

import json

import httpx
import pytest

from quickdraft.generate import GenerationResponse
from quickdraft.server.errors import APIError
from quickdraft.server.llama_routes import (ExtraChunk, FimTokens, fim_tokens, infill_tokens, pick_fields,
                                            prefill_only, split_llama_prompts)
from quickdraft.stats import GenerationStats

PROMPT = "I believe the meaning of life is"
HELLO = [{"role": "user", "content": "What is the capital of France?"}]
CODE = {"input_prefix": "def add(a, b):\n    ", "input_suffix": "\n\nprint(add(1, 2))\n", "prompt": "return"}


@pytest.fixture(scope="module")
def http(smol_server):
    with httpx.Client(base_url=smol_server.root, timeout=300) as c:
        yield c


def post(http, path, body) -> dict | list:
    r = http.post(path, json=body)
    assert r.status_code == 200, r.text
    return r.json()


def stream(http, path, body) -> list[dict]:
    """The `data:` events of a streamed answer; llama-server's own routes end without [DONE]."""
    events = []
    with http.stream("POST", path, json={**body, "stream": True}) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line:
                assert line.startswith("data: ") and line != "data: [DONE]", line
                events.append(json.loads(line[len("data: "):]))
    return events


# ---- pure functions ---------------------------------------------------------------------------------------
def fake_tokenize(text: str) -> list[int]:
    """One id per character, far from the fake FIM ids below."""
    return [1000 + ord(c) for c in text]


def test_infill_prompt_repo_level_pattern():
    fim = FimTokens(pre=1, suf=2, mid=3, rep=4, sep=5)
    tokens = infill_tokens(fake_tokenize, fim, prefix="ab", suffix="cd", prompt=[7, 8],
                           extra=[ExtraChunk(filename="x.py", text="X")], bos=9, n_ctx=4096, n_batch=2048,
                           n_predict=16)
    t = fake_tokenize
    assert tokens == [4, *t("myproject\n"), 5, *t("x.py\n"), *t("X"), 5, *t("filename\n"),
                      9, 1, *t("ab"), 7, 8, 2, *t("cd"), 3]


def test_infill_prompt_without_repo_tokens_or_bos():
    fim = FimTokens(pre=1, suf=2, mid=3)
    tokens = infill_tokens(fake_tokenize, fim, prefix="ab", suffix="", prompt=[],
                           extra=[ExtraChunk(text="X"), ExtraChunk(text="Y")], bos=None, n_ctx=4096,
                           n_batch=2048, n_predict=16)
    snippet = fake_tokenize("\n\n--- snippet ---\n\n")
    assert tokens == [*snippet, *fake_tokenize("X"), *snippet, *fake_tokenize("Y"), 1, *fake_tokenize("ab"), 2, 3]


def test_infill_prompt_keeps_what_a_batch_holds():
    """The prefix's last 3/4 of a batch, the suffix's first 1/4 less the prompt and 2, the extra context's end."""
    fim = FimTokens(pre=1, suf=2, mid=3)
    prefix, suffix, extra = "p" * 50 + "P" * 6, "S" * 3 + "s" * 50, "e" * 50 + "E" * 4
    tokens = infill_tokens(fake_tokenize, fim, prefix=prefix, suffix=suffix, prompt=[7],
                           extra=[ExtraChunk(text=extra)], bos=None, n_ctx=33, n_batch=8, n_predict=1)
    # prefix: 3 * 8 // 4 = 6 tokens; suffix: 8 // 4 - (2 + 1 prompt token) < 0: none;
    # extra: n_ctx - n_batch - 2 * n_predict = 23 tokens, the end of the snippet (its separator line cut)
    t = fake_tokenize
    assert tokens == [*t("e" * 19 + "EEEE"), 1, *t("PPPPPP"), 7, 2, 3]
    wide = infill_tokens(fake_tokenize, fim, prefix=prefix, suffix=suffix, prompt=[], extra=[], bos=None,
                         n_ctx=100, n_batch=24, n_predict=1)
    assert wide == [1, *t(prefix[-18:]), 2, *t("SSS" + "s" * 1), 3]


def test_a_model_without_fim_tokens_gets_llama_servers_refusal():
    with pytest.raises(APIError) as e:
        fim_tokens({"pre": 1, "rep": 4})
    assert e.value.status == 501 and e.value.type == "not_supported_error"
    assert e.value.message == ("Infill is not supported by this model: suffix token is missing. "
                               "middle token is missing. ")
    assert fim_tokens({"pre": 1, "suf": 2, "mid": 3, "sep": 5}) == FimTokens(1, 2, 3, None, 5)


def test_prompt_forms():
    assert split_llama_prompts("a") == ["a"]
    assert split_llama_prompts([1, 2]) == [[1, 2]]
    assert split_llama_prompts([1, "a", 2]) == [[1, "a", 2]]  # mixed: one prompt
    assert split_llama_prompts(["a", "b"]) == ["a", "b"]  # strings only: one each
    assert split_llama_prompts([[1, 2], "a", [3, "b"]]) == [[1, 2], "a", [3, "b"]]


def test_response_fields():
    body = {"content": "x", "generation_settings": {"n_predict": 8}, "stop": True}
    assert pick_fields(body, ["content", "generation_settings/n_predict", "missing", "content/deeper"]) == \
        {"content": "x", "generation_settings/n_predict": 8}


def test_prefill_only_runs_the_stream_and_reports_no_token():
    closed = []

    def engine_stream():
        try:
            yield GenerationResponse("Hi", [42], None, "length", GenerationStats(prompt_tokens=5, completion_tokens=1))
        finally:
            closed.append(True)

    (step,) = list(prefill_only(engine_stream()))
    assert closed == [True]
    assert (step.text, step.tokens, step.finish_reason) == ("", [], "length")
    assert (step.stats.prompt_tokens, step.stats.completion_tokens) == (5, 0)


# ---- /completion ------------------------------------------------------------------------------------------
def test_completion_shape(http):
    """test_completion.py's test_completion, without TinyLlama's words."""
    tokens = post(http, "/tokenize", {"content": PROMPT, "add_special": True})["tokens"]
    body = post(http, "/completion", {"prompt": PROMPT, "n_predict": 8, "temperature": 0})
    assert isinstance(body["content"], str) and body["content"]
    assert body["stop"] is True and body["stop_type"] in ("limit", "eos") and body["stopping_word"] == ""
    assert body["timings"]["prompt_n"] == body["tokens_evaluated"] == len(tokens)
    assert body["timings"]["predicted_n"] == body["tokens_predicted"] <= 8
    assert body["truncated"] is False and isinstance(body["has_new_line"], bool)
    assert body["tokens"] == []  # only with return_tokens
    assert body["generation_settings"]["n_predict"] == 8 and body["generation_settings"]["temperature"] == 0
    assert body["model"] == "smollm2-135m"
    assert "completion_probabilities" not in body
    with_tokens = post(http, "/completion", {"prompt": PROMPT, "n_predict": 8, "temperature": 0,
                                             "return_tokens": True})
    assert with_tokens["content"] == body["content"]
    assert len(with_tokens["tokens"]) == body["tokens_predicted"] - (body["stop_type"] == "eos")
    assert post(http, "/detokenize", {"tokens": with_tokens["tokens"]})["content"] == body["content"]


def test_greedy_completion_equals_v1_completions(http):
    """The same engine stream behind both routes: token for token the same answer."""
    for n in (4, 16):
        llama = post(http, "/completion", {"prompt": PROMPT, "n_predict": n, "temperature": 0})
        v1 = post(http, "/v1/completions", {"prompt": PROMPT, "max_tokens": n, "temperature": 0})
        assert llama["content"] == v1["choices"][0]["text"]
        assert llama["tokens_predicted"] == v1["usage"]["completion_tokens"]
        assert llama["tokens_evaluated"] == v1["usage"]["prompt_tokens"]


def test_seeded_sampling_is_reproducible_and_is_v1s_draw(http):
    body = {"prompt": PROMPT, "n_predict": 4, "temperature": 1.0, "seed": 42}
    first, again = post(http, "/completion", body), post(http, "/completion", body)
    assert first["content"] == again["content"]
    assert first["generation_settings"]["seed"] == 42
    v1 = post(http, "/v1/completions", {"prompt": PROMPT, "max_tokens": 4, "temperature": 1.0, "seed": 42})
    assert first["content"] == v1["choices"][0]["text"]
    # no seed (or -1): one is picked and reported, and it redraws the same answer
    drawn = post(http, "/completion", {**body, "seed": -1})
    seed = drawn["generation_settings"]["seed"]
    assert seed != 0xFFFFFFFF
    assert post(http, "/completion", {**body, "seed": seed})["content"] == drawn["content"]


def test_stream_equals_whole(http):
    """test_completion_stream and test_completion_stream_vs_non_stream."""
    body = {"prompt": PROMPT, "n_predict": 8, "temperature": 0}
    events = stream(http, "/completion", body)
    whole = post(http, "/completion", body)
    *partial, last = events
    assert partial and all(e["stop"] is False and e["tokens"] and all(isinstance(t, int) for t in e["tokens"])
                           for e in partial)
    assert last["stop"] is True and last["content"] == "" and last["tokens"] == []
    assert "".join(e["content"] for e in partial) == whole["content"]
    assert sum(len(e["tokens"]) for e in partial) == whole["tokens_predicted"] - (whole["stop_type"] == "eos")
    for field in ("stop_type", "tokens_predicted", "tokens_evaluated", "truncated", "has_new_line"):
        assert last[field] == whole[field], field
    assert last["generation_settings"]["n_predict"] == 8
    assert last["timings"]["predicted_n"] == whole["timings"]["predicted_n"]


def test_n_probs(http):
    """test_n_probs and test_n_probs_stream: one entry per token, n_probs alternatives each; streamed, the
    entries of a chunk are its tokens' (a speculative round can bring several)."""
    body = {"prompt": PROMPT, "n_probs": 10, "temperature": 0, "n_predict": 5, "return_tokens": True}
    whole = post(http, "/completion", body)
    probs = whole["completion_probabilities"]
    assert [p["id"] for p in probs] == whole["tokens"] and len(probs) == whole["tokens_predicted"] == 5
    for tok in probs:
        assert isinstance(tok["token"], str) and isinstance(tok["bytes"], list) and tok["logprob"] <= 0.0
        assert len(tok["top_logprobs"]) == 10
        assert tok["top_logprobs"][0]["id"] == tok["id"]  # greedy: the most probable token
        for alt in tok["top_logprobs"]:
            assert set(alt) == {"id", "token", "bytes", "logprob"} and alt["logprob"] <= 0.0
    chunks = [e for e in stream(http, "/completion", body) if not e["stop"]]
    assert all(len(e["completion_probabilities"]) == len(e["tokens"]) for e in chunks)
    assert [p for e in chunks for p in e["completion_probabilities"]] == probs


def test_stop_word(http):
    base = {"prompt": PROMPT, "n_predict": 12, "temperature": 0}
    content = post(http, "/completion", base)["content"]
    word = content[len(content) // 2:][:3]
    stopped = post(http, "/completion", {**base, "stop": [word, "a long stop string never written"]})
    assert stopped["stop_type"] == "word" and stopped["stopping_word"] == word
    assert stopped["content"] == content[:content.index(word)]


def test_token_and_mixed_prompts(http):
    """test_completion_with_tokens_input: ids, several prompts (a list back), ids and text mixed."""
    tokens = post(http, "/tokenize", {"content": PROMPT, "add_special": True})["tokens"]
    body = {"n_predict": 4, "temperature": 0}
    text = post(http, "/completion", {**body, "prompt": PROMPT})["content"]
    assert post(http, "/completion", {**body, "prompt": tokens})["content"] == text
    both = post(http, "/completion", {**body, "prompt": [tokens, PROMPT]})
    assert isinstance(both, list) and [b["index"] for b in both] == [0, 1]
    assert both[0]["content"] == both[1]["content"] == text
    half = len(PROMPT) // 2
    mixed = post(http, "/completion", {**body, "prompt": [*tokens[:1], PROMPT]})
    assert isinstance(mixed["content"], str) and mixed["tokens_evaluated"] >= len(tokens)
    events = stream(http, "/completion", {**body, "prompt": [PROMPT[:half], PROMPT]})
    assert {e["index"] for e in events} == {0, 1} and sum(e["stop"] for e in events) == 2


def test_n_predict_zero_generates_nothing(http):
    body = post(http, "/completion", {"prompt": PROMPT, "n_predict": 0})
    assert body["content"] == "" and body["tokens_predicted"] == 0 and body["timings"]["predicted_n"] == 0
    assert body["stop_type"] == "limit" and body["tokens_evaluated"] > 0


def test_response_fields_over_http(http):
    body = post(http, "/completion", {"prompt": PROMPT, "n_predict": 4, "temperature": 0,
                                      "response_fields": ["content", "generation_settings/n_predict", "nope"]})
    assert set(body) == {"content", "generation_settings/n_predict"} and body["generation_settings/n_predict"] == 4


# ---- /tokenize, /detokenize, /apply-template, /props ------------------------------------------------------
def test_tokenize_detokenize_round_trip(http):
    """test_tokenize.py: the round trip, pieces, special tokens."""
    content = "This is a test string with unicode 媽 and emoji 🤗"
    tokens = post(http, "/tokenize", {"content": content})["tokens"]
    assert len(tokens) > 5 and all(isinstance(t, int) for t in tokens)
    assert post(http, "/detokenize", {"tokens": tokens})["content"] == content
    pieces = post(http, "/tokenize", {"content": content, "with_pieces": True})["tokens"]
    assert [p["id"] for p in pieces] == tokens
    assert all(p["piece"] for p in pieces)
    joined = b"".join(p["piece"].encode() if isinstance(p["piece"], str) else bytes(p["piece"]) for p in pieces)
    assert joined.decode() == content
    special = post(http, "/tokenize", {"content": "<|im_start|>user", "with_pieces": True})["tokens"]
    as_text = post(http, "/tokenize", {"content": "<|im_start|>user", "parse_special": False})["tokens"]
    assert special[0]["piece"] == "<|im_start|>" and len(as_text) > len(special)
    assert post(http, "/detokenize", {"tokens": [p["id"] for p in special]})["content"] == "<|im_start|>user"


def test_apply_template_is_the_chat_prompt(http):
    """The template's text, run as a /completion, answers as /v1/chat/completions does."""
    prompt = post(http, "/apply-template", {"messages": HELLO})["prompt"]
    assert prompt.startswith("<|im_start|>") and prompt.endswith("<|im_start|>assistant\n")
    chat = post(http, "/v1/chat/completions", {"messages": HELLO, "max_tokens": 8, "temperature": 0})
    completion = post(http, "/completion", {"prompt": prompt, "n_predict": 8, "temperature": 0})
    assert completion["content"] == chat["choices"][0]["message"]["content"]


def test_props(http):
    props = http.get("/props").json()
    settings = props["default_generation_settings"]
    assert settings["n_ctx"] > 0 and props["total_slots"] == 1 and settings["params"]["n_predict"] > 0
    assert "im_start" in props["chat_template"] and props["modalities"] == {"vision": False, "audio": False}
    assert props["model_path"].endswith(".gguf") and isinstance(props["build_info"], str)
    assert http.post("/props", json={}).status_code == 405  # read-only, as llama-server without --props


# ---- /infill ----------------------------------------------------------------------------------------------
def test_infill_on_a_model_without_fim_tokens(http):
    """SmolLM2's vocabulary has no FIM tokens (neither has Gemma 3's): llama-server's 501 and message."""
    r = http.post("/infill", json={**CODE, "n_predict": 4})
    assert r.status_code == 501, r.text
    error = r.json()["error"]
    assert error["type"] == "not_supported_error"
    assert error["message"] == ("Infill is not supported by this model: prefix token is missing. "
                                "suffix token is missing. middle token is missing. ")
    assert http.get("/props").json()["infill"] is False


@pytest.fixture
def fim_api(smol_engine, monkeypatch):
    """The real smollm2 engine in-process, its vocabulary given FIM tokens: three of its own special tokens
    (<repo_name>, <file_sep>, <filename>) stand in for FIM_PRE, FIM_SUF and FIM_MID."""
    from fastapi.testclient import TestClient

    from quickdraft.config import Config, ModelsConfig
    from quickdraft.server.app import create_app

    monkeypatch.setitem(smol_engine.tokenizer.__dict__, "fim_tokens", {"pre": 3, "suf": 5, "mid": 6})
    config = Config(models=ModelsConfig(target="smollm2-135m", draft="ngram"))
    with TestClient(create_app(smol_engine, config)) as client:
        yield client


def test_infill_answers_the_engines_fim_prompt(fim_api, smol_engine):
    """The prompt is infill_tokens' (with the model's FIM ids), and the answer the engine's greedy answer to it."""
    tokenizer = smol_engine.tokenizer
    body = {**CODE, "input_extra": [{"filename": "util.py", "text": "def sub(a, b):\n    return a - b\n"}],
            "n_predict": 8, "temperature": 0, "return_tokens": True}
    r = fim_api.post("/infill", json=body)
    assert r.status_code == 200, r.text
    answer = r.json()
    expected = infill_tokens(lambda s: tokenizer.tokenize(s, add_special=False, parse_special=False),
                             FimTokens(pre=3, suf=5, mid=6), prefix=CODE["input_prefix"], suffix=CODE["input_suffix"],
                             prompt=tokenizer.tokenize(CODE["prompt"], add_special=False),
                             extra=[ExtraChunk(**body["input_extra"][0])], bos=None,
                             n_ctx=smol_engine.target.n_ctx, n_batch=2048, n_predict=8)
    assert expected[-1] == 6 and answer["tokens_evaluated"] == len(expected)
    assert answer["prompt"].startswith("\n\n--- snippet ---\n\ndef sub") and "<repo_name>def add" in answer["prompt"]
    reference = smol_engine.generate(expected, max_tokens=8, draft="none")
    assert answer["content"] == reference.text
    assert answer["tokens"] == [t for t in reference.tokens if not tokenizer.is_eog(t)]
    streamed = fim_api.post("/infill", json={**body, "stream": True})
    events = [json.loads(line[len("data: "):]) for line in streamed.text.splitlines() if line.startswith("data: ")]
    assert "".join(e["content"] for e in events) == reference.text and events[-1]["stop"] is True


@pytest.mark.parametrize("extra", [{}, {"filename": "ok"}, {"filename": 123}, {"filename": 123, "text": "abc"},
                                   {"filename": "a", "text": 456}])
def test_infill_bad_input_extra(http, extra):
    """test_infill.py's test_invalid_input_extra_req."""
    r = http.post("/infill", json={**CODE, "input_extra": [extra]})
    assert r.status_code == 400 and "input_extra" in r.json()["error"]["param"]


# ---- errors and access ------------------------------------------------------------------------------------
@pytest.mark.parametrize("path, body, param", [
    ("/completion", {"prompt": PROMPT, "repeat_penalty": 1.1}, "repeat_penalty"),
    ("/completion", {"prompt": PROMPT, "logit_bias": [[15043, -100]]}, "logit_bias"),
    ("/completion", {"prompt": PROMPT, "mirostat": 2}, "mirostat"),
    ("/completion", {"prompt": PROMPT, "lora": [{"id": 0, "scale": 0.5}]}, "lora"),
    ("/completion", {"prompt": PROMPT, "n_predict": -2}, "n_predict"),
    ("/completion", {"prompt": PROMPT, "n_probs": 21}, "n_probs"),
    ("/completion", {"prompt": ""}, "prompt"),
    ("/completion", {"prompt": [1, 10**9]}, "prompt"),
    ("/completion", {"prompt": PROMPT * 2000}, "prompt"),
    ("/completion", {"n_predict": 4}, "prompt"),
    ("/infill", {"input_prefix": "a"}, "input_suffix"),
    ("/infill", {**CODE, "prompt": [1, 2]}, "prompt"),
    ("/tokenize", {}, "content"),
    ("/detokenize", {"tokens": [-1]}, "tokens"),
    ("/detokenize", {"tokens": "abc"}, "tokens"),
    ("/apply-template", {"messages": []}, "messages"),
])
def test_bad_input_is_a_400_naming_the_field(http, path, body, param):
    r = http.post(path, json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"], error


def test_behind_the_api_key(smol_engine):
    from fastapi.testclient import TestClient

    from quickdraft.config import Config, ModelsConfig, ServerConfig
    from quickdraft.server.app import create_app

    config = Config(models=ModelsConfig(target="smollm2-135m", draft="ngram"), server=ServerConfig(api_key="k"))
    with TestClient(create_app(smol_engine, config)) as client:
        for method, path in [("GET", "/props"), ("POST", "/completion"), ("POST", "/infill"), ("POST", "/tokenize"),
                             ("POST", "/detokenize"), ("POST", "/apply-template")]:
            r = client.request(method, path, json={})
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", path
        ok = client.post("/tokenize", json={"content": "hi"}, headers={"Authorization": "Bearer k"})
        assert ok.status_code == 200 and ok.json()["tokens"]
