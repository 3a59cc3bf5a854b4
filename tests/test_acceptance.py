"""The acceptance rule: speculative output must be distributed exactly as the target's own samples."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from quickdraft.acceptance import accept_greedy, accept_sampled, expected_accepted, residual
from quickdraft.sampling import Dist

V = 4


def dists(min_size=V, max_size=V):
    weights = st.lists(st.floats(0.0, 1.0), min_size=min_size, max_size=max_size).filter(lambda w: sum(w) > 0.05)
    return weights.map(lambda w: np.array(w) / np.sum(w))


def test_greedy_keeps_agreeing_prefix_then_target_token():
    target = [5, 6, 7, 8, 9]
    assert accept_greedy([5, 6, 1, 8], lambda i: target[i]) == (2, 7)
    assert accept_greedy([5, 6, 7, 8], lambda i: target[i]) == (4, 9)  # all accepted: bonus token
    assert accept_greedy([], lambda i: target[i]) == (0, 5)  # no draft: a plain decoding step
    assert accept_greedy([1], lambda i: target[i]) == (0, 5)


def test_greedy_stops_evaluating_rows_after_the_first_rejection():
    seen = []

    def argmax(i):
        seen.append(i)
        return [1, 2, 3, 4][i]

    accept_greedy([1, 9, 3], argmax)
    assert seen == [0, 1]


@given(p=dists(), q=dists())
def test_one_step_mixture_is_exactly_the_target(p, q):
    """P(emit x) = q(x) min(1, p(x)/q(x)) + P(reject) residual(x) == p(x), for every x."""
    accept = np.minimum(q, p)  # q(x) min(1, p(x)/q(x)), written without dividing
    p_reject = 1.0 - accept.sum()
    r = residual(Dist(p), Dist(q), V).to_dense(V)
    np.testing.assert_allclose(accept + p_reject * r, p, atol=1e-9)


def simulate(P, Q, k, n_tokens, rng, one_hot_draft=False):
    """Generate n_tokens with rounds of k drafts; the target's distribution at position j is P[j]."""
    out: list[int] = []
    while len(out) < n_tokens:
        pos = len(out)
        draft, draft_dists = [], []
        for i in range(min(k, n_tokens - pos - 1)):
            q = Dist(Q[pos + i])
            draft.append(q.sample(rng))
            draft_dists.append(q)
        n, tok = accept_sampled(
            draft, None if one_hot_draft else draft_dists, lambda i: Dist(P[pos + i]), V, rng
        )
        out.extend(draft[:n] + [tok])
    return tuple(out[:n_tokens])


def total_variation(samples, P, n_tokens):
    counts: dict[tuple, int] = {}
    for s in samples:
        counts[s] = counts.get(s, 0) + 1
    tv = 0.0
    for seq in itertools.product(range(V), repeat=n_tokens):
        expected = np.prod([P[j][t] for j, t in enumerate(seq)])
        tv += abs(counts.get(seq, 0) / len(samples) - expected)
    return tv / 2


@settings(max_examples=8, deadline=None)
@given(P=st.lists(dists(), min_size=3, max_size=3), Q=st.lists(dists(), min_size=3, max_size=3),
       k=st.integers(1, 3), seed=st.integers(0, 2**32 - 1))
def test_speculative_sequences_follow_the_target_distribution(P, Q, k, seed):
    """Empirical joint distribution of 3 generated tokens vs the target's: total variation stays at the
    sampling-noise level (64 cells, 12,000 samples: noise ~0.03; a wrong rule is off by far more)."""
    rng = np.random.default_rng(seed)
    samples = [simulate(P, Q, k, 3, rng) for _ in range(12000)]
    assert total_variation(samples, P, 3) < 0.06


def test_one_hot_drafts_are_lossless_too():
    """n-gram proposals carry no probabilities: q is one-hot on the proposed token."""
    rng = np.random.default_rng(7)
    P = [np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.7, 0.1, 0.1, 0.1]), np.array([0.25, 0.25, 0.25, 0.25])]
    Q = [np.array([0.0, 0.0, 0.0, 1.0]), np.array([0.0, 1.0, 0.0, 0.0]), np.array([1.0, 0.0, 0.0, 0.0])]
    samples = [simulate(P, Q, 2, 3, rng, one_hot_draft=True) for _ in range(12000)]
    assert total_variation(samples, P, 3) < 0.06


def test_a_wrong_rule_is_caught():
    """Guard for the test above: accepting every draft token yields the draft distribution, and the
    total-variation check must notice."""
    rng = np.random.default_rng(3)
    P = [np.array([0.7, 0.1, 0.1, 0.1])] * 3
    Q = [np.array([0.1, 0.1, 0.1, 0.7])] * 3
    samples = [tuple(Dist(Q[j]).sample(rng) for j in range(3)) for _ in range(4000)]
    assert total_variation(samples, P, 3) > 0.3


def test_residual_excludes_overproposed_tokens():
    p = Dist(np.array([0.5, 0.5, 0.0, 0.0]))
    q = Dist(np.array([0.9]), np.array([0]))
    r = residual(p, q, 4)
    assert r.prob(0) == 0.0 and abs(r.prob(1) - 1.0) < 1e-12


def test_expected_accepted_matches_the_closed_form():
    assert expected_accepted(0.0, 4) == 1.0
    assert expected_accepted(1.0, 4) == 5.0
    a, k = 0.6, 3
    assert abs(expected_accepted(a, k) - sum(a**i for i in range(k + 1))) < 1e-12
