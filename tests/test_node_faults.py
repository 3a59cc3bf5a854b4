"""Nodes that die, stall, restart or misbehave, as real processes (killed with SIGKILL, frozen with SIGSTOP)
or real servers answering nonsense.

- a draft node that dies or stalls mid-generation: the request completes on the target alone, with the
  target-alone output, and the failure is counted; drafting resumes once the node is back;
- a draft node (or any drafter under the fallback) that answers malformed replies or raises anything: the
  same, the request never fails for the draft's sake;
- a target node that dies or stalls: the request fails with NodeUnavailableError within its timeout, and
  the next request after a restart works;
- a target node restarted mid-generation: the coordinator re-creates the session from its token history.
"""

from __future__ import annotations

import signal
import time

import pytest
from prometheus_client import REGISTRY

from conftest import DRAFT, TARGET
from quickdraft import Engine
from quickdraft.errors import NodeUnavailableError
from quickdraft.loading import standard_drafters
from quickdraft.node import open_drafter
from quickdraft.node.fallback import FallbackDrafter
from quickdraft.node.launch import NodeProcess
from quickdraft.node.metrics import node_label
from quickdraft.node.server import NodeServer
from quickdraft.node.service import NodeService

MAX_TOKENS = 40
PROMPT = "Write a short story about a lighthouse keeper."


def drafting(engine: Engine) -> Engine:
    """The engine, checked to draft at all. These tests need the draft in use, and K is capped to what this
    machine verifies bit-exactly (quickdraft.exactness): a llama.cpp build whose batches round differently
    from single tokens allows none."""
    assert engine.target.max_k >= 1, "the exactness probe allows no draft token with this llama.cpp build"
    return engine


def counter(name: str, node: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, {"node": node_label(node), **labels}) or 0.0


@pytest.fixture(scope="module")
def local():
    return Engine.load(TARGET, "none", k=4, threads=1)


@pytest.fixture(scope="module")
def prompt(local):
    return local.chat_prompt([{"role": "user", "content": PROMPT}])


@pytest.fixture(scope="module")
def baseline(local, prompt):
    return local.generate(prompt, max_tokens=MAX_TOKENS).tokens


@pytest.fixture
def target():
    node = NodeProcess(TARGET, "target", cpus="0").start()
    yield node
    node.stop()


@pytest.fixture
def draft():
    node = NodeProcess(DRAFT, "draft", cpus="1").start()
    yield node
    node.stop()


def stream_after(engine, prompt, n_pieces: int, action, **kwargs):
    """Generate, run `action` after the first n_pieces responses, finish; the tokens and the last stats."""
    tokens, last = [], None
    for i, piece in enumerate(engine.stream(prompt, max_tokens=MAX_TOKENS, **kwargs)):
        tokens += piece.tokens
        last = piece
        if i + 1 == n_pieces:
            action()
    return tokens, last.stats


def wait_until(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.1)


# ---- the draft node ---------------------------------------------------------------------------------------
def test_draft_node_killed_mid_generation_then_back(target, draft, prompt, baseline):
    engine = drafting(Engine.load(target.url, draft=draft.url, k=4))
    fallback = engine.drafters["model"]
    label = draft.url
    failures, fallbacks = counter("quickdraft_draft_failures_total", label), \
        counter("quickdraft_draft_fallback_rounds_total", label)

    tokens, stats = stream_after(engine, prompt, 2, draft.kill)
    assert tokens == baseline  # completed, and exactly the target's output
    assert fallback.down and fallback.fallback_rounds > 0
    assert counter("quickdraft_draft_failures_total", label) > failures
    assert counter("quickdraft_draft_fallback_rounds_total", label) > fallbacks

    draft.start()  # same port
    wait_until(fallback._available, timeout=15)
    result = engine.generate(prompt, max_tokens=MAX_TOKENS)
    assert result.tokens == baseline
    assert not fallback.down and result.stats.accepted > 0  # drafting resumed


def test_draft_node_that_stalls_times_out_and_resumes(target, draft, prompt, baseline):
    engine = drafting(Engine.load(target.url, draft=draft.url + "?timeout=1&connect_timeout=1", k=4))
    fallback = engine.drafters["model"]
    t0 = time.monotonic()
    tokens, stats = stream_after(engine, prompt, 2, lambda: draft.signal(signal.SIGSTOP))
    assert tokens == baseline
    assert fallback.down and fallback.failures >= 1
    assert time.monotonic() - t0 < 60  # a stall costs a timeout, not the request
    draft.signal(signal.SIGCONT)
    wait_until(fallback._available, timeout=15)
    result = engine.generate(prompt, max_tokens=MAX_TOKENS)
    assert result.tokens == baseline and not fallback.down and result.stats.accepted > 0


class MisbehavingDraftNode(NodeService):
    """A draft node that answers `draft` with what `reply` gives: a reply the protocol does not allow."""

    def __init__(self, model, reply):
        super().__init__(model, "draft")
        self.reply = reply

    def op_draft(self, request):
        super().op_draft(request)
        return self.reply(request)


BAD_REPLIES = {
    "no tokens": lambda r: {"compute_us": 1},
    "tokens not a list": lambda r: {"tokens": 818},
    "strings": lambda r: {"tokens": ["the", "cat"]},
    "floats": lambda r: {"tokens": [818.0, 5279.5]},
    "booleans": lambda r: {"tokens": [True, False]},
    "None": lambda r: {"tokens": [None]},
    "out of the vocabulary": lambda r: {"tokens": [262144 + 5]},
    "negative": lambda r: {"tokens": [-1]},
    "too many": lambda r: {"tokens": [818] * (r["n"] + 3)},
}


