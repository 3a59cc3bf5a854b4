"""The acceptance rule of speculative decoding: a pure function, no models.

Given k draft tokens and the target's own token at each of the k+1 positions they span, keep draft tokens
while they equal the target's, then add the target's token at the first position that differs (or after
the last draft token). The round emits draft[:n_accepted] + [next_token].

One rule serves greedy and sampled decoding. Greedy: the target's token is its argmax. Sampled: it is the
target's coupled draw (quickdraft.coupling), a function of the logits, the seed and the position, so every
emitted token is the token the target alone would have drawn there: the output is the target's own, and its
distribution is exactly the target's, whatever the drafter proposed.

The target's tokens are passed as a callable, so positions after the first mismatch are never computed.
"""

from __future__ import annotations

from typing import Callable, Sequence


def accept_prefix(draft: Sequence[int], target_token: Callable[[int], int]) -> tuple[int, int]:
    """(n_accepted, next_token). target_token(i): the target's token at the position of draft[i]
    (i == len(draft): the position after the draft, the bonus)."""
    for i, token in enumerate(draft):
        own = target_token(i)
        if token != own:
            return i, own
    return len(draft), target_token(len(draft))


def expected_accepted(alpha: float, k: int) -> float:
    """Expected tokens per round with k drafts accepted independently with rate alpha (bonus included)."""
    if alpha >= 1.0:
        return float(k + 1)
    return (1.0 - alpha ** (k + 1)) / (1.0 - alpha)
