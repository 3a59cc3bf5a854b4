"""Which drafter to use and how many tokens to draft, round by round.

`FixedPolicy` always answers the same. The adaptive controller (quickdraft.controller) learns it online.
Both see every round's outcome through `observe`, so the loop treats them alike.
"""

from __future__ import annotations

from typing import Protocol

from quickdraft.drafters import Drafter


class Policy(Protocol):
    def start(self) -> None:
        """A new request."""

    def choose(self) -> tuple[Drafter, int]:
        """The drafter and k for the next round (k == 0: the target alone this round)."""

    def observe(self, drafter: Drafter, k: int, drafted: int, accepted: int, draft_s: float, verify_s: float) -> None:
        """The outcome of a round: k asked, drafted proposed, accepted kept, and what it cost."""


class FixedPolicy:
    def __init__(self, drafter: Drafter, k: int):
        self.drafter, self.k = drafter, k

    @property
    def drafters(self) -> list[Drafter]:
        return [self.drafter]

    def start(self) -> None:
        pass

    def choose(self) -> tuple[Drafter, int]:
        return self.drafter, self.k

    def observe(self, drafter, k, drafted, accepted, draft_s, verify_s) -> None:
        pass

    def describe(self) -> dict:
        return {"policy": "fixed", "drafter": self.drafter.name, "k": self.k}