@pytest.mark.parametrize("bad", BAD_REPLIES)
def test_a_draft_node_with_malformed_replies_leaves_the_target_alone(local, prompt, baseline, bad):
    """Issue 8b: a malformed reply used to fail the request (KeyError, TypeError...) instead of falling back."""
    server = NodeServer(MisbehavingDraftNode(local.tokenizer, BAD_REPLIES[bad])).start()
    drafter = open_drafter(server.url, vocab_fingerprint=local.tokenizer.vocab_fingerprint)
    try:
        engine = drafting(Engine(local.target, local.tokenizer, {**standard_drafters(), "model": drafter},
                                    draft="model", k=4))
        failures = counter("quickdraft_draft_failures_total", server.url)
        result = engine.generate(prompt, max_tokens=MAX_TOKENS)
        assert result.tokens == baseline
        fallback = engine.drafters["model"]
        assert fallback.down and fallback.failures >= 1 and fallback.fallback_rounds > 0
        assert counter("quickdraft_draft_failures_total", server.url) > failures
        assert result.stats.drafted == 0  # nothing the node said was verified
    finally:
        drafter.close()
        server.shutdown()


class BrokenDrafter:
    """A drafter with a bug: it raises what a buggy drafter raises, or returns what it should not."""

    name = "broken"

    def __init__(self, outcome):
        self.outcome = outcome
        self.calls = 0

    def start(self, prompt):
        pass

    def propose(self, context, k, sampling):
        self.calls += 1
        return self.outcome()

    def discard(self):
        pass

    def close(self):
        pass


def _raise(error):
    def outcome():
        raise error
    return outcome


@pytest.mark.parametrize("outcome", [_raise(KeyError("tokens")), _raise(TypeError("int() argument")),
                                     _raise(RuntimeError("bug")), lambda: None, lambda: [1.5], lambda: "818"],
                         ids=["KeyError", "TypeError", "RuntimeError", "None", "float", "string"])
def test_any_failure_of_the_inner_drafter_falls_back(local, prompt, baseline, outcome):
    broken = BrokenDrafter(outcome)
    fallback = FallbackDrafter(broken, "broken://test", retry_after=0.0, max_retry_after=0.0)
    engine = drafting(Engine(local.target, local.tokenizer, {**standard_drafters(), "model": fallback},
                                draft="model", k=4))
    result = engine.generate(prompt, max_tokens=MAX_TOKENS)
    assert result.tokens == baseline
    assert broken.calls > 1 and fallback.failures == broken.calls  # tried every round (no backoff), counted
    assert fallback.fallback_rounds == fallback.failures


def test_a_draft_node_down_at_load_means_the_target_alone(target, draft, prompt, baseline):
    """Start in any order (issue 10): not an error, the target alone until the node comes up."""
    url = draft.url
    draft.stop()
    engine = Engine.load(target.url, draft=url, k=4)
    assert engine.drafters["model"].down  # FallbackDrafter, tried again with backoff
    assert engine.generate(prompt, max_tokens=MAX_TOKENS).tokens == baseline


# ---- the target node --------------------------------------------------------------------------------------
def test_target_node_killed_fails_fast_and_a_restart_serves_again(target, draft, prompt, baseline):
    engine = drafting(Engine.load(target.url, draft=draft.url, k=4))
    assert engine.generate(prompt, max_tokens=8).tokens == baseline[:8]
    failures = counter("quickdraft_target_failures_total", target.url)
    target.kill()
    t0 = time.monotonic()
    with pytest.raises(NodeUnavailableError, match="target node"):
        engine.generate(prompt, max_tokens=MAX_TOKENS)
    assert time.monotonic() - t0 < 5
    assert counter("quickdraft_target_failures_total", target.url) > failures

    target.start()  # same port
    assert engine.generate(prompt, max_tokens=MAX_TOKENS).tokens == baseline


def test_target_node_killed_mid_generation_fails_the_request(target, prompt):
    engine = drafting(Engine.load(target.url, draft="ngram", k=4))
    t0 = time.monotonic()
    with pytest.raises(NodeUnavailableError):
        stream_after(engine, prompt, 2, target.kill)
    assert time.monotonic() - t0 < 30


def test_target_node_that_stalls_fails_within_its_timeout(target, prompt):
    engine = drafting(Engine.load(target.url + "?timeout=2", draft="ngram", k=4))
    engine.generate(prompt, max_tokens=4)
    target.signal(signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        with pytest.raises(NodeUnavailableError, match="did not answer"):
            engine.generate(prompt, max_tokens=MAX_TOKENS)
        elapsed = time.monotonic() - t0
        assert 1.5 < elapsed < 5
    finally:
        target.signal(signal.SIGCONT)


def test_target_restart_mid_generation_recreates_the_session(target, draft, prompt, baseline):
    engine = drafting(Engine.load(target.url, draft=draft.url, k=4))
    recreated = counter("quickdraft_node_sessions_recreated_total", target.url, role="target")
    tokens, stats = stream_after(engine, prompt, 2, target.restart)
    assert tokens == baseline
    assert counter("quickdraft_node_sessions_recreated_total", target.url, role="target") == recreated + 1
