"""What rounds cost on this machine, as the adaptive controller (quickdraft.controller) needs to know it.

Three costs decide whether a round pays: verifying n tokens in one target pass, drafting one token with each
drafter, and a drafter catching up on context it has not seen (a draft model's prefill of the prompt). All
three are learnt from the rounds themselves, in `MachineCosts`, which one engine's requests share:

- each is the median of recent samples (`RecentMedian`), so a slow outlier moves nothing;
- each is kept relative to the current step time (the *level*), so a machine that gets busier or quieter
  changes the level, not the shape, and the choice between options (a ratio of tokens to time) depends on
  the shape alone;
- verify sizes not measured yet come from a line fitted through the batch sizes (2 and up) that are
  (`VerifyFit`, `fit_line`), or, before any are, from a prior shape: one more token costs a seventh of a
  step. The one-token step is never on that line: llama.cpp may compute it with other kernels than a
  batch (with the `quickdraft.5` build on this project's CPU, Gemma F16, 2 cores, verifying 2 tokens cost
  ~2.2x one step and 4 ~2.5x, docs/bench.md), and a line through all sizes then rated the target alone's
  step ~1.6x too slow and made speculation look better than it is;
- unmeasured drafting and catch-up costs count as zero: optimism gets a new drafter tried, and one round
  measures it.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from statistics import median

PRIOR_STEP_SECONDS = 0.02  # a target step before anything is measured (only ratios matter until then)
LEVEL_RATE = 0.1  # how fast the current step time follows a change of load (~10 rounds)
PRIOR_EXTRA_TOKEN = 1 / 7  # verifying n tokens ~ verify(1) * (1 + (n - 1) / 7): 8 tokens ~ 2 steps
MIN_SAMPLES = 3  # a verify size with this many samples is its own median, not the fitted line
WINDOW = 32  # recent samples a cost is the median of
REFIT_EVERY = 8  # once warmed up, the verify curve is refitted every this many observations
WARM_SAMPLES = 64  # verify observations before refitting slows to every REFIT_EVERY
STEADY_CATCHUP = 2  # at most this many unseen tokens: an ordinary round (the bonus token, say)
ENTRY_CATCHUP = 16  # at least this many: a catch-up round, measured as such


class RecentMedian:
    """The median of the last `window` samples."""

    def __init__(self, window: int = WINDOW):
        self._samples: deque[float] = deque(maxlen=window)
        self._median: float | None = None

    def add(self, x: float) -> None:
        self._samples.append(x)
        self._median = None

    def scale(self, factor: float) -> None:
        self._samples = deque((x * factor for x in self._samples), maxlen=self._samples.maxlen)
        self._median = None

    @property
    def count(self) -> int:
        return len(self._samples)

    @property
    def value(self) -> float:
        if self._median is None:
            self._median = median(self._samples)
        return self._median


class MachineCosts:
    """What rounds cost on this machine, shared across requests.

    A busy machine slows everything alike, so costs are kept relative to `level`, the seconds of one target
    step *now*: a moving average of one-token verifications (target-alone rounds, and n-gram rounds that
    found no match), and, while speculation leaves few of those, of what each verification of a size with
    an established median (MIN_SAMPLES samples) says a step costs (its seconds over that median). Each cost
    is a median of recent samples in units of the level at the time: verifying n tokens, one drafted token
    per drafter, one context token caught up on per drafter. A load change moves the level, not the shape,
    and the choice between options (a ratio of tokens to time) depends on the shape alone. (Only measured
    medians move the level, never the fitted line: a line that underestimated long verifications would
    raise the level during speculation and so confirm itself.)"""

    def __init__(self):
        self._lock = threading.Lock()
        self._level: float | None = None
        self._anchored = False  # the level has come from a one-token verification (not from the prior shape)
        self._verify: dict[int, RecentMedian] = {}  # verify(n) / level
        self._draft: dict[str, RecentMedian] = {}  # seconds per drafted token / level
        self._catchup: dict[str, RecentMedian] = {}  # seconds per context token caught up on / level
        self._shape: list[float] = []  # _shape[n]: fitted verify(n) / level (index 0 unused)
        self._stale = 0  # verify observations since the shape was fitted
        self._verify_samples = 0

    def observe_verify(self, n_tokens: int, seconds: float) -> None:
        with self._lock:
            if self._level is None:  # until a one-token verification comes, scale the prior shape
                self._level = seconds / self._shape_locked(n_tokens)[n_tokens]
            known = self._verify.get(n_tokens)
            established = known.value if known is not None and known.count >= MIN_SAMPLES else None
            self._verify.setdefault(n_tokens, RecentMedian()).add(seconds / self._level)
            if n_tokens == 1 and self._anchored:
                self._level += LEVEL_RATE * (seconds - self._level)
            elif established is not None and self._anchored:  # what this size says a step costs now
                self._level += LEVEL_RATE * (seconds / established - self._level)
            elif n_tokens == 1:  # the first one-token verification: re-express what was kept in its units
                for table in (self._verify, self._draft, self._catchup):
                    for m in table.values():
                        m.scale(self._level / seconds)
                self._level, self._anchored = seconds, True
                self._shape = []
            self._stale += 1
            self._verify_samples += 1

    def observe_draft(self, drafter: str, k: int, catchup_tokens: int, seconds: float) -> None:
        """A round's drafting time. A round that caught up on many tokens teaches the catch-up cost (less
        the drafting, where that is known); one that caught up on a few teaches the drafting cost, less the
        catch-up, where that is known (a probe after a few rounds off is such a round)."""
        if k <= 0:
            return
        with self._lock:
            if self._level is None:
                return
            relative = seconds / self._level
            if catchup_tokens <= STEADY_CATCHUP:
                self._draft.setdefault(drafter, RecentMedian()).add(relative / k)
            elif catchup_tokens >= ENTRY_CATCHUP:
                rest = max(0.0, relative - k * self._relative(self._draft, drafter))
                self._catchup.setdefault(drafter, RecentMedian()).add(rest / catchup_tokens)
            elif drafter in self._catchup:
                rest = max(0.0, relative - catchup_tokens * self._relative(self._catchup, drafter))
                self._draft.setdefault(drafter, RecentMedian()).add(rest / k)

    def _shape_locked(self, max_tokens: int) -> list[float]:
        """Refitted after every observation while few are in, then every REFIT_EVERY (choosing stays cheap)."""
        warm = self._verify_samples >= WARM_SAMPLES
        if len(self._shape) <= max_tokens or self._stale >= (REFIT_EVERY if warm else 1):
            fit = VerifyFit.from_samples(
                {n: m.value for n, m in self._verify.items()}, {n: m.count for n, m in self._verify.items()}
            )
            size = max(max_tokens, len(self._shape) - 1, 1)
            self._shape = [0.0] + [fit.seconds(n) for n in range(1, size + 1)]
            self._stale = 0
        return self._shape

    def verify_curve(self, max_tokens: int) -> list[float]:
        """[unused, verify(1), ..., verify(max_tokens)] in seconds, at the current level."""
        with self._lock:
            level = self._level if self._level is not None else PRIOR_STEP_SECONDS
            return [level * x for x in self._shape_locked(max_tokens)]

    def prior_curve(self, max_tokens: int) -> list[float]:
        """The prior shape at the current level (one more token costs a seventh of a step): what verifying
        costs if nothing measured so far is to be believed (a controller's exploration)."""
        with self._lock:
            level = self._level if self._level is not None else PRIOR_STEP_SECONDS
        return [0.0] + [level * (1 + PRIOR_EXTRA_TOKEN * (n - 1)) for n in range(1, max_tokens + 1)]

    def established(self, n_tokens: int) -> bool:
        """Verifying n tokens has MIN_SAMPLES samples: its cost is its own median, not the fitted line."""
        with self._lock:
            m = self._verify.get(n_tokens)
            return m is not None and m.count >= MIN_SAMPLES

    def verify_seconds(self, n_tokens: int) -> float:
        return self.verify_curve(n_tokens)[n_tokens]

    def draft_seconds(self, drafter: str, k: int) -> float:
        """Zero until measured, like catching up: optimism gets a new drafter tried, and one round measures it."""
        with self._lock:
            return k * self._relative(self._draft, drafter) * (self._level or 0.0)

    def catchup_seconds(self, drafter: str, n_tokens: int) -> float:
        """Zero until measured: a drafter that was never tried must not be ruled out by a guess."""
        if n_tokens <= STEADY_CATCHUP:
            return 0.0
        with self._lock:
            return n_tokens * self._relative(self._catchup, drafter) * (self._level or 0.0)

    def knows_step(self) -> bool:
        """A one-token verification (the target alone's step) has been measured."""
        with self._lock:
            return self._anchored

    def draft_established(self, drafter: str) -> bool:
        """The drafting cost has MIN_SAMPLES samples (one slow sample is not yet the truth)."""
        with self._lock:
            m = self._draft.get(drafter)
            return m is not None and m.count >= MIN_SAMPLES

    def has_draft_cost(self, drafter: str) -> bool:
        with self._lock:
            return drafter in self._draft

    @staticmethod
    def _relative(table: dict[str, RecentMedian], drafter: str) -> float:
        m = table.get(drafter)
        return m.value if m else 0.0

    def describe(self) -> dict:
        with self._lock:
            level = self._level or 0.0
            return {
                "step_ms": round(1e3 * level, 2),
                "verify_ms": {n: round(1e3 * level * m.value, 2) for n, m in sorted(self._verify.items())},
                "draft_ms_per_token": {d: round(1e3 * level * m.value, 3) for d, m in self._draft.items()},
                "catchup_ms_per_token": {d: round(1e3 * level * m.value, 4) for d, m in self._catchup.items()},
            }


@dataclass(frozen=True)
class VerifyFit:
    """Verify cost of n tokens (relative to the level): the median where n has enough samples (for one
    token: any sample), else a line intercept + slope * (n - 1) through the measured batch sizes
    (n >= 2; slope >= 0), else the prior shape."""

    medians: dict[int, float]
    counts: dict[int, int]
    intercept: float
    slope: float

    @classmethod
    def from_samples(cls, medians: dict[int, float], counts: dict[int, int]) -> "VerifyFit":
        batches = {n: t for n, t in medians.items() if n >= 2}
        intercept, slope = fit_line(batches, counts) if batches else fit_line(medians, counts)
        return cls(medians, counts, intercept, slope)

    def seconds(self, n: int) -> float:
        if self.counts.get(n, 0) >= (1 if n == 1 else MIN_SAMPLES):
            return self.medians[n]
        return self.intercept + self.slope * (n - 1)


def fit_line(medians: dict[int, float], counts: dict[int, int]) -> tuple[float, float]:
    """(intercept, slope) of verify cost against n - 1, weighted by sample counts. With fewer than two
    measured sizes, or a fit that says a step is free, the prior shape (slope = intercept / 7) is scaled to
    the weighted mean of the measurements; with none, the prior shape itself (intercept 1)."""
    if not medians:
        return 1.0, PRIOR_EXTRA_TOKEN
    w_sum = sum(counts[n] for n in medians)
    x_mean = sum(counts[n] * (n - 1) for n in medians) / w_sum
    y_mean = sum(counts[n] * t for n, t in medians.items()) / w_sum
    sxx = sum(counts[n] * (n - 1 - x_mean) ** 2 for n in medians)
    if sxx > 0:
        sxy = sum(counts[n] * (n - 1 - x_mean) * (t - y_mean) for n, t in medians.items())
        slope = max(0.0, sxy / sxx)
        intercept = y_mean - slope * x_mean
        if intercept > 0:
            return intercept, slope
    intercept = y_mean / (1 + PRIOR_EXTRA_TOKEN * x_mean)
    return intercept, intercept * PRIOR_EXTRA_TOKEN
