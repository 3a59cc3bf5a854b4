"""Drafters: cheap guesses of the next few tokens, behind one small interface.

A drafter sees the committed context (prompt + accepted output) and proposes up to k tokens. It keeps
whatever state it likes between rounds (a KV cache, an n-gram index) and reconciles it with the context it
is given, so the speculative loop never tells it what was rejected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np

from quickdraft.llama_model import LlamaModel
from quickdraft.sampling import Dist, SamplingParams, distribution


@dataclass
class Proposal:
    """k draft tokens; dists[i] is the distribution tokens[i] was drawn from (None: all one-hot)."""

    tokens: list[int] = field(default_factory=list)
    dists: list[Dist] | None = None


class Drafter(Protocol):
    name: str

    def start(self, prompt: Sequence[int]) -> None:
        """A new request begins with this prompt."""

    def propose(
        self, context: list[int], k: int, sampling: SamplingParams, rng: np.random.Generator
    ) -> Proposal:
        """Up to k tokens that may follow context."""


class NoDrafter:
    """The target alone: proposes nothing, so every round is one ordinary decoding step."""

    name = "none"

    def start(self, prompt: Sequence[int]) -> None:
        pass

    def propose(self, context, k, sampling, rng) -> Proposal:
        return Proposal()


class NgramDrafter:
    """Prompt lookup: find the longest recent n-gram (max_n down to min_n) that ended the context earlier,
    and propose what followed it. No model; shines where the output copies the input (summaries, RAG, code
    edits).

    The index maps each n-gram to the end of its most recent earlier occurrence and grows with the context,
    so a lookup costs O(max_n), not a scan of the context.
    """

    name = "ngram"

    def __init__(self, max_n: int = 4, min_n: int = 2):
        if not 1 <= min_n <= max_n:
            raise ValueError(f"need 1 <= min_n <= max_n, got min_n={min_n}, max_n={max_n}")
        self.max_n, self.min_n = max_n, min_n
        self._index: dict[tuple[int, ...], int] = {}
        self._indexed = 0  # n-grams ending before this position are in the index

    def start(self, prompt: Sequence[int]) -> None:
        self._index = {}
        self._indexed = 0

    def _extend_index(self, context: Sequence[int]) -> None:
        # index n-grams that end at e for e < len(context): each has at least one token after it
        end = len(context) - 1
        if end + 1 < self._indexed:  # the context shrank: a new conversation without start(); rebuild
            self.start(context)
        index = self._index
        for e in range(max(self._indexed, self.min_n), end + 1):
            for n in range(self.min_n, min(self.max_n, e) + 1):
                index[tuple(context[e - n : e])] = e
        self._indexed = end + 1

    def propose(self, context, k, sampling, rng) -> Proposal:
        if k <= 0 or len(context) <= self.min_n:
            return Proposal()
        self._extend_index(context)
        L = len(context)
        for n in range(min(self.max_n, L - 1), self.min_n - 1, -1):
            e = self._index.get(tuple(context[L - n :]))
            if e is not None and e < L:
                return Proposal(list(context[e : min(e + k, L)]))
        return Proposal()


class ModelDrafter:
    """A small model proposes k tokens autoregressively, one evaluation per token.

    Greedy requests draft the argmax (one-hot). Sampled requests draw from the draft's own sampling
    distribution cut to its `max_candidates` most probable tokens, so the distribution it reports is exactly
    the one it drew from, and small enough to ship to a remote target.
    """

    def __init__(self, model: LlamaModel, max_candidates: int = 32):
        self.model = model
        self.name = model.name
        self.max_candidates = max_candidates

    def start(self, prompt: Sequence[int]) -> None:
        pass  # the KV cache keeps the longest common prefix with whatever comes next

    def propose(self, context, k, sampling, rng) -> Proposal:
        room = self.model.n_ctx - len(context)
        k = min(k, room)
        if k <= 0:
            return Proposal()
        tokens: list[int] = []
        dists: list[Dist] = []
        seq = list(context)
        for _ in range(k):
            logits = self.model.evaluate(seq, 1)[0]
            if sampling.greedy:
                token = int(np.argmax(logits))
            else:
                d = distribution(logits, sampling).top(self.max_candidates)
                token = d.sample(rng)
                dists.append(d)
            tokens.append(token)
            seq.append(token)
        return Proposal(tokens, None if sampling.greedy else dists)
