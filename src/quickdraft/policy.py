"""Which drafter to use and how many tokens to draft, round by round, and every limit on K.

The speculative loop (quickdraft.generate) calls a policy at three visible points of a request:

    policy.start(prompt, sampling)         a request begins (the policy starts its drafters)
    drafter, k = policy.choose(context)    before each round but the first; k == 0: the target alone
    policy.observe(round, context)         after each round but the first, with the context it produced

`FixedPolicy` always answers the same. The adaptive controller (quickdraft.controller) learns the answer
online; whatever extra work it does (scoring cheap shadow proposals, say) it does inside these calls.

K, the number of draft tokens a round may verify, is limited in one place, here:
- by the user: `check_k` (an integer in [1, MAX_K]);
- by the target: `Target.max_k`, the largest K whose verification this machine computes exactly like
  one-token decoding (quickdraft.exactness); `cap_k` applies it;
- per round, by the loop: never past max_tokens or the context (`round_k`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, Sequence

from quickdraft.drafters import Drafter
from quickdraft.errors import InvalidRequestError
from quickdraft.sampling import SamplingParams

if TYPE_CHECKING:
    from quickdraft.generate import Round

MAX_K = 16  # the most draft tokens a round may verify (each K up to it is probed for exactness at load)
DEFAULT_K = 4  # a fixed drafter's K when none is given
AUTO_MAX_K = 16  # the largest K the adaptive controller considers


def check_k(k: object) -> int:
    if not isinstance(k, int) or isinstance(k, bool) or k < 1 or k > MAX_K:
        raise InvalidRequestError(f"draft tokens per round (K) must be an integer in [1, {MAX_K}], got {k!r}")
    return k


def cap_k(k: int, target_max_k: int) -> int:
    """K for a request: what was asked, within what the target verifies exactly (0: no speculation)."""
    return max(0, min(k, target_max_k))


def round_k(k: int, *, generated: int, max_new_tokens: int, context_len: int, n_ctx: int) -> int:
    """K for one round. The first round only prefills the prompt and takes the target's first token, exactly
    as the target alone does. After it, a round emits at most k + 1 tokens: never more than max_new_tokens
    in all, and never a context longer than n_ctx (the target alone stops there too)."""
    if generated == 0:
        return 0
    return max(0, min(k, max_new_tokens - generated - 1, n_ctx - context_len - 1))


class Policy(Protocol):
    drafters: Sequence[Drafter]  # every drafter the policy may choose

    def start(self, prompt: Sequence[int], sampling: SamplingParams) -> None:
        """A new request: reset per-request state and start each drafter on the prompt."""

    def choose(self, context: Sequence[int]) -> tuple[Drafter, int]:
        """The drafter and K for the next round (K == 0: the target alone this round)."""

    def observe(self, outcome: "Round", context: Sequence[int]) -> None:
        """The outcome of a round (not the prefill), and the context including the tokens it emitted."""

    def describe(self) -> dict: ...


class FixedPolicy:
    """The same drafter and K every round (K == 0: the target alone)."""

    def __init__(self, drafter: Drafter, k: int):
        self.drafter, self.k = drafter, k
        self.drafters = [drafter]

    def start(self, prompt: Sequence[int], sampling: SamplingParams) -> None:
        self.drafter.start(prompt)

    def choose(self, context: Sequence[int]) -> tuple[Drafter, int]:
        return self.drafter, self.k

    def observe(self, outcome: "Round", context: Sequence[int]) -> None:
        pass

    def describe(self) -> dict:
        return {"policy": "fixed", "drafter": self.drafter.name, "k": self.k}
