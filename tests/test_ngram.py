import random

import pytest

from quickdraft.drafters import MIN_SEEN, MIN_SHARE, NgramDrafter
from quickdraft.sampling import SamplingParams

G = SamplingParams()


def propose(d, ctx, k):
    return d.propose(list(ctx), k, G)


def test_proposes_what_followed_the_longest_earlier_match():
    d = NgramDrafter(max_n=3, min_n=1)
    d.start([])
    ctx = [1, 2, 3, 4, 5, 9, 1, 2, 3]
    # (1, 2, 3) was followed by 4 once, (2, 3, 4) by 5, (3, 4, 5) by 9: a 3-gram seen once is trusted
    assert propose(d, ctx, 3) == [4, 5, 9]


def test_the_most_frequent_follower_wins_and_ties_go_to_the_latest():
    d = NgramDrafter(max_n=2, min_n=2)
    d.start([])
    ctx = [7, 8, 1, 7, 8, 2, 0, 7, 8, 2, 5, 7, 8, 1, 7, 8]
    # (7, 8) was followed by 1, 2, 2, 1: a tie, and 1 came last
    assert propose(d, ctx, 1) == [1]
    ctx = [7, 8, 1, 7, 8, 2, 0, 7, 8, 2, 5, 7, 8]
    # 1, 2, 2: 2 is the most frequent though 1 came first
    assert propose(d, ctx, 1) == [2]


def test_longer_match_beats_a_more_frequent_shorter_one():
    d = NgramDrafter(max_n=3, min_n=1)
    d.start([])
    ctx = [1, 2, 3, 50, 9, 3, 60, 7, 3, 60, 1, 2, 3]
    # 3 alone was followed by 60 twice and 50 once; (1, 2, 3) by 50
    assert propose(d, ctx, 1) == [50]


def test_an_unsure_lookup_drafts_nothing():
    d = NgramDrafter(max_n=2, min_n=1)
    d.start([])
    # 5 was followed by 1, 2 and 3: no follower has the share a single token needs, no 2-gram repeats
    assert propose(d, [5, 1, 5, 2, 5, 3, 4, 5], 4) == []
    # once 5 -> 1 is two of three, it is drafted
    d.start([])
    assert propose(d, [5, 1, 5, 2, 5, 1, 4, 5], 1) == [1]
    # a single token or a 2-gram followed once is not enough, a 3-gram is
    d.start([])
    assert propose(d, [3, 4, 6, 9, 3, 4], 1) == []
    d3 = NgramDrafter(max_n=3, min_n=1)
    d3.start([])
    assert propose(d3, [2, 3, 4, 6, 9, 2, 3, 4], 1) == [6]


def test_no_match_proposes_nothing():
    d = NgramDrafter(max_n=3, min_n=2)
    d.start([])
    assert propose(d, [1, 2, 3, 4, 5], 4) == []


def test_drafts_continue_through_their_own_tokens_up_to_k():
    d = NgramDrafter(max_n=3, min_n=3)
    d.start([])
    ctx = [1, 2, 3, 4, 5, 6, 1, 2, 3]
    assert propose(d, ctx, 3) == [4, 5, 6]
    assert propose(d, ctx, 10) == [4, 5, 6, 1, 2, 3, 4, 5, 6, 1]  # a loop is followed round and round
    assert propose(d, ctx, 0) == []


def test_index_grows_with_the_context_and_resets_on_a_new_request():
    d = NgramDrafter(max_n=3, min_n=3)
    d.start([])
    ctx = [1, 2, 3, 4]
    assert propose(d, ctx, 2) == []
    ctx += [1, 2, 3]
    assert propose(d, ctx, 2) == [4, 1]
    d.start([5, 6])
    assert propose(d, [5, 6, 7, 8, 5, 6, 7], 1) == [8]
    # a shorter context without start(): the index is rebuilt, nothing of the old one is proposed
    assert propose(d, [1, 2, 9, 1, 2, 9], 1) == [1]


def reference_proposal(ctx, k, max_n, min_n):
    """The rule in plain words, by scanning the context: slow, obviously right."""
    seq = list(ctx)
    out = []
    while len(out) < k:
        token = None
        for n in range(max_n, min_n - 1, -1):
            if n > len(seq):
                continue
            key = seq[-n:]
            followers = [ctx[e] for e in range(n, len(ctx)) if ctx[e - n : e] == key]
            if len(followers) < MIN_SEEN[n]:
                continue
            counts = {t: followers.count(t) for t in followers}
            top = max(counts.values())
            if top < MIN_SHARE[n] * len(followers):
                continue
            token = [t for t in followers if counts[t] == top][-1]  # ties: the latest
            break
        if token is None:
            break
        seq.append(token)
        out.append(token)
    return out


@pytest.mark.parametrize("seed", range(40))
def test_matches_a_scan_of_the_context(seed):
    rng = random.Random(seed)
    d = NgramDrafter(max_n=4, min_n=1)
    d.start([])
    ctx = []
    for _ in range(12):  # the context grows between lookups, as it does during generation
        ctx += [rng.randrange(6) for _ in range(rng.randrange(1, 8))]
        k = rng.randrange(1, 9)
        assert propose(d, ctx, k) == reference_proposal(ctx, k, 4, 1)


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError):
        NgramDrafter(max_n=1, min_n=2)
