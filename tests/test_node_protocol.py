"""The node protocol and the node's service, in this process: encodings, sessions, the vocabulary file.

Real models throughout; the network is covered by test_nodes.py and test_node_faults.py.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from conftest import DRAFT, TARGET
from quickdraft import model_store
from quickdraft.drafters import ModelDrafter, Proposal
from quickdraft.llama_model import LlamaModel
from quickdraft.node import protocol as p
from quickdraft.node.service import NodeService
from quickdraft.node.vocab import vocab_gguf
from quickdraft.sampling import Dist, SamplingParams
from quickdraft.target import LocalTarget

GREEDY = p.encode_sampling(SamplingParams())


@pytest.fixture(scope="module")
def target_model():
    return LlamaModel(model_store.resolve(TARGET), n_ctx=1024, threads=1, name=TARGET)


@pytest.fixture(scope="module")
def draft_model():
    return LlamaModel(model_store.resolve(DRAFT), n_ctx=1024, threads=1, name=DRAFT)


def seed_rng(seed=0) -> dict:
    return p.encode_rng(np.random.default_rng(seed))


# ---- encodings --------------------------------------------------------------------------------------------
def test_rng_hand_over_gives_the_node_the_same_stream_and_moves_ours_away():
    rng, twin = np.random.default_rng(7), np.random.default_rng(7)
    wire = p.unpack(p.pack({"rng": p.hand_over_rng(rng)}))["rng"]
    node_rng = p.decode_rng(wire)
    expected = twin.random(8)
    assert node_rng.random(8).tolist() == expected.tolist()
    assert rng.random() not in set(expected.tolist()) | {twin.random()}  # our copy jumped elsewhere


def test_sparse_distributions_cross_the_wire_bit_for_bit():
    rng = np.random.default_rng(1)
    probs = rng.random(32)
    d = Dist(probs / probs.sum(), rng.choice(262144, 32, replace=False))
    (back,) = p.decode_dists(p.unpack(p.pack({"q": p.encode_dists([d])}))["q"])
    assert back.ids.tolist() == d.ids.tolist()
    assert back.probs.tobytes() == d.probs.tobytes()


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
def test_info_names_model_vocabulary_and_versions(target_model):
    info = NodeService(target_model, "target").handle({"op": "info", "protocol": p.PROTOCOL_VERSION})
    assert info["role"] == "target" and info["model"] == TARGET
    assert info["n_vocab"] == 262144 and info["vocab_fingerprint"] == target_model.vocab_fingerprint
    assert info["protocol"] == p.PROTOCOL_VERSION and info["quickdraft"]
    assert info["llama_cpp"]["llama_cpp_python"] and "n_ctx" in info


def test_other_protocol_versions_are_refused(target_model):
    reply = NodeService(target_model, "target").handle({"op": "info", "protocol": p.PROTOCOL_VERSION + 1})
    assert reply["error"] == "protocol_mismatch" and "same quickdraft version" in reply["message"]


def test_verify_answers_what_the_local_target_answers(target_model):
    service = NodeService(target_model, "target")
    prompt = target_model.tokenize("The capital of France is")
    sid = service.handle({"op": "open", "tokens": prompt, "sampling": GREEDY, "rng": seed_rng()})["session"]
    draft = [506, 5279, 529, 9, 9]
    reply = service.handle({"op": "verify", "session": sid, "base": len(prompt), "extend": [], "draft": draft,
                            "logprobs": 3})
    local = LocalTarget(target_model).verify(prompt, Proposal(draft), SamplingParams(), np.random.default_rng(0), 3)
    assert reply["n_accepted"] == local.n_accepted and reply["token"] == local.tokens[-1]
    assert p.decode_logprobs(reply["logprobs"]) == local.logprobs
    # the node now holds prompt + emitted: the next verify needs no context at all
    assert service.sessions[sid].tokens == prompt + local.tokens


def test_draft_and_append_on_a_draft_node(draft_model):
    service = NodeService(draft_model, "draft")
    prompt = draft_model.tokenize("Once upon a time")
    sid = service.handle({"op": "open", "tokens": prompt[:2], "sampling": GREEDY, "rng": seed_rng()})["session"]
    assert service.handle({"op": "append", "session": sid, "base": 2, "extend": prompt[2:]}) == {"n_tokens": len(prompt)}
    reply = service.handle({"op": "draft", "session": sid, "base": len(prompt), "extend": [], "n": 4})
    local = ModelDrafter(draft_model).propose(list(prompt), 4, SamplingParams(), np.random.default_rng(0))
    assert reply["tokens"] == local.tokens and "q" not in reply
    assert service.sessions[sid].tokens == prompt + local.tokens


def test_roles_sessions_and_bad_requests_are_answered_not_raised(target_model):
    service = NodeService(target_model, "target")
    assert service.handle({"op": "draft", "session": 1, "base": 0, "extend": [], "n": 2})["error"] == "bad_request"
    assert service.handle({"op": "verify", "session": 12345, "base": 0, "extend": [], "draft": []})["error"] == "unknown_session"
    assert service.handle({"op": "nonsense"})["error"] == "bad_request"
    assert service.handle({"op": "open", "tokens": [], "sampling": GREEDY, "rng": seed_rng()})["error"] == "bad_request"


def test_idle_sessions_expire_and_close_frees_the_kv(target_model):
    service = NodeService(target_model, "target", session_ttl=0.2)
    prompt = target_model.tokenize("Hello there")
    a = service.handle({"op": "open", "tokens": prompt, "sampling": GREEDY, "rng": seed_rng()})["session"]
    assert target_model.tokens == prompt
    service.handle({"op": "close", "session": a})
    assert a not in service.sessions and target_model.tokens == []
    b = service.handle({"op": "open", "tokens": prompt, "sampling": GREEDY, "rng": seed_rng()})["session"]
    time.sleep(0.3)
    service.handle({"op": "ping"})
    assert b not in service.sessions and target_model.tokens == []
    # a replaced session hands its KV cache to the new one
    c = service.handle({"op": "open", "tokens": prompt, "sampling": GREEDY, "rng": seed_rng()})["session"]
    d = service.handle({"op": "open", "tokens": prompt + [236761], "sampling": GREEDY, "rng": seed_rng(),
                        "replace": c})["session"]
    assert c not in service.sessions and d in service.sessions and target_model.tokens == prompt + [236761]
