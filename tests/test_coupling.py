"""Drafter-invariant sampling (quickdraft.coupling): each position's token is a function of (logits, seed,
position), distributed exactly as the sampling distribution, and speculative decoding built on it emits the
target alone's tokens whatever the draft proposes."""

from __future__ import annotations

import itertools
import zlib

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from quickdraft.acceptance import accept_prefix
from quickdraft.coupling import BLOCK, coupled_token, exponentials, race, race_all, race_dense
from quickdraft.sampling import SamplingParams, distribution, softmax

N_DRAWS = 20000  # positions per frequency check: sampling noise in total variation ~0.01 for 5 outcomes


def frequencies(draw, n_vocab: int, n: int = N_DRAWS) -> np.ndarray:
    return np.bincount([draw(position) for position in range(n)], minlength=n_vocab) / n


def tv(a: np.ndarray, b: np.ndarray) -> float:
    return 0.5 * float(np.abs(a - b).sum())


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 3 * BLOCK + 5), scale=st.floats(0.1, 8.0), t=st.floats(0.2, 2.0),
       seed=st.integers(-(2**63), 2**64 - 1), position=st.integers(0, 2**40))
def test_the_pruned_race_is_the_plain_race(n, scale, t, seed, position):
    logits = np.random.default_rng(abs(seed) % 2**32).normal(0, scale, n).astype(np.float32)
    assert race_dense(logits, t, seed, position) == race_all(logits.astype(np.float64) / t, seed, position)


def test_the_pruned_race_on_a_gemma_sized_vocabulary():
    rng = np.random.default_rng(0)
    ranks = rng.permutation(262144) + 1
    logits = (-1.2 * np.log(ranks) + rng.normal(0, 0.5, ranks.size)).astype(np.float32)  # a peaked, long tail
    for position in range(20):
        assert race_dense(logits, 0.8, 7, position) == race_all(logits.astype(np.float64) / 0.8, 7, position)


def test_an_ids_noise_does_not_depend_on_the_other_ids_asked_for():
    ids = np.arange(5 * BLOCK)
    everything = exponentials(3, 11, ids)
    subset = np.array([0, 5, BLOCK + 1, 3 * BLOCK - 1, 4 * BLOCK + 7])
    np.testing.assert_array_equal(exponentials(3, 11, subset), everything[subset])
    assert not np.array_equal(exponentials(3, 12, ids), everything)  # another position, other noise
    assert not np.array_equal(exponentials(4, 11, ids), everything)  # another seed, other noise


def test_the_noise_is_standard_exponential():
    e = exponentials(1, 2, np.arange(200 * BLOCK))
    assert abs(e.mean() - 1.0) < 0.01
    assert abs((e > 1.0).mean() - np.exp(-1)) < 0.005
    assert abs((e < 0.01).mean() - (1 - np.exp(-0.01))) < 0.001  # the small values, where block minima live


def test_draws_follow_the_temperature_distribution():
    logits = np.log(np.array([0.5, 0.2, 0.15, 0.1, 0.05])).astype(np.float32)
    for t in (1.0, 0.7, 1.5):
        params = SamplingParams(temperature=t, seed=12345)
        got = frequencies(lambda pos: coupled_token(logits, params, pos), 5)
        assert tv(got, softmax(logits.astype(np.float64) / t)) < 0.015, t


def test_draws_follow_the_filtered_distributions():
    logits = np.log(np.array([0.3, 0.25, 0.2, 0.1, 0.08, 0.07])).astype(np.float32)
    for params in (SamplingParams(temperature=1.0, top_k=3, seed=1), SamplingParams(temperature=0.9, top_p=0.8, seed=2),
                   SamplingParams(temperature=1.2, min_p=0.3, seed=3)):
        got = frequencies(lambda pos: coupled_token(logits, params, pos), 6)
        want = distribution(logits, params).to_dense(6)
        assert tv(got, want) < 0.015, params
        assert got[want == 0].sum() == 0  # never a token the filters removed


def test_a_wrong_draw_is_caught():
    """Guard for the frequency checks: a race that forgets the temperature is visibly off."""
    logits = np.log(np.array([0.5, 0.2, 0.15, 0.1, 0.05]))
    got = frequencies(lambda pos: race(logits, np.arange(5), 9, pos), 5)  # temperature 1 ...
    assert tv(got, softmax(logits / 0.7)) > 0.05  # ... is not temperature 0.7


def test_greedy_is_the_argmax_and_needs_no_seed():
    logits = np.array([0.1, 3.0, -1.0, 2.9], dtype=np.float32)
    assert coupled_token(logits, SamplingParams(), 5) == 1


