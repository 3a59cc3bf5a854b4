"""The target: the model whose output we must reproduce exactly. It verifies a proposal in one pass.

`LocalTarget` runs the model in this process; a remote node (quickdraft.node) offers the same `verify`
over the network. The speculative loop only ever calls `verify`, so it does not know which one it has.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from quickdraft.acceptance import accept_greedy, accept_sampled
from quickdraft.drafters import Proposal
from quickdraft.llama_model import LlamaModel
from quickdraft.sampling import SamplingParams, distribution, log_softmax


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
    name: str
    n_vocab: int
    n_ctx: int

    def verify(
        self,
        context: list[int],
        proposal: Proposal,
        sampling: SamplingParams,
        rng: np.random.Generator,
        top_logprobs: int | None = None,
    ) -> Verdict: ...


def token_logprobs(logits: np.ndarray, tokens: Sequence[int], top_n: int) -> list[TokenLogprob]:
    """Log-probabilities of the model's raw (temperature 1) distribution for each emitted token."""
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
    """A target model in this process."""

    def __init__(self, model: LlamaModel):
        self.model = model
        self.name = model.name
        self.n_vocab = model.n_vocab
        self.n_ctx = model.n_ctx
        self.max_k = 32  # the largest K verified bit-exactly here; Engine.load probes it (engine.exact_max_k)
        self.fresh_prefill = False  # True: no prompt cache, when batches round differently from single tokens

    def verify(self, context, proposal, sampling, rng, top_logprobs=None) -> Verdict:
        draft = proposal.tokens
        logits = self.model.evaluate(context + draft, len(draft) + 1)
        if sampling.greedy:
            n, token = accept_greedy(draft, lambda i: int(np.argmax(logits[i])))
        else:
            n, token = accept_sampled(
                draft, proposal.dists, lambda i: distribution(logits[i], sampling), self.n_vocab, rng
            )
        emitted = draft[:n] + [token]
        lps = token_logprobs(logits, emitted, top_logprobs) if top_logprobs is not None else None
        return Verdict(n, emitted, lps)
