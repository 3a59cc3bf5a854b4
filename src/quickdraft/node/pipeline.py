"""Pipelining: the draft drafts round n+1 while the target verifies round n.

`PipelinedDrafter` wraps a drafter whose work happens elsewhere (a draft node). Right after it hands out a
proposal P for context C, it asks the inner drafter, in a background thread, for k+1 tokens after C + P:
that is the bet that the target accepts all of P; the first of those tokens is the draft's guess of the
target's own (bonus) token and the rest are the next round's draft. The loop meanwhile sends P to the
target. What it keeps is a chain: C, then tokens each drafted from the chain before it (P, then the
prefetched ones). At the next round the context is C' = C + accepted + the target's token:

- if C' lies along the chain (everything accepted and the guess was right), the next proposal is the chain's
  tokens after C', and the draft node's work was hidden behind the target's;
- otherwise the chain is stale: it is discarded (counted in `stale`), and the proposal is drafted now, from
  C', as without pipelining. The node re-syncs by itself: the next request's base/extend delta drops the
  stale tokens.

Proposals stay exact and RNG-free: a drafted token is a function of the context it was drafted after and
the request's sampling (its seed: quickdraft.coupling), and a chain token is only used after exactly that
context, with that sampling. So a proposal served from the chain is the one the inner drafter would make
now; a prefetch that is never used changes nothing (nothing is consumed by drafting), and the target's
output does not depend on pipelining at all. The inner drafter is only ever called from one thread at a time
(the background call is always collected first).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Sequence

from quickdraft.node.remote import RemoteDrafter
from quickdraft.sampling import SamplingParams


@dataclass
class _Chain:
    tokens: list[int]  # a context, then tokens each drafted from the chain before it
    drafted_from: int  # tokens[drafted_from:] were drafted
    sampling: SamplingParams

    def after(self, context: Sequence[int], sampling: SamplingParams, k: int) -> list[int] | None:
        """The chain's next k tokens after `context`, or None where the context leaves the chain."""
        n = len(context)
        if sampling != self.sampling or not self.drafted_from <= n <= len(self.tokens):
            return None
        if self.tokens[:n] != list(context):
            return None
        return self.tokens[n : n + k]


class PipelinedDrafter:
    def __init__(self, inner: RemoteDrafter):
        self.inner = inner
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="draft-prefetch")
        self._pending: tuple[_Chain, Future] | None = None  # the chain so far and the prefetch extending it
        self._chain: _Chain | None = None
        self.hits = self.stale = 0

    @property
    def name(self) -> str:
        return self.inner.name

    def start(self, prompt: Sequence[int]) -> None:
        self.discard()
        self.inner.start(prompt)

    def discard(self) -> None:
        """Drop the chain and the pending prefetch (waiting for it: the inner drafter is busy until it
        returns)."""
        pending, self._pending, self._chain = self._pending, None, None
        if pending is not None:
            try:
                pending[1].result()
            except Exception:
                pass

    def propose(self, context, k, sampling) -> list[int]:
        if k <= 0:
            return []  # a target-alone round: the chain may still fit the next one
        tokens = self._known(context, k, sampling)
        if len(tokens) < k:  # nothing (or too little) known after this context: draft the rest now
            tokens = tokens + self.inner.propose(list(context) + tokens, k - len(tokens), sampling)
        head = _Chain(list(context) + tokens, len(context), sampling)
        self._pending = head, self._executor.submit(self.inner.propose, head.tokens, k + 1, sampling)
        return tokens

    def _known(self, context: Sequence[int], k: int, sampling: SamplingParams) -> list[int]:
        """The chain's tokens that continue `context`, at most k; empty if the chain is stale."""
        pending, self._pending = self._pending, None
        if pending is not None:
            head, future = pending
            ahead = future.result()  # a failed prefetch raises here, for the caller's fault handling
            self._chain = _Chain(head.tokens + ahead, head.drafted_from, head.sampling)
        if self._chain is None:
            return []
        tokens = self._chain.after(context, sampling, k)
        if tokens is None:
            self.stale += 1
            self._chain = None
            return []
        if tokens:
            self.hits += 1
        return tokens

    def close(self) -> None:
        self.discard()
        self._executor.shutdown(wait=False)
        self.inner.close()
