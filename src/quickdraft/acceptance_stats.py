"""How often each drafter's tokens are accepted, as the adaptive controller (quickdraft.controller) needs to
know it.

A drafter's worth is three numbers per position: p, how often it proposes anything at all (the n-gram
drafter often has no match), a_i, the rate at which draft position i is accepted once the positions before it
were, and r_i, how often a proposal is longer than i tokens (a drafter may stop short of the k it was asked
for: the n-gram drafter drafts only as far as the context backs it; a draft model always gives k). All are
counted per request (`AcceptanceStats`), with older rounds fading, so a request that changes character (a
RAG answer that stops quoting) is followed. The prior of p and a_i is what earlier requests of the engine saw
(`AcceptanceHistory`, shared); optimistic for a drafter never seen, so that every drafter gets tried.

Counts come from verified rounds, where a round decides its positions at once, and from shadow proposals
(`Shadow`): proposals made but not verified, scored token by token against what the target emits. Scoring a
proposal against the emitted tokens is exactly its greedy acceptance; under sampling, with the coupled draws
of quickdraft.coupling, a drafted token is accepted exactly when it is the token the target emits.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Iterator, Sequence

PRIOR_ACCEPTANCE = 0.5
PRIOR_PROPOSAL_RATE = 0.5
PRIOR_WEIGHT = 1.0  # pseudo-rounds the prior counts for in a request
OPTIMISTIC_ACCEPTANCE = 0.9  # the acceptance assumed of a drafter never seen (and of one being probed)
DECAY = 0.9  # per observed round: a round 10 rounds ago counts ~1/3
HISTORY_DECAY = 0.995  # across requests: the prior remembers ~200 rounds


def decided_positions(drafted: int, accepted: int) -> Iterator[tuple[int, bool]]:
    """(position, accepted) for what a verified round decides: positions 0..accepted-1 accepted, position
    `accepted` rejected if it was drafted, the rest never tried."""
    return ((i, i < accepted) for i in range(min(accepted + 1, drafted)))


@dataclass
class AcceptanceStats:
    """One drafter in one request: decayed counts of draft positions tried and accepted, and of proposals
    asked for and made. Position i is tried when the drafter proposed more than i tokens and 0..i-1 were
    accepted. Each new proposal (`begin`) fades the older counts; its positions are scored as they are
    decided (`score`), at once for a verified proposal, token by token for a shadow one."""

    tried: list[float] = field(default_factory=list)
    accepted: list[float] = field(default_factory=list)
    asked: float = 0.0
    proposed: float = 0.0
    # position i >= 1 (index 0 unused): proposals that reached i tokens while allowed more, and those that
    # went on past i
    reached: list[float] = field(default_factory=list)
    went_on: list[float] = field(default_factory=list)

    def begin(self, length: int, cap: int, decay: float = DECAY) -> None:
        """A proposal of `length` tokens, made when `cap` were allowed."""
        self.tried = [x * decay for x in self.tried]
        self.accepted = [x * decay for x in self.accepted]
        self.reached = [x * decay for x in self.reached]
        self.went_on = [x * decay for x in self.went_on]
        self.asked = self.asked * decay + 1
        self.proposed = self.proposed * decay + (1 if length else 0)
        for i in range(1, min(length, cap - 1) + 1):
            while len(self.reached) <= i:
                self.reached.append(0.0)
                self.went_on.append(0.0)
            self.reached[i] += 1
            if length > i:
                self.went_on[i] += 1

    def score(self, position: int, hit: bool) -> None:
        while len(self.tried) <= position:
            self.tried.append(0.0)
            self.accepted.append(0.0)
        self.tried[position] += 1
        if hit:
            self.accepted[position] += 1

    def observe(self, drafted: int, accepted: int, cap: int, decay: float = DECAY) -> None:
        """A verified round of `drafted` tokens when `cap` were allowed: positions 0..accepted-1 accepted,
        position `accepted` rejected if drafted."""
        self.begin(drafted, cap, decay)
        for i, hit in decided_positions(drafted, accepted):
            self.score(i, hit)

    def pooled_rate(self, prior: float, weight: float = PRIOR_WEIGHT) -> float:
        return (sum(self.accepted) + weight * prior) / (sum(self.tried) + weight)

    def position_rates(self, prior: float, n: int, weight: float = PRIOR_WEIGHT) -> list[float]:
        """Acceptance at positions 0..n-1, each shrunk toward this request's pooled rate."""
        pooled = self.pooled_rate(prior, weight)
        rates = []
        for i in range(n):
            tried = self.tried[i] if i < len(self.tried) else 0.0
            ok = self.accepted[i] if i < len(self.accepted) else 0.0
            rates.append((ok + weight * pooled) / (tried + weight))
        return rates

    def reach_rates(self, n: int, weight: float = PRIOR_WEIGHT) -> list[float]:
        """r_0..r_(n-1): the chance that a proposal, when made, is longer than i tokens (r_0 = 1). Each step
        on is a rate shrunk toward 1 (a proposal as long as allowed, as a draft model's always is)."""
        rates = [1.0]
        for i in range(1, n):
            reached = self.reached[i] if i < len(self.reached) else 0.0
            went_on = self.went_on[i] if i < len(self.went_on) else 0.0
            rates.append(rates[-1] * (went_on + weight) / (reached + weight))
        return rates

    def proposal_rate(self, prior: float, weight: float = PRIOR_WEIGHT) -> float:
        return (self.proposed + weight * prior) / (self.asked + weight)


class AcceptanceHistory:
    """Pooled acceptance and proposal rate per drafter over earlier requests: the prior of a new request."""

    def __init__(self):
        self._lock = threading.Lock()
        self._counts: dict[str, list[float]] = {}  # drafter -> [tried, accepted, asked, proposed]

    def begin(self, drafter: str, proposed: bool) -> None:
        with self._lock:
            c = self._counts.setdefault(drafter, [0.0, 0.0, 0.0, 0.0])
            c[:] = [x * HISTORY_DECAY for x in c]
            c[2] += 1
            c[3] += 1 if proposed else 0

    def score(self, drafter: str, hit: bool) -> None:
        with self._lock:
            c = self._counts.setdefault(drafter, [0.0, 0.0, 0.0, 0.0])
            c[0] += 1
            c[1] += 1 if hit else 0

    def prior(self, drafter: str) -> tuple[float, float]:
        """(acceptance, proposal rate). Optimistic for a drafter never seen: it gets tried, then measured."""
        with self._lock:
            counts = self._counts.get(drafter)
        if counts is None:
            return OPTIMISTIC_ACCEPTANCE, 1.0
        tried, accepted, asked, proposed = counts
        a = (accepted + PRIOR_WEIGHT * PRIOR_ACCEPTANCE) / (tried + PRIOR_WEIGHT)
        p = (proposed + PRIOR_WEIGHT * PRIOR_PROPOSAL_RATE) / (asked + PRIOR_WEIGHT)
        return a, p


@dataclass
class Shadow:
    """A proposal made but not verified, scored against what the target emits after `at`."""

    drafter: str
    at: int
    tokens: list[int]
    scored: int = 0

    def score(self, context: Sequence[int], stats: AcceptanceStats, history: AcceptanceHistory) -> bool:
        """Score the positions the context now decides; True once the proposal is decided (miss or end)."""
        end = min(len(self.tokens), len(context) - self.at)
        for i in range(self.scored, end):
            hit = self.tokens[i] == context[self.at + i]
            stats.score(i, hit)
            history.score(self.drafter, hit)
            self.scored = i + 1
            if not hit:
                return True
        return self.scored == len(self.tokens)
