"""The node protocol and the node's service, in this process: encodings, sessions, the vocabulary file.

Real models throughout; the network is covered by test_nodes.py and test_node_faults.py.
"""

from __future__ import annotations

import time

import pytest

from conftest import DRAFT, TARGET
from quickdraft import model_store
from quickdraft.drafters import ModelDrafter
from quickdraft.llama_model import LlamaModel, system_info
from quickdraft.loading import local_target
from quickdraft.node import protocol as p
from quickdraft.node.service import NodeService
from quickdraft.node.vocab import vocab_gguf
from quickdraft.policy import MAX_K
from quickdraft.sampling import SamplingParams

GREEDY = SamplingParams()
SAMPLED = SamplingParams(temperature=0.9, top_p=0.95, seed=2**63 + 12345)  # a seed past int64, as users may give


@pytest.fixture(scope="module")
def target_model():
    return LlamaModel(model_store.resolve(TARGET), n_ctx=1024, threads=1, name=TARGET)


@pytest.fixture(scope="module")
def draft_model():
    return LlamaModel(model_store.resolve(DRAFT), n_ctx=1024, threads=1, name=DRAFT)


def wire(message: dict) -> dict:
    """The message as the other side reads it."""
    return p.unpack(p.pack(message))


def open_session(service: NodeService, tokens, sampling=GREEDY, **extra) -> int:
    reply = service.handle(wire({"op": "open", "tokens": tokens, "sampling": p.encode_sampling(sampling), **extra}))
    return reply["session"]


def cap_exact_k(monkeypatch, k: int) -> None:
    """Make the exactness probe report k on this machine (what a K-quant target's probe finds on some)."""
    monkeypatch.setattr("quickdraft.loading.exact_max_k", lambda model, limit: min(k, limit))


# ---- encodings --------------------------------------------------------------------------------------------
def test_sampling_crosses_the_wire_with_its_seed():
    for s in (GREEDY, SAMPLED, SamplingParams(temperature=0.7, top_k=40, min_p=0.05, seed=-3)):
        back = p.decode_sampling(wire({"s": p.encode_sampling(s)})["s"])
        expected = s.seed % 2**64 if s.seed is not None else None
        assert back.model_dump() == {**s.model_dump(), "seed": expected}
    with pytest.raises(p.NodeProtocolError, match="unknown sampling"):
        p.decode_sampling({"temperature": 0.5, "rng": {}})  # protocol 1's generator state is gone
    with pytest.raises(ValueError):
        p.decode_sampling({"temperature": -1.0})


def test_token_ids_are_checked():
    assert p.token_ids([0, 5, 99], 100, "t") == [0, 5, 99]
    for bad in ([100], [-1], ["5"], [1.0], [True], None, "abc", {"a": 1}):
        with pytest.raises(p.NodeProtocolError):
            p.token_ids(bad, 100, "t")
    with pytest.raises(p.NodeProtocolError, match="at most 2"):
        p.token_ids([1, 2, 3], 100, "t", limit=2)


def test_node_urls():
    assert p.parse_node_url("node://127.0.0.1:8471") == ("127.0.0.1", 8471, {})
    assert p.parse_node_url("node://[::1]:9000?timeout=2&pipeline=0") == ("::1", 9000, {"timeout": "2", "pipeline": "0"})
    assert p.is_node_url("node://h:1") and not p.is_node_url("gemma-3-270m") and not p.is_node_url(None)
    with pytest.raises(ValueError, match="port"):
        p.parse_node_url("node://127.0.0.1")


def test_vocabulary_file_is_small_and_tokenizes_like_the_model(target_model, tmp_path):
    data = vocab_gguf(target_model.path)
    assert len(data) < target_model.path.stat().st_size / 20  # metadata only, no tensors
    path = tmp_path / "vocab.gguf"
    path.write_bytes(data)
    tokenizer = LlamaModel(path, vocab_only=True)
    assert tokenizer.vocab_fingerprint == target_model.vocab_fingerprint
    text = "<start_of_turn>user\nSpeculative décodage, 東京 🚀<end_of_turn>"
    assert tokenizer.tokenize(text) == target_model.tokenize(text)
    assert tokenizer.chat_template == target_model.chat_template
    assert [tokenizer.is_eog(t) for t in range(1, 200)] == [target_model.is_eog(t) for t in range(1, 200)]


