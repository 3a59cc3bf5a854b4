"""Pipelining: the draft drafts round n+1 while the target verifies round n.

`PipelinedDrafter` wraps a drafter whose work happens elsewhere (a draft node). Right after it hands out a
proposal P for context C, it asks the inner drafter, in a background thread, for k+1 tokens after C + P:
that is the bet that the target accepts all of P; the first of those tokens is the draft's guess of the
target's own (bonus) token and the rest are the next round's draft. The loop meanwhile sends P to the
target. At the next round the context is C' = C + accepted + the target's token:

- if C' lies along C + P + prefetched (everything accepted and the guess was right), the next proposal is
  the prefetched tokens that follow C', and the draft node's work was hidden behind the target's;
- otherwise the prefetch is stale: it is discarded (counted in `stale`), and the proposal is drafted now,
  from C', as without pipelining. The node re-syncs by itself: the next request's base/extend delta drops
  the stale tokens.

Proposals stay exact: a prefetched token was drafted from exactly the context it is used in. The inner
drafter is only ever called from one thread at a time (the background call is always collected first).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Sequence

from quickdraft.drafters import Drafter, Proposal


class PipelinedDrafter:
    def __init__(self, inner: Drafter):
        self.inner = inner
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="draft-prefetch")
        self._pending: Future | None = None
        self._assumed: list[int] = []  # the context the pending prefetch drafts after
        self.hits = self.stale = 0

    @property
    def name(self) -> str:
        return self.inner.name

    def start(self, prompt: Sequence[int]) -> None:
        self.discard()
        self.inner.start(prompt)

    def discard(self) -> None:
        """Drop the pending prefetch (waiting for it: the inner drafter is busy until it returns)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            try:
                pending.result()
            except Exception:
                pass

    def propose(self, context, k, sampling, rng) -> Proposal:
        if k <= 0:
            return Proposal()  # a target-alone round: the prefetch may still fit the next one
        proposal = self._prefetched(context, k)
        if len(proposal.tokens) < k:  # nothing (or too little) prefetched for this context: draft the rest now
            more = self.inner.propose(list(context) + proposal.tokens, k - len(proposal.tokens), sampling, rng)
            proposal = _concat(proposal, more)
        self._assumed = list(context) + proposal.tokens
        self._pending = self._executor.submit(self.inner.propose, self._assumed, k + 1, sampling, rng)
        return proposal

    def _prefetched(self, context: Sequence[int], k: int) -> Proposal:
        """The prefetched tokens that continue `context`, at most k; empty if the prefetch is stale."""
        pending, self._pending = self._pending, None
        if pending is None:
            return Proposal()
        ahead = pending.result()  # a failed prefetch raises here, for the caller's fault handling
        assumed, n = self._assumed, len(self._assumed)
        decided = list(context[n:])
        if len(context) >= n and context[:n] == assumed and decided == ahead.tokens[: len(decided)]:
            start = len(decided)
            tokens = ahead.tokens[start : start + k]
            if tokens:
                self.hits += 1
                dists = ahead.dists[start : start + k] if ahead.dists is not None else None
                return Proposal(tokens, dists)
        self.stale += 1
        return Proposal()

    def close(self) -> None:
        self.discard()
        self._executor.shutdown(wait=False)


def _concat(a: Proposal, b: Proposal) -> Proposal:
    if not a.tokens:
        return b
    if a.dists is None and b.dists is None:
        dists = None
    else:
        from quickdraft.sampling import Dist

        da = a.dists or [Dist.one_hot(t) for t in a.tokens]
        db = b.dists or [Dist.one_hot(t) for t in b.tokens]
        dists = list(da) + list(db)
    return Proposal(a.tokens + b.tokens, dists)
