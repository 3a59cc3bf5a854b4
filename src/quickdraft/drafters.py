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

    def propose(self, context, k, sampling) -> list[int]:
        if k <= 0 or len(context) <= self.min_n:
            return []
        self._extend_index(context)
        L = len(context)
        for n in range(min(self.max_n, L - 1), self.min_n - 1, -1):
            e = self._index.get(tuple(context[L - n :]))
            if e is not None and e < L:
                return list(context[e : min(e + k, L)])
        return []


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
