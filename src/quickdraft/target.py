"""The target: the model whose output we must reproduce exactly. It verifies a proposal in one pass.

`LocalTarget` runs the model in this process; a remote node (quickdraft.node) offers the same `verify`
over the network. The speculative loop only ever calls `verify`, so it does not know which one it has.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, Sequence

import numpy as np

from quickdraft.acceptance import accept_prefix
from quickdraft.coupling import coupled_token
from quickdraft.llama_model import LlamaModel
from quickdraft.sampling import SamplingParams, log_softmax

if TYPE_CHECKING:
    from quickdraft.constraint import DraftMasks


@dataclass
class TokenLogprob:
    token: int
    logprob: float
    top: list[tuple[int, float]]  # the most probable alternatives, best first (empty unless asked)


@dataclass
class Verdict:
    """What one verification decided: tokens = accepted draft tokens + the target's own token."""

    n_accepted: int
    tokens: list[int]
    logprobs: list[TokenLogprob] | None = None


class Target(Protocol):
    """What the engine and the loop use of a target, local or remote."""

    name: str
    n_vocab: int
    n_ctx: int
    max_k: int  # the most draft tokens one verification checks exactly on this machine (0: none)
    supports_grammar: bool  # verify honours `allowed` (grammar masks; quickdraft.constraint)

    def start(self, prompt: Sequence[int]) -> None:
        """A request begins with this prompt."""

    def verify(
        self, context: list[int], draft: list[int], sampling: SamplingParams, top_logprobs: int | None = None,
        allowed: "DraftMasks | None" = None,
    ) -> Verdict:
        """Evaluate context + draft in one pass; keep the draft's agreeing prefix and add the target's token.
        allowed: a grammar's masks for the len(draft) + 1 positions; the target's token is then chosen among
        the tokens it allows."""

    def close(self) -> None: ...


def token_logprobs(logits: np.ndarray, tokens: Sequence[int], top_n: int) -> list[TokenLogprob]:
    """Log-probabilities of the model's raw (temperature 1) distribution for each emitted token: sampling
    parameters and a grammar's mask change which token is chosen, not these."""
    out = []
    for row, token in zip(logits, tokens):
        lp = log_softmax(row)
        top: list[tuple[int, float]] = []
        if top_n > 0:
            ids = np.argpartition(-lp, top_n - 1)[:top_n]
            ids = ids[np.argsort(-lp[ids], kind="stable")]
            top = [(int(i), float(lp[i])) for i in ids]
        out.append(TokenLogprob(int(token), float(lp[token]), top))
    return out


class LocalTarget:
    """A target model in this process.

    max_k: the largest K verified bit-exactly here (quickdraft.exactness measures it). fresh_prefill: the
    KV cache is emptied at each request, for a model whose batches round differently from single tokens or
    whose prompt read after a cached prefix (other chunks) rounds differently from a fresh read (the probe's
    prompt_reuse_exact): after a cached prefix its first token would come from another batch shape than a
    fresh prefill's."""

    def __init__(self, model: LlamaModel, *, max_k: int, fresh_prefill: bool = False):
        self.model = model
        self.name = model.name
        self.n_vocab = model.n_vocab
        self.n_ctx = model.n_ctx
        self.max_k = max_k
        self.fresh_prefill = fresh_prefill
        self.supports_grammar = True

    def start(self, prompt: Sequence[int]) -> None:
        if self.fresh_prefill:
            self.model.reset()

    def verify(self, context, draft, sampling, top_logprobs=None, allowed=None) -> Verdict:
        logits = self.model.evaluate(context + draft, len(draft) + 1)

        def own_token(i: int) -> int:  # the target's token at the position of draft[i]
            if allowed is None:
                return coupled_token(logits[i], sampling, len(context) + i)
            return allowed.token(i, logits[i], sampling, len(context) + i)

        n, token = accept_prefix(draft, own_token)
        emitted = draft[:n] + [token]
        lps = token_logprobs(logits, emitted, top_logprobs) if top_logprobs is not None else None
        return Verdict(n, emitted, lps)

    def close(self) -> None:
        self.model.close()