def test_a_draft_with_the_same_noise_agrees_as_often_as_the_coupling_promises():
    """Daliri et al.: P(draft race == target race) >= (1 - TV) / (1 + TV)."""
    p = np.array([0.4, 0.3, 0.2, 0.1])
    q = np.array([0.25, 0.25, 0.25, 0.25])
    d = 0.5 * np.abs(p - q).sum()
    agree = np.mean([race(np.log(p), np.arange(4), 5, i) == race(np.log(q), np.arange(4), 5, i)
                     for i in range(N_DRAWS)])
    assert agree >= (1 - d) / (1 + d) - 0.01
    assert agree <= 1 - d + 0.01  # no coupling beats the optimal one (rejection sampling's acceptance)


# ---- speculative decoding over a synthetic model: the emitted tokens are the target alone's ------------------
V = 4


def model_logits(prefix: tuple[int, ...], salt: int) -> np.ndarray:
    """A deterministic 'model': logits depend on the whole prefix (salt 0: the target; others: drafts)."""
    rng = np.random.default_rng(zlib.crc32(bytes(prefix)))
    base = rng.normal(0, 1.5, V)
    if salt:
        base = base + np.random.default_rng(zlib.crc32(bytes(prefix)) + salt).normal(0, 0.7, V)
    return base.astype(np.float32)


def target_alone(prompt, n, params):
    out = list(prompt)
    for _ in range(n):
        out.append(coupled_token(model_logits(tuple(out), 0), params, len(out)))
    return out[len(prompt):]


def speculative(prompt, n, params, k, propose):
    context = list(prompt)
    while len(context) - len(prompt) < n:
        draft = propose(context, min(k, n - (len(context) - len(prompt)) - 1))
        ctx = list(context)
        n_ok, token = accept_prefix(
            draft, lambda i: coupled_token(model_logits(tuple(ctx + draft[:i]), 0), params, len(ctx) + i))
        context += draft[:n_ok] + [token]
    return context[len(prompt):]


def draft_model(salt, params):
    def propose(context, k):
        seq = list(context)
        for _ in range(k):
            seq.append(coupled_token(model_logits(tuple(seq), salt), params, len(seq)))
        return seq[len(context):]
    return propose


def random_proposals(seed):
    rng = np.random.default_rng(seed)
    return lambda context, k: [int(t) for t in rng.integers(0, V, k)]


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**63), k=st.integers(1, 5), salt=st.integers(1, 1000), t=st.floats(0.5, 1.5))
def test_speculative_output_is_the_target_alones_whatever_the_draft(seed, k, salt, t):
    params = SamplingParams(temperature=t, seed=seed)
    prompt = [1, 2, 3]
    want = target_alone(prompt, 12, params)
    assert speculative(prompt, 12, params, k, draft_model(salt, params)) == want
    assert speculative(prompt, 12, params, k, random_proposals(seed % 2**32)) == want


def test_sequences_follow_the_target_distribution_over_seeds():
    """The joint distribution of 3 tokens, over seeds, is the target's product of conditionals."""
    prompt = [0, 1]
    counts: dict[tuple, int] = {}
    n = 12000
    for seed in range(n):
        params = SamplingParams(temperature=1.0, seed=seed)
        seq = tuple(speculative(prompt, 3, params, 2, draft_model(17, params)))
        counts[seq] = counts.get(seq, 0) + 1
    distance = 0.0
    for seq in itertools.product(range(V), repeat=3):
        prob, prefix = 1.0, list(prompt)
        for token in seq:
            prob *= softmax(model_logits(tuple(prefix), 0).astype(np.float64))[token]
            prefix.append(token)
        distance += abs(counts.get(seq, 0) / n - prob)
    assert distance / 2 < 0.05  # 64 cells, 12,000 samples: noise ~0.03


# ---- the noise is never 0 ---------------------------------------------------------------------------------------
def test_all_bits_set_is_not_zero_noise():
    """u = 1 (every bit set) gave noise -log(1) = 0: log 0 is -inf, and a masked token's key became NaN."""
    from quickdraft.coupling import _exp1

    e = _exp1(np.array([2**64 - 1, 2**64 - 2**11, 0], dtype=np.uint64))
    assert np.all(np.isfinite(e)) and np.all(e > 0)
    assert e[0] == e[1]  # the one u = 1 draw takes the value of the float below 1


def test_a_masked_token_never_wins_even_with_all_bits_set(monkeypatch):
    """Every draw at u = 1 (the hash forced to all ones): the winner is still an allowed token."""
    import quickdraft.coupling as coupling
    from quickdraft.constraint import masked_token

    monkeypatch.setattr(coupling, "_bits", lambda seed, position, stream, index: np.full(
        np.shape(index), 2**64 - 1, dtype=np.uint64))
    logits = np.array([5.0, 1.0, 0.5, 2.0] * 40, dtype=np.float32)  # 160 ids: several blocks
    allowed = np.zeros(len(logits), dtype=bool)
    allowed[[1, 3, 70]] = True
    for params in (SamplingParams(temperature=1.0, seed=1), SamplingParams(temperature=0.8, top_k=50, seed=2)):
        assert masked_token(logits, allowed, params, 0) in (1, 3, 70), params
