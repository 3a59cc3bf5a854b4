import pytest

from quickdraft.drafters import NgramDrafter
from quickdraft.sampling import SamplingParams

G = SamplingParams()


def propose(d, ctx, k):
    return d.propose(list(ctx), k, G)


def test_proposes_what_followed_the_longest_earlier_match():
    d = NgramDrafter(max_n=3, min_n=1)
    d.start([])
    #        0  1  2  3  4  5  6  7  8
    ctx = [1, 2, 3, 4, 5, 9, 2, 3]
    assert propose(d, ctx, 3) == [4, 5, 9]


def test_prefers_the_most_recent_occurrence():
    d = NgramDrafter(max_n=2, min_n=2)
    d.start([])
    ctx = [7, 8, 1, 7, 8, 2, 0, 7, 8]
    assert propose(d, ctx, 2) == [2, 0]


def test_longer_match_beats_a_more_recent_shorter_one():
    d = NgramDrafter(max_n=3, min_n=1)
    d.start([])
    ctx = [1, 2, 3, 50, 9, 3, 60, 1, 2, 3]
    assert propose(d, ctx, 1) == [50]


def test_no_match_proposes_nothing():
    d = NgramDrafter(max_n=3, min_n=2)
    d.start([])
    assert propose(d, [1, 2, 3, 4, 5], 4) == []


def test_index_grows_with_the_context_and_resets_on_a_new_request():
    d = NgramDrafter(max_n=2, min_n=2)
    d.start([])
    ctx = [1, 2, 3]
    assert propose(d, ctx, 2) == []
    ctx += [1, 2]
    assert propose(d, ctx, 2) == [3, 1]
    d.start([5, 6])
    assert propose(d, [5, 6, 7, 5, 6], 1) == [7]


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError):
        NgramDrafter(max_n=1, min_n=2)