# ---- the service ------------------------------------------------------------------------------------------
def test_info_names_model_vocabulary_exact_k_and_versions(target_model):
    service = NodeService(target_model, "target")
    info = service.handle({"op": "info", "protocol": p.PROTOCOL_VERSION})
    assert info["role"] == "target" and info["model"] == TARGET
    assert info["n_vocab"] == 262144 and info["vocab_fingerprint"] == target_model.vocab_fingerprint
    assert info["protocol"] == p.PROTOCOL_VERSION == 2 and info["quickdraft"]
    assert info["max_exact_k"] == service.target.max_k == local_target(target_model).max_k
    assert info["llama_cpp"] == {**system_info(), "rpc_servers": []}
    assert "n_ctx" in info


def test_the_node_target_is_built_as_the_local_one(target_model, monkeypatch):
    cap_exact_k(monkeypatch, 2)
    capped = NodeService(target_model, "target")
    assert (capped.target.max_k, capped.target.fresh_prefill) == (2, True)
    assert capped.info()["max_exact_k"] == 2
    cap_exact_k(monkeypatch, MAX_K)
    full = NodeService(target_model, "target")
    assert (full.target.max_k, full.target.fresh_prefill) == (MAX_K, False)


def test_other_protocol_versions_are_refused(target_model):
    reply = NodeService(target_model, "target").handle({"op": "info", "protocol": p.PROTOCOL_VERSION - 1})
    assert reply["error"] == "protocol_mismatch" and "same quickdraft version" in reply["message"]


