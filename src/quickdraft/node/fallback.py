"""A draft node may die, stall or misbehave; the request must not. `FallbackDrafter` turns the draft's
failures into rounds on the target alone.

When the inner drafter raises anything at all (node unreachable, connection dropped, no answer within its
timeout, a node that came back with another vocabulary or protocol, a reply that is not what the protocol
promises, a bug), or returns something that is not a list of at most k token ids, the round proposes
nothing, so the target decodes one token by itself; the failure is logged and counted
(`quickdraft_draft_failures_total`, and each round without the draft in
`quickdraft_draft_fallback_rounds_total`). The draft is tried again after a backoff (1 s, doubling up to
10 s), so drafting resumes on its own once the node is back, within the same request or the next one.
Output is unaffected either way: the target decides every token.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol, Sequence

from quickdraft.drafters import Drafter
from quickdraft.node.metrics import DRAFT_FAILURES, DRAFT_FALLBACK_ROUNDS

log = logging.getLogger("quickdraft.node")


class NodeDrafter(Drafter, Protocol):
    """A drafter whose work happens elsewhere: RemoteDrafter, PipelinedDrafter."""

    def discard(self) -> None:
        """Forget any work in flight (a pipelined prefetch)."""

    def close(self) -> None: ...


class MalformedProposalError(Exception):
    """The inner drafter returned something other than a list of at most k token ids."""


class FallbackDrafter:
    def __init__(self, inner: NodeDrafter, label: str, *, retry_after: float = 1.0, max_retry_after: float = 10.0):
        self.inner = inner
        self.label = label  # the node's address, for logs and metrics
        self.first_retry, self.max_retry = retry_after, max_retry_after
        self._backoff = retry_after
        self._down_until = 0.0  # monotonic time before which the draft is not tried
        self.down = False
        self.failures = self.fallback_rounds = 0

    @property
    def name(self) -> str:
        return self.inner.name

    def start(self, prompt: Sequence[int]) -> None:
        if self._available():
            try:
                self.inner.start(prompt)
            except Exception as e:
                self._failed(e)

    def propose(self, context, k, sampling) -> list[int]:
        if k <= 0:
            return []
        if self._available():
            try:
                tokens = _checked(self.inner.propose(context, k, sampling), k)
            except Exception as e:  # whatever went wrong, the target alone can finish the request
                self._failed(e)
            else:
                if self.down:
                    log.warning("draft node %s is back: drafting resumes", self.label)
                    self.down, self._backoff = False, self.first_retry
                return tokens
        self.fallback_rounds += 1
        DRAFT_FALLBACK_ROUNDS.labels(self.label).inc()
        return []

    def mark_down(self, error: Exception) -> None:
        """The draft is unavailable already (its node was down at start): the target alone until a retry."""
        self._failed(error)

    def _available(self) -> bool:
        return not self.down or time.monotonic() >= self._down_until

    def _failed(self, error: Exception) -> None:
        self.failures += 1
        DRAFT_FAILURES.labels(self.label).inc()
        if not self.down:
            log.warning("draft node %s failed (%s: %s): continuing with the target alone", self.label,
                        type(error).__name__, error)
        else:
            self._backoff = min(self._backoff * 2, self.max_retry)
        self.down = True
        self._down_until = time.monotonic() + self._backoff
        try:
            self.inner.discard()  # a pipelined drafter: forget its pending prefetch
        except Exception:
            pass

    def close(self) -> None:
        self.inner.close()


def _checked(tokens: object, k: int) -> list[int]:
    if not isinstance(tokens, list) or len(tokens) > k or not all(type(t) is int and t >= 0 for t in tokens):
        raise MalformedProposalError(f"expected at most {k} token ids, got {tokens!r:.200}")
    return tokens
