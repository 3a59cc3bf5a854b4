"""Sampling distributions: the same pure functions serve the target and its drafts (which token is drawn
from them is tests/test_coupling.py's subject)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from quickdraft.errors import InvalidRequestError
from quickdraft.sampling import Dist, SamplingParams, distribution, softmax

logit_vectors = st.lists(st.floats(-20, 20), min_size=2, max_size=300).map(lambda x: np.array(x, dtype=np.float32))


def test_greedy_is_argmax():
    logits = np.array([0.1, 3.0, -1.0, 2.9], dtype=np.float32)
    d = distribution(logits, SamplingParams())
    assert d.prob(1) == 1.0 and d.prob(3) == 0.0


@given(logits=logit_vectors, t=st.floats(0.1, 3.0))
def test_temperature_only_is_softmax_of_scaled_logits(logits, t):
    d = distribution(logits, SamplingParams(temperature=t))
    np.testing.assert_allclose(d.to_dense(len(logits)), softmax(logits.astype(np.float64) / t), atol=1e-9)


@given(logits=logit_vectors, k=st.integers(1, 50))
def test_top_k_keeps_the_k_largest(logits, k):
    d = distribution(logits, SamplingParams(temperature=1.0, top_k=k))
    kept = set(int(i) for i in (d.ids if d.ids is not None else np.flatnonzero(d.probs)))
    assert len(kept) == min(k, len(logits))
    threshold = np.sort(logits)[::-1][min(k, len(logits)) - 1]
    assert all(logits[i] >= threshold for i in kept)
    assert abs(d.probs.sum() - 1) < 1e-9


@given(logits=logit_vectors, p=st.floats(0.05, 0.99))
def test_top_p_is_the_smallest_nucleus_reaching_p(logits, p):
    full = softmax(logits.astype(np.float64))
    d = distribution(logits, SamplingParams(temperature=1.0, top_p=p))
    kept = d.ids
    mass = full[kept].sum()
    assert mass >= p - 1e-9
    # minimal: dropping the least probable kept token falls below p
    assert mass - full[kept].min() < p + 1e-9
    # the kept tokens are the most probable ones
    assert full[kept].min() >= np.max(np.delete(full, kept), initial=0.0) - 1e-12


def test_top_p_on_a_full_gemma_sized_vocabulary():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, 262144).astype(np.float32)
    d = distribution(logits, SamplingParams(temperature=0.7, top_p=0.9))
    full = softmax(logits.astype(np.float64) / 0.7)
    order = np.argsort(-full)
    n = int(np.searchsorted(np.cumsum(full[order]), 0.9)) + 1
    assert set(d.ids.tolist()) == set(order[:n].tolist())


def test_min_p_drops_tokens_below_the_fraction_of_the_best():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    d = distribution(logits, SamplingParams(temperature=1.0, min_p=0.2))
    assert sorted(d.ids.tolist()) == [0, 1, 2]
    np.testing.assert_allclose(d.probs.sum(), 1.0)


def test_sparse_dist_knows_its_own_ids():
    d = Dist(np.array([0.25, 0.75]), np.array([7, 42]))
    assert d.prob(42) == 0.75 and d.prob(3) == 0.0
    np.testing.assert_array_equal(np.flatnonzero(d.to_dense(50)), [7, 42])


@pytest.mark.parametrize("bad", [dict(temperature=-1), dict(top_p=-0.1), dict(top_p=1.5), dict(top_k=-2), dict(min_p=2)])
def test_out_of_range_parameters_are_refused(bad):
    with pytest.raises(InvalidRequestError):
        SamplingParams.make(**bad)


@pytest.mark.parametrize("filters", [{}, {"top_p": 0.9}, {"top_k": 40}, {"min_p": 0.1}])
def test_a_tiny_temperature_is_greedy(filters):
    """logits / 1e-320 overflows (inf, then NaN): the race picked a wrong token, or top-p raised."""
    from quickdraft.coupling import coupled_token

    logits = np.random.default_rng(1).normal(0, 4, 50000).astype(np.float32)
    for t in (1e-320, 1e-310, 1e-200, 1e-31):
        params = SamplingParams(temperature=t, seed=5, **filters)
        assert params.greedy and params.temperature == 0.0
        assert all(coupled_token(logits, params, position) == int(np.argmax(logits)) for position in range(4))
    assert not SamplingParams(temperature=1e-3).greedy  # a small but ordinary temperature still samples
