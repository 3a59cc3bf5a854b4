"""Drafters: cheap guesses of the next few tokens, behind one small interface.

A drafter sees the committed context (prompt + accepted output) and proposes up to k tokens. It keeps
whatever state it likes between rounds (a KV cache, an n-gram index) and reconciles it with the context it
is given, so the speculative loop never tells it what was rejected.
"""

from __future__ import annotations

from typing import Protocol, Sequence

from quickdraft.coupling import coupled_token
from quickdraft.llama_model import LlamaModel
from quickdraft.sampling import SamplingParams


class Drafter(Protocol):
    name: str

    def start(self, prompt: Sequence[int]) -> None:
        """A new request begins with this prompt."""

    def propose(self, context: list[int], k: int, sampling: SamplingParams) -> list[int]:
        """Up to k tokens that may follow context."""


class NoDrafter:
    """The target alone: proposes nothing, so every round is one ordinary decoding step."""

    name = "none"

    def start(self, prompt: Sequence[int]) -> None:
        pass

    def propose(self, context, k, sampling) -> list[int]:
        return []


# How sure a lookup must be before its token is drafted, per n-gram size n: the continuations seen after the
# n-gram must number at least MIN_SEEN[n], and the most frequent must make up at least MIN_SHARE[n] of them.
# These are llama.cpp's own thresholds for its context n-gram cache (common/ngram-cache.cpp, "lax"): a long
# n-gram seen once is trusted, a single token only when it was followed by the same token twice in three.
MIN_SEEN = {1: 2, 2: 2, 3: 1, 4: 1}
MIN_SHARE = {1: 0.66, 2: 0.5, 3: 0.5, 4: 0.5}


class NgramDrafter:
    """Prompt lookup with counts: what followed the last few tokens earlier in the context, drafted one token
    at a time, and only while the context agrees on it. No model; shines where the output copies the input
    (summaries, RAG, code edits), and stays quiet where it does not.

    For every n-gram of size min_n..max_n the index counts the tokens that followed it. A draft token is the
    most frequent follower (ties: the most recent) of the longest n-gram ending the context (draft included)
    whose followers pass MIN_SEEN and MIN_SHARE; drafting stops at the first position where none does, so a
    proposal is as long as the context backs it, up to k. Short, confident drafts matter because verifying a
    token costs a target pass over the vocabulary (262,144 rows for Gemma), accepted or not.

    The index grows with the context, so a lookup costs O(max_n) dictionary reads, not a scan.
    """

    name = "ngram"

    def __init__(self, max_n: int = 4, min_n: int = 1):
        if not 1 <= min_n <= max_n:
            raise ValueError(f"need 1 <= min_n <= max_n, got min_n={min_n}, max_n={max_n}")
        self.max_n, self.min_n = max_n, min_n
        self._sizes = range(max_n, min_n - 1, -1)  # longest first
        self._index: dict[tuple[int, ...], Followers] = {}
        self._indexed = 0  # the follower at every position below this is counted

    def start(self, prompt: Sequence[int]) -> None:
        self._index = {}
        self._indexed = 0

    def _extend_index(self, context: Sequence[int]) -> None:
        if len(context) < self._indexed:  # the context shrank: a new conversation without start(); rebuild
            self.start(context)
        index = self._index
        for e in range(max(self._indexed, 1), len(context)):  # count context[e] after the n-grams ending there
            token = context[e]
            for n in range(self.min_n, min(self.max_n, e) + 1):
                key = tuple(context[e - n : e])
                followers = index.get(key)
                if followers is None:
                    index[key] = Followers(token)
                else:
                    followers.add(token)
        self._indexed = max(self._indexed, len(context))

    def _next(self, seq: list[int]) -> int | None:
        index = self._index
        for n in self._sizes:
            if n > len(seq):
                continue
            followers = index.get(tuple(seq[-n:]))
            if followers is not None and followers.seen >= MIN_SEEN.get(n, 1) and (
                followers.best_count >= MIN_SHARE.get(n, 0.5) * followers.seen
            ):
                return followers.best
        return None

    def propose(self, context, k, sampling) -> list[int]:
        if k <= 0 or len(context) <= self.min_n:
            return []
        self._extend_index(context)
        seq = list(context[-self.max_n :])
        for _ in range(k):
            token = self._next(seq)
            if token is None:
                break
            seq.append(token)
        return seq[min(self.max_n, len(context)) :]


class Followers:
    """The tokens seen after one n-gram: counts, their total, and the most frequent (ties: the latest)."""

    __slots__ = ("counts", "seen", "best", "best_count")

    def __init__(self, token: int):
        self.counts = {token: 1}
        self.seen = 1
        self.best, self.best_count = token, 1

    def add(self, token: int) -> None:
        count = self.counts.get(token, 0) + 1
        self.counts[token] = count
        self.seen += 1
        if count >= self.best_count:
            self.best, self.best_count = token, count


class ModelDrafter:
    """A small model proposes k tokens autoregressively, one evaluation per token.

    Each token is the draft model's own choice at its position with the request's sampling: the argmax for
    greedy decoding, else the coupled draw (quickdraft.coupling) from the draft's distribution with the
    noise the target uses at that position, so the target accepts it whenever its own draw agrees.
    """

    def __init__(self, model: LlamaModel):
        self.model = model
        self.name = model.name

    def start(self, prompt: Sequence[int]) -> None:
        pass  # the KV cache keeps the longest common prefix with whatever comes next

    def propose(self, context, k, sampling) -> list[int]:
        k = min(k, self.model.n_ctx - len(context))
        seq = list(context)
        for _ in range(k):
            logits = self.model.evaluate(seq, 1)[0]
            seq.append(coupled_token(logits, sampling, len(seq)))
        return seq[len(context) :]
