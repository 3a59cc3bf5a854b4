"""The OpenAI-compatible server, end to end: a real `quickdraft serve` process with the bundled demo models
(the embedded default config, as `make serve` runs it), driven by the official openai client and httpx.

Responses are checked against the openai package's own types. Answers are greedy unless a test says
otherwise, so they can be compared exactly: with each other, across concurrency, and with the target alone.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from quickdraft.server.process import ServerProcess

MODEL = "gemma-3-270m-q8_0"
HELLO = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def server():
    with ServerProcess() as s:  # no arguments: the demo config
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.root, timeout=300) as c:
        yield c


@pytest.fixture(scope="module")
def target_alone():
    """The demo target in this process, drafting nothing: the reference for exactness."""
    from quickdraft.engine import Engine

    return Engine.load(MODEL, "none")


def post(http, path, body):
    r = http.post(path, json=body)
    assert r.status_code == 200, r.text
    return r.json()


def stream_events(http, path, body) -> list[dict]:
    """POST with stream: true; the parsed `data:` events, checking the stream ends with [DONE]."""
    events, done = [], False
    with http.stream("POST", path, json={**body, "stream": True}) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if not line:
                continue
            assert line.startswith("data: "), line
            assert not done, "nothing may follow [DONE]"
            if line == "data: [DONE]":
                done = True
            else:
                events.append(json.loads(line[len("data: "):]))
    assert done
    return events


def completion_tokens(http, prompt, max_tokens, **extra) -> tuple[str, list[str]]:
    """Greedy completion text and its tokens (as the strings logprobs reports)."""
    body = post(http, "/v1/completions", {"prompt": prompt, "max_tokens": max_tokens, "logprobs": 0, **extra})
    choice = body["choices"][0]
    return choice["text"], choice["logprobs"]["tokens"]


def status(http) -> dict:
    return post_get(http, "/v1/quickdraft/status")


def post_get(http, path):
    r = http.get(path)
    assert r.status_code == 200, r.text
    return r.json()


# ---- endpoints and shapes ---------------------------------------------------------------------------------
def test_health_and_models(http, client):
    assert post_get(http, "/health")["status"] == "ok"
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL


def test_chat_completion(client, http, target_alone):
    answer = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=8)
    raw = ChatCompletion.model_validate(post(http, "/v1/chat/completions", {"messages": HELLO, "max_tokens": 8}))
    for r in (answer, raw):
        assert r.id.startswith("chatcmpl-") and r.object == "chat.completion" and r.model == MODEL
        assert len(r.choices) == 1 and r.choices[0].index == 0
        assert r.choices[0].message.role == "assistant"
        assert r.choices[0].finish_reason in ("stop", "length")
        assert r.choices[0].message.content
    assert answer.choices[0].message.content == raw.choices[0].message.content
    # real token counts: the prompt as the engine renders and tokenizes it, the completion as generated
    prompt = target_alone.chat_prompt(HELLO)
    assert answer.usage.prompt_tokens == len(prompt)
    reference = target_alone.generate(prompt, max_tokens=8)
    assert answer.usage.completion_tokens == len(reference.tokens)
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens
    assert answer.choices[0].message.content == reference.text


def test_model_is_optional(http):
    body = post(http, "/v1/chat/completions", {"messages": HELLO, "max_tokens": 4})
    assert body["model"] == MODEL


def test_text_completion(client, http):
    r = client.completions.create(model=MODEL, prompt="1, 2, 3, 4, 5,", max_tokens=6)
    Completion.model_validate(r.model_dump())
    assert r.id.startswith("cmpl-") and r.object == "text_completion"
    assert r.choices[0].text.startswith(" 6, 7")
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 6

    # several prompts: one choice each, in order, each what it would be alone; token-id prompts too
    prompts = ["1, 2, 3, 4, 5,", "The quick brown fox"]
    both = Completion.model_validate(post(http, "/v1/completions", {"prompt": prompts, "max_tokens": 6}))
    alone = [post(http, "/v1/completions", {"prompt": p, "max_tokens": 6})["choices"][0]["text"] for p in prompts]
    assert [c.index for c in both.choices] == [0, 1]
    assert [c.text for c in both.choices] == alone
    assert both.usage.completion_tokens == 12

    echo = post(http, "/v1/completions", {"prompt": prompts[0], "max_tokens": 6, "echo": True})
    assert echo["choices"][0]["text"] == prompts[0] + alone[0]


def test_token_id_prompts(http, target_alone):
    ids = target_alone.tokenize("1, 2, 3, 4, 5,")
    by_ids = post(http, "/v1/completions", {"prompt": ids, "max_tokens": 6})
    by_text = post(http, "/v1/completions", {"prompt": "1, 2, 3, 4, 5,", "max_tokens": 6})
    assert by_ids["choices"][0]["text"] == by_text["choices"][0]["text"]
    batch = post(http, "/v1/completions", {"prompt": [ids, ids], "max_tokens": 6})
    assert len(batch["choices"]) == 2


def test_streaming_chat(http, client):
    whole = post(http, "/v1/chat/completions", {"messages": HELLO, "max_tokens": 10})
    events = stream_events(http, "/v1/chat/completions",
                           {"messages": HELLO, "max_tokens": 10, "stream_options": {"include_usage": True}})
    chunks = [ChatCompletionChunk.model_validate(e) for e in events]
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    *content, last_choice, usage = chunks
    assert last_choice.choices[0].finish_reason == whole["choices"][0]["finish_reason"]
    assert all(c.choices[0].finish_reason is None for c in content)
    assert "".join(c.choices[0].delta.content or "" for c in content) == whole["choices"][0]["message"]["content"]
    # usage: null on every chunk but the last, which has no choices and the whole request's counts
    assert all(e["usage"] is None for e in events[:-1])
    assert usage.choices == [] and usage.usage.model_dump(exclude_none=True) == whole["usage"]

    # the openai client's own stream reader agrees
    stream = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=10, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == \
        whole["choices"][0]["message"]["content"]


def test_streaming_chat_without_usage(http):
    events = stream_events(http, "/v1/chat/completions", {"messages": HELLO, "max_tokens": 4})
    assert all("usage" not in e for e in events)
    assert events[-1]["choices"][0]["finish_reason"] is not None


def test_streaming_completion(http, client):
    prompt = "The quick brown fox"
    whole = post(http, "/v1/completions", {"prompt": prompt, "max_tokens": 10})
    events = stream_events(http, "/v1/completions",
                           {"prompt": prompt, "max_tokens": 10, "stream_options": {"include_usage": True}})
    *text_events, usage = events
    for e in text_events:
        assert e["object"] == "text_completion" and e["id"].startswith("cmpl-")
        # the SDK's Completion type wants a finish_reason; OpenAI streams null until the last chunk
        assert (e["choices"][0]["finish_reason"] is None) == (e is not text_events[-1])
        Completion.model_validate({**e, "choices": [{**e["choices"][0], "finish_reason": "length"}]})
    Completion.model_validate(text_events[-1])
    assert "".join(e["choices"][0]["text"] for e in text_events) == whole["choices"][0]["text"]
    assert usage["choices"] == [] and usage["usage"] == whole["usage"]

    stream = client.completions.create(model=MODEL, prompt=prompt, max_tokens=10, stream=True)
    assert "".join(c.choices[0].text for c in stream) == whole["choices"][0]["text"]


# ---- request fields ---------------------------------------------------------------------------------------
def test_stop_sequences(http, client):
    prompt = "1, 2, 3, 4, 5,"
    full = post(http, "/v1/completions", {"prompt": prompt, "max_tokens": 10})["choices"][0]["text"]
    assert " 8," in full
    expected = full[: full.index(" 8,")]
    r = client.completions.create(model=MODEL, prompt=prompt, max_tokens=10, stop=" 8,")
    assert r.choices[0].text == expected and r.choices[0].finish_reason == "stop"
    streamed = stream_events(http, "/v1/completions",
                             {"prompt": prompt, "max_tokens": 10, "stop": ["never appears", " 8,"]})
    assert "".join(e["choices"][0]["text"] for e in streamed) == expected
    assert streamed[-1]["choices"][0]["finish_reason"] == "stop"

    content = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=8).choices[0].message.content
    words = content.split()
    assert len(words) >= 3
    stopped = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=8, stop=[words[2]])
    assert stopped.choices[0].message.content == content[: content.index(words[2])]
    assert stopped.choices[0].finish_reason == "stop"


def test_max_tokens(client):
    for n in (1, 5):
        r = client.completions.create(model=MODEL, prompt="1, 2, 3, 4, 5,", max_tokens=n)
        assert r.usage.completion_tokens == n and r.choices[0].finish_reason == "length"
    r = client.chat.completions.create(model=MODEL, messages=HELLO, max_completion_tokens=3)
    assert r.usage.completion_tokens == 3 and r.choices[0].finish_reason == "length"
    # max_completion_tokens wins over the deprecated max_tokens
    r = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=9, max_completion_tokens=2)
    assert r.usage.completion_tokens == 2


def test_chat_logprobs(client, target_alone):
    r = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=6, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert "".join(t.token for t in content) == r.choices[0].message.content
    reference = target_alone.generate(target_alone.chat_prompt(HELLO), max_tokens=6, top_logprobs=3)
    assert len(content) == len(reference.logprobs)
    for got, want in zip(content, reference.logprobs):
        assert bytes(got.bytes) == target_alone.tokenizer.token_bytes(want.token)
        assert got.logprob == pytest.approx(want.logprob, abs=1e-4)
        assert len(got.top_logprobs) == 3
        assert [t.logprob for t in got.top_logprobs] == sorted((t.logprob for t in got.top_logprobs), reverse=True)
        assert got.top_logprobs[0].token == got.token  # greedy: the emitted token is the most probable
    plain = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2)
    assert plain.choices[0].logprobs is None
    only = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2, logprobs=True)
    assert all(t.top_logprobs == [] for t in only.choices[0].logprobs.content)


def test_completion_logprobs(http):
    body = post(http, "/v1/completions", {"prompt": "1, 2, 3, 4, 5,", "max_tokens": 6, "logprobs": 2})
    Completion.model_validate(body)
    choice = body["choices"][0]
    lp = choice["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(lp["text_offset"]) == 6
    assert "".join(lp["tokens"]) == choice["text"]
    offsets = [sum(len(t) for t in lp["tokens"][:i]) for i in range(6)]
    assert lp["text_offset"] == offsets
    for token, logprob, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"]):
        assert logprob <= 0 and len(top) == 2 and max(top.values()) == pytest.approx(logprob)
        assert token in top


def test_seed_reproduces(client):
    kwargs = dict(model=MODEL, prompt="Once upon a time", max_tokens=10, temperature=1.0, top_p=0.95)
    first = client.completions.create(seed=1234, **kwargs).choices[0].text
    assert client.completions.create(seed=1234, **kwargs).choices[0].text == first
    others = {client.completions.create(seed=s, **kwargs).choices[0].text for s in (1, -2)}  # any int64
    assert len(others | {first}) > 1, "different seeds should sample differently"
    chat = dict(model=MODEL, messages=HELLO, max_tokens=6, temperature=0.8, seed=99)
    assert client.chat.completions.create(**chat).choices[0].message.content == \
        client.chat.completions.create(**chat).choices[0].message.content


def test_greedy_equals_target_alone(http, target_alone):
    """Speculation changes the speed, never the answer: with every drafter the server has (and with the
    default, auto), token for token what the target alone produces."""
    prompt = "a b c a b c a b c a b c"  # repetitive: drafts get proposed and accepted
    alone = completion_tokens(http, prompt, 16, quickdraft={"draft": "none"})
    local = target_alone.generate(prompt, max_tokens=16)
    assert alone == (local.text, [target_alone.tokenizer.token_bytes(t).decode() for t in local.tokens])
    drafters = [d for d in status(http)["engine"]["drafters"] if d != "none"]
    assert "ngram" in drafters
    for draft in [None, *drafters]:
        before = status(http)["totals"]
        options = {} if draft is None else {"quickdraft": {"draft": draft}}
        assert completion_tokens(http, prompt, 16, **options) == alone, draft
        if draft is not None:  # a fixed drafter: it must have drafted, and been right at least once
            after = status(http)["totals"]
            assert after["accepted"] > before["accepted"], f"{draft} never got a draft accepted"


# ---- concurrency ------------------------------------------------------------------------------------------
PROMPTS = [
    "1, 2, 3, 4, 5,",
    "The quick brown fox",
    "Paris is the capital of",
    "def fibonacci(n):",
    "a b c a b c a b c",
    "Monday, Tuesday,",
    "The sky is",
    "Water boils at",
]


def stream_text(client, prompt, max_tokens) -> str:
    parts = []
    for chunk in client.completions.create(model=MODEL, prompt=prompt, max_tokens=max_tokens, stream=True):
        parts.append(chunk.choices[0].text)
    return "".join(parts)


def test_eight_concurrent_streams(http, client):
    expected = [post(http, "/v1/completions", {"prompt": p, "max_tokens": 8})["choices"][0]["text"] for p in PROMPTS]
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        got = list(pool.map(lambda p: stream_text(client, p, 8), PROMPTS))
    assert got == expected


def test_disconnect_frees_the_engine(server, http, client):
    before = status(http)["totals"]
    expected = [post(http, "/v1/completions", {"prompt": p, "max_tokens": 6})["choices"][0]["text"]
                for p in PROMPTS[:2]]
    with httpx.Client(base_url=server.root, timeout=300) as leaver:
        with leaver.stream("POST", "/v1/completions",
                           json={"prompt": "1, 2, 3,", "max_tokens": 3000, "stream": True}) as r:
            lines = r.iter_lines()
            got = [next(lines) for _ in range(3)]  # it is running: tokens are arriving
            assert all(line.startswith("data: ") or line == "" for line in got)
            with ThreadPoolExecutor(2) as pool:  # two more clients queue up behind it
                others = [pool.submit(stream_text, client, p, 6) for p in PROMPTS[:2]]
                # leave mid-stream (closing the connection without reading the rest)
                r.close()
                assert [f.result() for f in others] == expected
    after = status(http)["totals"]
    assert after["cancelled"] == before["cancelled"] + 1
    # the abandoned request stopped early: far fewer tokens than its 3000 were generated in all
    assert after["completion_tokens"] - before["completion_tokens"] < 500
    assert status(http)["queue"] == {"running": 0, "waiting": 0, "queue_size": 16}


def test_disconnect_while_waiting_for_a_whole_answer(server, http):
    """A non-streaming client that gives up is noticed too: its generation stops."""
    before = status(http)["totals"]
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.base_url}/completions", json={"prompt": "1, 2, 3,", "max_tokens": 3000},
                   timeout=httpx.Timeout(10, read=2))
    deadline = time.monotonic() + 60
    while status(http)["queue"]["running"] and time.monotonic() < deadline:
        time.sleep(0.1)
    after = status(http)["totals"]
    assert after["cancelled"] == before["cancelled"] + 1
    assert after["completion_tokens"] - before["completion_tokens"] < 500


# ---- bad input --------------------------------------------------------------------------------------------
CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
BAD_REQUESTS = [
    # (path, body, status, error code, error param)
    (CHAT, b"{not json", 400, "invalid_json", None),
    (CHAT, b"[1, 2]", 400, None, None),
    (CHAT, {"messages": "hello"}, 400, "invalid_type", "messages"),
    (CHAT, {"messages": HELLO, "max_tokens": "8"}, 400, "invalid_type", "max_tokens"),
    (CHAT, {"messages": HELLO, "temperature": "hot"}, 400, "invalid_type", "temperature"),
    (CHAT, {"messages": HELLO, "stream": "yes"}, 400, "invalid_type", "stream"),
    (CHAT, {"messages": [{"role": "user", "content": 5}]}, 400, "invalid_type", "messages[0].content"),
    (CHAT, {"messages": []}, 400, "invalid_value", "messages"),
    (CHAT, {}, 400, "missing_required_parameter", "messages"),
    (CHAT, {"messages": [{"role": "wizard", "content": "hi"}]}, 400, None, "messages"),
    (CHAT, {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     400, None, "messages"),
    (CHAT, {"messages": HELLO, "max_tokens": 0}, 400, "invalid_value", "max_tokens"),
    (CHAT, {"messages": HELLO, "temperature": 5}, 400, "invalid_value", "temperature"),
    (CHAT, {"messages": HELLO, "n": 0}, 400, "invalid_value", "n"),
    (CHAT, {"messages": HELLO, "n": 17}, 400, None, "n"),  # over server.limits.max_choices
    (CHAT, {"messages": HELLO, "top_logprobs": 2}, 400, None, "top_logprobs"),
    (CHAT, {"messages": HELLO, "top_logprobs": 50, "logprobs": True}, 400, "invalid_value", "top_logprobs"),
    (CHAT, {"messages": HELLO, "presence_penalty": 0.5}, 400, None, "presence_penalty"),
    (CHAT, {"messages": HELLO, "quickdraft": {"draft": "telepathy"}}, 400, None, None),
    (CHAT, {"messages": [{"role": "user", "content": "hello " * 5000}]}, 400, "context_length_exceeded",
     "messages"),
    (COMPLETIONS, {"prompt": ""}, 400, None, "prompt"),
    (COMPLETIONS, {"prompt": []}, 400, None, "prompt"),
    (COMPLETIONS, {"prompt": 5}, 400, "invalid_type", "prompt"),
    (COMPLETIONS, {"prompt": [1, 2, 10**9]}, 400, None, "prompt"),
    (COMPLETIONS, {"prompt": "hi", "logprobs": True}, 400, "invalid_type", "logprobs"),
    (COMPLETIONS, {"prompt": "hello " * 5000}, 400, "context_length_exceeded", "prompt"),
    (COMPLETIONS, b"x" * (2 * 1024 * 1024 + 1), 413, "request_too_large", None),
    ("/v1/embeddings", {"input": "hi"}, 404, "not_found", None),
]


@pytest.mark.parametrize("path, body, status_code, code, param", BAD_REQUESTS,
                         ids=[f"{i}-{b[3] or b[2]}" for i, b in enumerate(BAD_REQUESTS)])
def test_bad_input_gets_an_openai_error(http, path, body, status_code, code, param):
    if isinstance(body, bytes):
        r = http.post(path, content=body, headers={"content-type": "application/json"})
    else:
        r = http.post(path, json=body)
    assert r.status_code == status_code, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and error["type"] == "invalid_request_error"
    assert error["code"] == code
    assert error["param"] == param
    # and the server goes on answering
    ok = post(http, COMPLETIONS, {"prompt": "1, 2, 3,", "max_tokens": 2})
    assert ok["usage"]["completion_tokens"] == 2


def test_bad_input_through_the_openai_client(client):
    # another model name is answered by the served model unless server.strict_model_name (tests/test_compat.py)
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="hello " * 5000, max_tokens=2)
    assert e.value.code == "context_length_exceeded" and "context" in e.value.message
    with pytest.raises(openai.BadRequestError, match="max_choices"):
        client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2, n=100)


def test_unknown_fields_are_ignored(http):
    body = {"messages": HELLO, "max_tokens": 2, "user": "me", "metadata": {"a": "b"}, "tools": [],
            "something_new": {"nested": [1, 2]}, "stop": None, "seed": None}
    assert post(http, CHAT, body)["usage"]["completion_tokens"] == 2


def test_chunked_oversized_body(http):
    """A body sent without Content-Length is counted as it arrives."""
    def chunks():
        for _ in range(3):
            yield b"x" * (1024 * 1024)

    r = http.post(COMPLETIONS, content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


# ---- observability ----------------------------------------------------------------------------------------
def test_status(http):
    s = status(http)
    assert s["model"] == MODEL
    assert s["engine"]["target"] == MODEL and s["engine"]["chat_template"] == "gemma"
    assert s["draft"] == {"configured": "auto", "default": "auto"}
    assert s["config"]["server"]["port"] > 0 and s["config"]["models"]["target"] == "auto"  # planner chose MODEL
    t = s["totals"]
    assert t["generations"] > 0 and t["completion_tokens"] > 0 and t["rounds"] > 0
    assert t["acceptance_rate"] == pytest.approx(t["accepted"] / t["drafted"])
    assert t["mean_accepted_per_round"] == pytest.approx(t["accepted"] / t["rounds"])
    assert t["tokens_per_second"] > 0 and s["uptime_seconds"] > 0


def test_metrics(http):
    post(http, COMPLETIONS, {"prompt": "a b c a b c", "max_tokens": 4})
    r = http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    for name in ("quickdraft_requests_total", "quickdraft_completion_tokens_total", "quickdraft_prompt_tokens_total",
                 "quickdraft_drafted_tokens_total", "quickdraft_accepted_tokens_total", "quickdraft_acceptance_rate",
                 "quickdraft_verify_seconds_total", "quickdraft_draft_seconds_total", "quickdraft_queue_depth",
                 "quickdraft_requests_running", "quickdraft_request_seconds_bucket"):
        assert f"\n{name}" in text, name
    assert 'quickdraft_requests_total{route="/v1/completions",status="200"}' in text
