"""The acceptance rule: keep the draft's prefix that agrees with the target's own tokens, then add the
target's token. (That the target's own tokens are distributed as the target's samples is tested in
tests/test_coupling.py.)"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from quickdraft.acceptance import accept_prefix, expected_accepted


def test_keeps_agreeing_prefix_then_target_token():
    target = [5, 6, 7, 8, 9]
    assert accept_prefix([5, 6, 1, 8], lambda i: target[i]) == (2, 7)
    assert accept_prefix([5, 6, 7, 8], lambda i: target[i]) == (4, 9)  # all accepted: bonus token
    assert accept_prefix([], lambda i: target[i]) == (0, 5)  # no draft: a plain decoding step
    assert accept_prefix([1], lambda i: target[i]) == (0, 5)


def test_stops_asking_for_target_tokens_after_the_first_mismatch():
    seen = []

    def own(i):
        seen.append(i)
        return [1, 2, 3, 4][i]

    accept_prefix([1, 9, 3], own)
    assert seen == [0, 1]


@given(target=st.lists(st.integers(0, 5), min_size=9, max_size=9), draft=st.lists(st.integers(0, 5), max_size=8))
def test_emitted_tokens_are_always_the_targets_own(target, draft):
    """Whatever the draft, the round emits target[0..n]: the draft only decides how many come at once."""
    n, token = accept_prefix(draft, lambda i: target[i])
    assert draft[:n] + [token] == target[: n + 1]
    assert n == len(draft) or draft[n] != target[n]


def test_expected_accepted_matches_the_closed_form():
    assert expected_accepted(0.0, 4) == 1.0
    assert expected_accepted(1.0, 4) == 5.0
    a, k = 0.6, 3
    assert abs(expected_accepted(a, k) - sum(a**i for i in range(k + 1))) < 1e-12
