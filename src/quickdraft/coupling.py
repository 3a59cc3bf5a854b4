"""Drafter-invariant sampling: the token at each position is a function of (logits, seed, position).

Sampled decoding draws the token at position t by an exponential race (the Gumbel-max trick in another
form): every token id i gets noise E_i ~ Exp(1), and the token is argmin_i E_i / p_i, which is distributed
exactly as p. The noise is not drawn from a stateful generator but computed from (seed, t, i) by a counter-
based hash, so:

- the target's token at t depends only on the prefix, the seed and t: not on the drafter, K, how many rounds
  came before, the controller's choices, pipelining or which machine ran what;
- a draft model that races its own distribution with the same noise proposes exactly the target's token
  whenever the two races agree, which they do with probability >= (1 - TV) / (1 + TV) (Daliri, Musco,
  Suresh 2024, "Coupling without Communication and Drafter-Invariant Speculative Decoding");
- verification is the greedy rule: keep draft tokens while they equal the target's token at their
  position. Drafts travel as token ids alone.

The race over a 262,144-token vocabulary is made cheap without changing its result. Ids are grouped in
blocks of BLOCK; a block's noise is generated as its minimum M_B ~ Exp(BLOCK), the index that holds it, and
M_B + Exp(1) for the others, which is exactly BLOCK independent Exp(1) draws (memorylessness). No token of a
block can score above max_logit_B - log M_B, so only the blocks whose bound beats the best score found so
far need their tokens' noise: a few hundred tokens, not 262,144 (about 1 ms a position here). `race_all` is the plain race over every id, which
the tests compare with.
"""

from __future__ import annotations

import numpy as np

from quickdraft.sampling import SamplingParams, distribution

BLOCK = 64
FIRST_BLOCKS = 32  # the race starts with the blocks of highest bound: the winner is nearly always there
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_TOKEN, _BLOCK_MIN, _BLOCK_ARGMIN = 1, 2, 3  # independent streams of the hash


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, elementwise on uint64 (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def _bits(seed: int, position: int, stream: int, index: np.ndarray) -> np.ndarray:
    """64 pseudo-random bits for each index: a pure function of (seed, position, stream, index)."""
    seed_key = int(_mix(np.array([seed % 2**64], dtype=np.uint64))[0])
    key = np.array([(seed_key + (position % 2**64) * 0x9E3779B97F4A7C15 + stream) % 2**64], dtype=np.uint64)
    return _mix(_mix(key) + (index.astype(np.uint64) + np.uint64(1)) * _GOLDEN)


_U_MAX = 1.0 - 2.0**-53  # the largest float64 below 1


def _exp1(bits: np.ndarray) -> np.ndarray:
    """Exp(1) from 53 random bits: -log(u) with u uniform on (0, 1), never 0. u = 1 (all bits set) would give
    noise 0, whose log is -inf: a masked token's key -inf - (-inf) would be NaN, which argmax picks (a token the
    grammar forbids). u = 1 is moved to the float just below it, a change of 2^-53 in one draw's probability."""
    u = ((bits >> np.uint64(11)).astype(np.float64) + 1.0) * 2.0**-53
    return -np.log(np.minimum(u, _U_MAX))


def _block_noise(seed: int, position: int, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(minimum noise of each block, the index within the block that holds it)."""
    minimum = _exp1(_bits(seed, position, _BLOCK_MIN, blocks)) / BLOCK
    holder = (_bits(seed, position, _BLOCK_ARGMIN, blocks) % np.uint64(BLOCK)).astype(np.int64)
    return minimum, holder


def exponentials(seed: int, position: int, ids: np.ndarray) -> np.ndarray:
    """Exp(1) noise of the given token ids at a position: independent across ids, the same for an id whatever
    other ids are asked for alongside it."""
    ids = np.asarray(ids, dtype=np.int64)
    minimum, holder = _block_noise(seed, position, ids // BLOCK)
    rest = _exp1(_bits(seed, position, _TOKEN, ids))
    return np.where(ids % BLOCK == holder, minimum, minimum + rest)


def race(scores: np.ndarray, ids: np.ndarray, seed: int, position: int) -> int:
    """The winner among `ids` with log-weights `scores` (any additive constant): argmax score - log E."""
    keys = scores - np.log(exponentials(seed, position, ids))
    return int(ids[int(np.argmax(keys))])


def race_all(scores: np.ndarray, seed: int, position: int) -> int:
    """The race over every id, computed plainly (what `race_dense` computes faster)."""
    return race(np.asarray(scores, dtype=np.float64), np.arange(len(scores)), seed, position)


def race_dense(logits: np.ndarray, temperature: float, seed: int, position: int) -> int:
    """The winner of the race over every id with scores logits / temperature (the same as `race_all`),
    evaluating only the blocks that could hold it."""
    n = len(logits)
    n_blocks = -(-n // BLOCK)
    if n_blocks * BLOCK != n:
        logits = np.concatenate([logits, np.full(n_blocks * BLOCK - n, -np.inf, dtype=logits.dtype)])
    rows = logits.reshape(n_blocks, BLOCK)
    minimum, _ = _block_noise(seed, position, np.arange(n_blocks))
    # no token of block B scores above bound[B] (its noise is at least the block's minimum)
    bound = np.maximum.reduceat(logits, np.arange(0, len(logits), BLOCK)).astype(np.float64) / temperature
    bound -= np.log(minimum)
    best_id, best = -1, -np.inf
    # the most promising blocks first, then every block that can still beat the best score found
    blocks = np.argpartition(-bound, FIRST_BLOCKS)[:FIRST_BLOCKS] if n_blocks > FIRST_BLOCKS else np.arange(n_blocks)
    while len(blocks):
        ids = (blocks[:, None] * BLOCK + np.arange(BLOCK)).ravel()
        keys = rows[blocks].ravel().astype(np.float64) / temperature - np.log(exponentials(seed, position, ids))
        i = int(np.argmax(keys))
        if keys[i] > best:
            best_id, best = int(ids[i]), float(keys[i])
        bound[blocks] = -np.inf
        blocks = np.flatnonzero(bound > best)
    return best_id


def filtered(params: SamplingParams) -> bool:
    """True when top_k, top_p or min_p cut the distribution (the race then runs over what is left)."""
    return bool(params.top_k) or params.top_p < 1.0 or params.min_p > 0.0


def coupled_token(logits: np.ndarray, params: SamplingParams, position: int) -> int:
    """The token at `position`: the argmax for greedy decoding, else the race over the sampling
    distribution (`sampling.distribution`) with the noise of (params.seed, position)."""
    if params.greedy:
        return int(np.argmax(logits))
    seed = params.seed
    if seed is None:
        raise ValueError("sampled decoding needs a seed (Engine draws one for requests that give none)")
    if not filtered(params):
        return race_dense(np.asarray(logits), params.temperature, seed, position)
    d = distribution(logits, params)
    ids = d.ids if d.ids is not None else np.arange(len(d.probs))
    keep = d.probs > 0
    with np.errstate(divide="ignore"):
        return race(np.log(d.probs[keep]), ids[keep], seed, position)
