"""The acceptance rule of speculative decoding: pure functions, no models.

Given k draft tokens and the target's view of the k+1 positions they span, decide how many draft tokens to
keep and which token the target adds. Both rules return (n_accepted, next_token); the tokens emitted in the
round are draft[:n_accepted] + [next_token].

Greedy: keep draft tokens while they equal the target's argmax, then add the target's argmax.

Sampling (Leviathan et al. 2023; Chen et al. 2023): accept draft token x with probability
min(1, p(x) / q(x)); on the first rejection draw from normalize(max(p - q, 0)); if every draft token is
accepted draw a bonus token from p at the next position. The emitted tokens are then distributed exactly as
if drawn from the target alone. A drafter without probabilities (n-gram, greedy draft model) has a one-hot q.

Target rows are passed as callables so rows after the first rejection are never computed.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from quickdraft.sampling import Dist


def accept_greedy(draft: Sequence[int], target_argmax: Callable[[int], int]) -> tuple[int, int]:
    """target_argmax(i): the target's argmax at the position of draft[i] (i == len(draft): the bonus)."""
    for i, token in enumerate(draft):
        best = target_argmax(i)
        if token != best:
            return i, best
    return len(draft), target_argmax(len(draft))


def residual(p: Dist, q: Dist, n_vocab: int) -> Dist:
    """normalize(max(p - q, 0)): where to draw from after rejecting a draft token."""
    r = p.to_dense(n_vocab).copy()
    if q.ids is None:
        r -= q.probs[:n_vocab]
    else:
        r[q.ids] -= q.probs
    np.maximum(r, 0.0, out=r)
    total = r.sum()
    if total <= 1e-12:  # p == q up to rounding: the residual is undefined, p itself is the answer
        return p
    support = np.flatnonzero(r)
    return Dist(r[support] / total, support)


def accept_sampled(
    draft: Sequence[int],
    draft_dists: Sequence[Dist] | None,
    target_dist: Callable[[int], Dist],
    n_vocab: int,
    rng: np.random.Generator,
) -> tuple[int, int]:
    """Lossless speculative sampling.

    draft_dists[i] is the distribution draft[i] was drawn from (None: every draft token is one-hot).
    target_dist(i) is the target's sampling distribution at the position of draft[i].
    """
    for i, x in enumerate(draft):
        p = target_dist(i)
        q = draft_dists[i] if draft_dists is not None else Dist.one_hot(x)
        px, qx = p.prob(x), q.prob(x)
        if qx <= 0.0:  # the draft claims it could not have drawn x: treat as a one-hot proposal
            q, qx = Dist.one_hot(x), 1.0
        if rng.random() * qx < px:  # u < p/q, without dividing
            continue
        return i, residual(p, q, n_vocab).sample(rng)
    return len(draft), target_dist(len(draft)).sample(rng)


def expected_accepted(alpha: float, k: int) -> float:
    """Expected tokens per round with k drafts accepted independently with rate alpha (bonus included)."""
    if alpha >= 1.0:
        return float(k + 1)
    return (1.0 - alpha ** (k + 1)) / (1.0 - alpha)
