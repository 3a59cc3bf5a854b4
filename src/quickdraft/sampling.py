"""Sampling parameters and the distributions they turn logits into. Pure functions over numpy arrays.

The order is fixed and documented, because the target and its drafts must apply the same one:
logits / temperature -> top_k -> softmax -> top_p -> min_p -> renormalise. temperature == 0 means greedy
(argmax), and so does any temperature below MIN_TEMPERATURE; top_p == 0 keeps the most probable token alone
(the nucleus always holds at least one). Which token is drawn from a distribution is quickdraft.coupling's business.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from quickdraft.errors import InvalidRequestError

# A temperature below this is greedy (it is stored as 0). Why: logits / T overflows float64 for tiny T (a logit of
# 100 at T = 1e-307 is inf, and inf - inf is NaN: a wrong token, or an exception with top-p/top-k/min-p), and
# already at this T the race (coupling.py) picks the argmax: two float32 logits above 1e-21 in size that differ
# at all differ by more than 40 T, more than the race's noise can make up; only exact ties could go another way.
MIN_TEMPERATURE = 1e-30


class SamplingParams(BaseModel):
    """How the next token is chosen. Defaults: greedy."""

    model_config = ConfigDict(frozen=True)

    temperature: float = Field(0.0, ge=0.0, le=100.0)
    top_k: int = Field(0, ge=0, description="0 = off")
    top_p: float = Field(1.0, ge=0.0, le=1.0, description="0 keeps only the most probable token (as llama.cpp)")
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    seed: int | None = None

    @field_validator("temperature")
    @classmethod
    def _tiny_is_greedy(cls, value: float) -> float:
        return 0.0 if 0.0 <= value < MIN_TEMPERATURE else value

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @classmethod
    def make(cls, **kwargs) -> "SamplingParams":
        """Build from user input, turning validation failures into InvalidRequestError."""
        from pydantic import ValidationError

        try:
            return cls(**{k: v for k, v in kwargs.items() if v is not None})
        except ValidationError as e:
            raise InvalidRequestError(str(e)) from None


@dataclass(frozen=True)
class Dist:
    """A probability distribution over token ids.

    Sparse when `ids` is given (probs[i] is the probability of ids[i]); dense when `ids` is None
    (probs is indexed by token id).
    """

    probs: np.ndarray
    ids: np.ndarray | None = None

    def prob(self, token: int) -> float:
        if self.ids is None:
            return float(self.probs[token]) if 0 <= token < len(self.probs) else 0.0
        hit = np.flatnonzero(self.ids == token)
        return float(self.probs[hit[0]]) if len(hit) else 0.0

    def to_dense(self, n_vocab: int) -> np.ndarray:
        if self.ids is None:
            return self.probs.astype(np.float64, copy=False)
        dense = np.zeros(n_vocab, dtype=np.float64)
        dense[self.ids] = self.probs
        return dense


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - np.max(x))
    return e / e.sum()


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64, copy=False)
    m = np.max(x)
    return x - (m + np.log(np.exp(x - m).sum()))


def _nucleus(probs: np.ndarray, top_p: float) -> np.ndarray:
    """Indices of the smallest set of most probable entries whose mass reaches top_p.

    Sorting 262,144 entries costs milliseconds; the nucleus is usually small, so look at a growing top slice
    (argpartition) until it holds enough mass, and sort only that.
    """
    n = len(probs)
    m = 64
    while True:
        m = min(m, n)
        cand = np.argpartition(-probs, m - 1)[:m] if m < n else np.arange(n)
        if m == n or probs[cand].sum() >= top_p:
            break
        m *= 8
    cand = cand[np.argsort(-probs[cand], kind="stable")]
    cum = np.cumsum(probs[cand])
    # keep entries until the mass before them already reaches top_p
    n_keep = int(np.searchsorted(cum, top_p, side="left")) + 1
    return cand[: min(n_keep, len(cand))]


def distribution(logits: np.ndarray, params: SamplingParams) -> Dist:
    """The distribution the next token is drawn from, given raw logits and the sampling parameters."""
    if params.greedy:
        return Dist(np.ones(1), np.array([int(np.argmax(logits))]))
    x = np.asarray(logits, dtype=np.float64) / params.temperature
    ids = None
    if params.top_k and params.top_k < len(x):
        ids = np.argpartition(-x, params.top_k - 1)[: params.top_k]
        x = x[ids]
    p = softmax(x)
    if params.top_p < 1.0:
        keep = _nucleus(p, params.top_p)
        ids = keep if ids is None else ids[keep]
        p = p[keep]
    if params.min_p > 0.0:
        keep = np.flatnonzero(p >= params.min_p * p.max())
        ids = keep if ids is None else ids[keep]
        p = p[keep]
    return Dist(p / p.sum(), ids)