@pytest.mark.parametrize("sampling", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_verify_answers_what_the_local_target_answers(target_model, sampling):
    service = NodeService(target_model, "target")
    local = local_target(target_model)
    prompt = target_model.tokenize("The capital of France is")
    sid = open_session(service, prompt, sampling)
    context = list(prompt)
    for draft in ([], [506, 5279, 529, 9], [9, 9]):  # a prefill round, then drafts
        reply = service.handle(wire({"op": "verify", "session": sid, "base": len(context), "extend": [],
                                     "draft": draft, "logprobs": 3}))
        expected = local.verify(context, draft, sampling, 3)
        assert reply["n_accepted"] == expected.n_accepted and reply["token"] == expected.tokens[-1]
        assert p.decode_logprobs(reply["logprobs"]) == expected.logprobs
        context += expected.tokens
        # the node now holds context + emitted: the next verify needs no context at all
        assert service.sessions[sid].tokens == context


def test_a_capped_target_node_drops_its_prompt_cache_at_each_request(target_model, monkeypatch):
    """Issue 8a. Where the exactness probe caps K (batches round differently from single tokens), the local
    engine empties the KV cache at each request (LocalTarget.fresh_prefill), so the first token comes from a
    fresh prefill as the target alone's does. A node's request must run the very same evaluations."""
    cap_exact_k(monkeypatch, 2)
    service = NodeService(target_model, "target")
    local = local_target(target_model)
    assert service.target.fresh_prefill and local.fresh_prefill
    first = target_model.tokenize("The capital of France is")
    second = first + target_model.tokenize(" Paris, and the capital of Spain is", add_special=False)

    def node_request(prompt, previous):
        sid = open_session(service, prompt, replace=previous) if previous else open_session(service, prompt)
        assert target_model.tokens == []  # opening emptied the KV cache: no prefix survives
        reply = service.handle({"op": "verify", "session": sid, "base": len(prompt), "extend": [], "draft": []})
        return sid, reply["token"]

    def local_request(prompt):
        local.start(prompt)
        return local.verify(list(prompt), [], GREEDY).tokens[-1]

    def cost(run):
        calls, tokens = target_model.eval_calls, target_model.evaluated_tokens
        out = run()
        return out, (target_model.eval_calls - calls, target_model.evaluated_tokens - tokens)

    target_model.reset()
    (sid, token1), node_cost1 = cost(lambda: node_request(first, None))
    (_, token2), node_cost2 = cost(lambda: node_request(second, sid))
    target_model.reset()
    local1, local_cost1 = cost(lambda: local_request(first))
    local2, local_cost2 = cost(lambda: local_request(second))
    assert (token1, token2) == (local1, local2)
    assert (node_cost1, node_cost2) == (local_cost1, local_cost2)
    assert node_cost2 == (1, len(second))  # the second prompt was prefilled whole, in one batch


def test_an_uncapped_target_node_keeps_the_prompt_cache(target_model, monkeypatch):
    cap_exact_k(monkeypatch, MAX_K)
    service = NodeService(target_model, "target")
    assert not service.target.fresh_prefill
    first = target_model.tokenize("The capital of France is")
    second = first + target_model.tokenize(" Paris", add_special=False)
    target_model.reset()
    sid = open_session(service, first)
    service.handle({"op": "verify", "session": sid, "base": len(first), "extend": [], "draft": []})
    before = target_model.evaluated_tokens
    sid = open_session(service, second, replace=sid)
    assert target_model.tokens == first  # the replaced session's KV cache carries over
    service.handle({"op": "verify", "session": sid, "base": len(second), "extend": [], "draft": []})
    assert target_model.evaluated_tokens - before == len(second) - len(first)  # the new tokens alone


@pytest.mark.parametrize("sampling", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_draft_and_append_on_a_draft_node(draft_model, sampling):
    service = NodeService(draft_model, "draft")
    prompt = draft_model.tokenize("Once upon a time")
    sid = open_session(service, prompt[:2], sampling)
    assert service.handle({"op": "append", "session": sid, "base": 2, "extend": prompt[2:]}) == {"n_tokens": len(prompt)}
    reply = service.handle(wire({"op": "draft", "session": sid, "base": len(prompt), "extend": [], "n": 4}))
    local = ModelDrafter(draft_model).propose(list(prompt), 4, sampling)
    assert reply["tokens"] == local and len(local) == 4
    assert set(reply) == {"tokens", "compute_us"}  # token ids alone, sampled or not
    assert service.sessions[sid].tokens == prompt + local


def test_roles_sessions_and_bad_requests_are_answered_not_raised(target_model):
    service = NodeService(target_model, "target")
    s = p.encode_sampling(GREEDY)
    assert service.handle({"op": "draft", "session": 1, "base": 0, "extend": [], "n": 2})["error"] == "bad_request"
    assert service.handle({"op": "verify", "session": 12345, "base": 0, "extend": [], "draft": []})["error"] == "unknown_session"
    assert service.handle({"op": "nonsense"})["error"] == "bad_request"
    assert service.handle({"op": "open", "tokens": [], "sampling": s})["error"] == "bad_request"
    assert service.handle({"op": "open", "tokens": [2, 10**9], "sampling": s})["error"] == "bad_request"
    assert service.handle({"op": "open", "tokens": [2, "x"], "sampling": s})["error"] == "bad_request"
    assert service.handle({"op": "open", "tokens": [2], "sampling": {"temperature": -2}})["error"] == "bad_request"
    sid = open_session(service, [2, 818])
    for bad in ({"draft": [262144]}, {"draft": [-1]}, {"draft": [1.5]}, {"extend": ["a"]}, {"base": 7},
                {"base": "1"}, {"logprobs": -1}):
        request = {"op": "verify", "session": sid, "base": 2, "extend": [], "draft": [], **bad}
        assert service.handle(request)["error"] == "bad_request", bad
    assert service.handle({"op": "verify", "session": sid, "base": 2, "extend": [], "draft": [506]})["n_accepted"] in (0, 1)


def test_idle_sessions_expire_and_close_frees_the_kv(target_model):
    service = NodeService(target_model, "target", session_ttl=0.2)
    prompt = target_model.tokenize("Hello there")
    verify = {"op": "verify", "base": len(prompt), "extend": [], "draft": []}
    a = open_session(service, prompt)
    service.handle({**verify, "session": a})
    assert target_model.tokens == prompt
    service.handle({"op": "close", "session": a})
    assert a not in service.sessions and target_model.tokens == []
    b = open_session(service, prompt)
    service.handle({**verify, "session": b})
    time.sleep(0.3)
    service.handle({"op": "ping"})
    assert b not in service.sessions and target_model.tokens == []
    # a replaced session is gone; the new one holds its own tokens
    c = open_session(service, prompt)
    d = open_session(service, prompt + [236761], replace=c)
    assert c not in service.sessions and service.sessions[d].tokens == prompt + [236761]
