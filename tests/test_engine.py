"""The engine end to end on real models: stop rules, streaming, sampling, stats."""

from __future__ import annotations

import numpy as np
import pytest

PROMPT = [{"role": "user", "content": "Write a short story about a robot who learns to paint."}]


def test_seeded_sampling_is_reproducible(engine):
    p = engine.chat_prompt(PROMPT)
    kw = dict(max_tokens=24, temperature=0.9, top_p=0.95, seed=1234)
    a = engine.generate(p, draft="model", k=4, **kw)
    b = engine.generate(p, draft="model", k=4, **kw)
    assert a.tokens == b.tokens
    others = {tuple(engine.generate(p, draft="model", k=4, **{**kw, "seed": s}).tokens) for s in (1, 2, 3)}
    assert len(others | {tuple(a.tokens)}) > 1  # the seed matters


def test_sampled_speculation_accepts_coupled_drafts(engine):
    p = engine.chat_prompt(PROMPT)
    r = engine.generate(p, max_tokens=32, temperature=1.0, seed=7, draft="model", k=4)
    assert r.stats.drafted > 0
    assert 0 < r.stats.accepted <= r.stats.drafted
    assert len(r.tokens) == 32 or r.finish_reason == "stop"


@pytest.mark.parametrize("seed", range(6))
def test_sampled_output_does_not_depend_on_the_drafter_or_k(engine, seed):
    """Each position's draw is a function of (seed, position): the target alone, n-gram, the draft model at
    several K and the adaptive controller all give the same tokens for one seed."""
    p = engine.chat_prompt(PROMPT)
    kw = dict(max_tokens=40, temperature=0.8, seed=seed)
    alone = engine.generate(p, draft="none", **kw).tokens
    for draft, k in (("ngram", 2), ("model", 1), ("model", 2), ("model", 4), ("auto", None)):
        assert engine.generate(p, draft=draft, k=k, **kw).tokens == alone, (draft, k)


def test_a_sampled_request_without_a_seed_is_drawn_afresh(engine):
    p = engine.chat_prompt(PROMPT)
    runs = {tuple(engine.generate(p, max_tokens=16, temperature=1.0, draft="model").tokens) for _ in range(3)}
    assert len(runs) > 1


def test_stream_pieces_add_up_to_the_generated_text(engine):
    p = engine.chat_prompt(PROMPT)
    pieces = list(engine.stream(p, max_tokens=30, draft="model", k=4))
    assert pieces[-1].finish_reason == "length"
    assert all(x.finish_reason is None for x in pieces[:-1])
    text = "".join(x.text for x in pieces)
    tokens = [t for x in pieces for t in x.tokens]
    assert text == engine.tokenizer.detokenize(tokens)
    assert len(tokens) == 30
    assert len(pieces) < 30  # several tokens arrive per round


def test_stop_string_cuts_the_text(engine):
    p = engine.chat_prompt(PROMPT)
    full = engine.generate(p, max_tokens=40, draft="none")
    words = full.text.split()
    stop = words[len(words) // 2]
    r = engine.generate(p, max_tokens=40, draft="model", stop=[stop])
    assert r.finish_reason == "stop"
    assert stop not in r.text
    assert full.text.startswith(r.text)


class Oracle:
    """A drafter that knows what comes next (the target alone's output, and more after it), so every round
    drafts the full K and is accepted: the rounds run right up to the end of the context."""

    name = "oracle"

    def __init__(self, sequence):
        self.sequence = list(sequence)

    def start(self, prompt):
        pass

    def propose(self, context, k, sampling):
        return self.sequence[len(context) : len(context) + k]


def test_the_context_limit_is_the_same_with_and_without_speculation(smol_engine):
    """A context of n_ctx holds at most n_ctx tokens, prompt included: the target alone stops there, and so
    must a round that would otherwise verify past it."""
    from quickdraft import Engine
    from quickdraft.loading import open_model, standard_drafters
    from quickdraft.target import LocalTarget

    tokenizer = open_model("smollm2-135m", n_ctx=64, threads=2)
    target = LocalTarget(tokenizer, max_k=4)  # this test is about the context, not about kernels
    n_ctx = target.n_ctx  # llama.cpp rounds the context up (to 256 cells)
    p = tokenizer.tokenize("one two three four five six seven eight nine ten " * (n_ctx // 8))[: n_ctx - 30]
    plain = Engine(target, tokenizer, standard_drafters(), draft="none")
    alone = plain.generate(p, max_tokens=n_ctx, draft="none")
    assert len(p) + len(alone.tokens) == n_ctx and alone.finish_reason == "length"
    oracle = Oracle(p + alone.tokens + alone.tokens)
    spec = Engine(target, tokenizer, {**standard_drafters(), "oracle": oracle}, draft="oracle", k=4)
    r = spec.generate(p, max_tokens=n_ctx, k=4)
    assert r.tokens == alone.tokens and r.finish_reason == "length"
    assert r.stats.accepted > 0


def test_max_tokens_is_exact_even_mid_round(engine):
    p = engine.chat_prompt(PROMPT)
    for n in (1, 2, 5, 13):
        r = engine.generate(p, max_tokens=n, draft="model", k=8)
        assert len(r.tokens) == n and r.finish_reason == "length"


def test_end_of_generation_token_stops(smol_engine):
    p = smol_engine.chat_prompt([{"role": "user", "content": "Say hi."}])
    r = smol_engine.generate(p, max_tokens=200)
    assert r.finish_reason == "stop"
    assert smol_engine.tokenizer.is_eog(r.tokens[-1])
    assert "<|im_end|>" not in r.text


def test_logprobs_are_the_target_distribution(engine):
    p = engine.chat_prompt(PROMPT)
    r = engine.generate(p, max_tokens=8, draft="model", k=4, top_logprobs=3)
    assert len(r.logprobs) == 8
    for lp, tok in zip(r.logprobs, r.tokens):
        assert lp.token == tok
        assert lp.logprob <= 0
        assert len(lp.top) == 3 and lp.top[0][1] >= lp.top[1][1] >= lp.top[2][1]
        assert lp.top[0][0] == tok  # greedy: the emitted token is the most probable one
        assert abs(lp.top[0][1] - lp.logprob) < 1e-9
    # same numbers as the target alone computes
    base = engine.generate(p, max_tokens=8, draft="none", top_logprobs=3)
    np.testing.assert_allclose([x.logprob for x in base.logprobs], [x.logprob for x in r.logprobs], atol=1e-6)


def test_stats_are_consistent(engine):
    p = engine.chat_prompt(PROMPT)
    s = engine.generate(p, max_tokens=32, draft="model", k=4).stats
    assert s.completion_tokens == 32
    assert s.completion_tokens == s.rounds + s.accepted  # each round: accepted drafts + one target token
    assert 0 < s.acceptance_rate <= 1
    assert s.tokens_per_second > 0 and s.ttft_seconds > 0
    assert s.draft_seconds > 0 and s.verify_seconds > 0
    d = s.to_dict()
    for key in ("rounds", "drafted", "accepted", "acceptance_rate", "mean_accepted_per_round",
                "draft_seconds", "verify_seconds", "tokens_per_second"):
        assert key in d


@pytest.mark.parametrize("draft", ["none", "ngram"])
def test_target_alone_and_ngram_on_smollm(smol_engine, draft):
    p = smol_engine.chat_prompt([{"role": "user", "content": "List the days of the week."}])
    r = smol_engine.generate(p, max_tokens=40, draft=draft)
    assert r.tokens and r.text.strip()
    if draft == "none":
        assert r.stats.drafted == 0 and r.stats.rounds == len(r.tokens)
