"""The exactness probe (quickdraft.exactness) remembers only what it tested, and checks the prompt cache
(issue 21, item 4). Real models: smollm2-135m, and the Gemma Q8_0 engine of conftest."""

from __future__ import annotations

import json

import pytest

from conftest import load_prompts
from quickdraft import exactness, model_store
from quickdraft.llama_model import LlamaModel
from quickdraft.loading import open_model
from quickdraft.policy import MAX_K

MODEL = "smollm2-135m"
FIRST, SECOND = 6, 12  # Spec-Bench prompts 0-5 are ~310 tokens, 6-11 ~310 more: the second crosses 512


def remembered(cache) -> list[dict]:
    """The probe's entries in the cache file, in the order written."""
    return list(json.loads(cache.read_text()).values())


def test_a_probe_in_a_small_context_is_not_trusted_by_a_larger_one(tmp_path, monkeypatch):
    """At n_ctx 512 the probe cannot test batches after a 1,030-token prefix: a load at 1,100 must probe
    again, not trust it. A load at 2,048 tests exactly what 1,100 tested, so it reuses that entry. Every
    entry says what it tested and the prompt-reuse check's result."""
    monkeypatch.setenv("QUICKDRAFT_CACHE", str(tmp_path))
    cache = tmp_path / "exact-batch.json"
    tested = []
    for n_ctx in (512, 1100, 2048):
        model = open_model(MODEL, n_ctx=n_ctx, threads=1)
        try:
            exactness.exact_max_k(model, 1)  # batches of 2: the prefixes are what this test is about
        finally:
            model.close()
        tested.append([entry["key"]["kv_lens"] for entry in remembered(cache)])
    assert tested == [[[24, 250]], [[24, 250], [24, 250, 1030]], [[24, 250], [24, 250, 1030]]]
    small, large = remembered(cache)
    assert small["key"]["reuse"] == [64, 446, 2] and large["key"]["reuse"] == [64, 512, 2]
    for entry in (small, large):
        assert isinstance(entry["prompt_reuse_exact"], bool) and entry["reuse_seconds"] >= 0


def test_the_prompt_reuse_check_sees_a_difference_where_there_is_one():
    """Gemma's Q4_K_M file decodes one token through other kernels than a batch of 4+ (repacked K-quant
    gemm): a cached prefix whose last tokens were decoded one at a time, as an answer is, leaves other KV
    bits than a fresh read of the same tokens, and the check says so. SmolLM2's file reads alike either way.
    (Small sizes and one thread, to be quick; the probe's own sizes are checked above.)"""
    for name, exact in (("gemma-3-270m", False), (MODEL, True)):
        model = LlamaModel(model_store.resolve(name), n_ctx=256, threads=1)
        try:
            assert model.prompt_reuse_exact(16, 32) is exact, name
            assert model.tokens == []  # the cache is left empty
        finally:
            model.close()


def spec_bench_text(start: int, stop: int) -> str:
    """Spec-Bench prompts start..stop-1 in a row: a few hundred tokens of text."""
    return "".join("\n\n" + p["turns"][0] for p in load_prompts()[start:stop])


@pytest.mark.parametrize("engine_fixture", ["smol_engine", "engine"])
def test_a_request_after_a_cached_prefix_equals_a_fresh_run(engine_fixture, request):
    """The second request shares the first one's prompt and answer and adds a few hundred tokens: with the
    prompt cache (where the probe found it exact) it reads that rest in one batch across the 512 boundary a
    fresh read chunks at, and its output equals the fresh run's, token for token. Where the probe found it
    not exact, the engine keeps no cache across requests."""
    engine = request.getfixturevalue(engine_fixture)
    target, model = engine.target, engine.target.model
    entry = exactness.probe(model, MAX_K)  # remembered at load
    assert isinstance(entry["prompt_reuse_exact"], bool)
    assert target.fresh_prefill == (target.max_k < MAX_K or not entry["prompt_reuse_exact"])

    first = engine.tokenize(spec_bench_text(0, FIRST))
    answer = engine.generate(first, max_tokens=6, draft="ngram").tokens
    second = first + answer + engine.tokenize(spec_bench_text(FIRST, SECOND), add_bos=False)
    assert len(first) < 512 < len(second) < 1024 and len(second) - len(first) > 150

    def run() -> tuple[list[int], int]:
        before = model.evaluated_tokens
        tokens = engine.generate(second, max_tokens=12, draft="ngram").tokens
        return tokens, model.evaluated_tokens - before

    reused, read_reused = run()
    model.reset()
    fresh, read_fresh = run()
    assert reused == fresh
    # n-gram drafts depend on the context alone, so both runs verified the same batches after their prompts
    saved = read_fresh - read_reused
    assert saved == 0 if target.fresh_prefill else saved >= len(first)
