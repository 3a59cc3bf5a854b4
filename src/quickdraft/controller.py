"""The adaptive drafter behind `draft="auto"`: each round, the drafter and k with the most expected tokens per
second, from what this engine has measured.

A round with drafter d and k draft tokens emits, on average,

    E[tokens] = (1 - p) * 1 + p * (1 + a0 + a0*a1 + ... + a0*a1*...*a(k-1))

where p is how often d proposes anything at all (the n-gram drafter often has no match; a round without a
proposal is an ordinary target step) and a_i is the rate at which draft position i is accepted once the
positions before it were. With one rate a for every position the sum is (1 - a^(k+1)) / (1 - a), the
formula of `acceptance.expected_accepted`. The round costs

    E[seconds] = draft(d, k) + (1 - p) * verify(1) + p * verify(k + 1)

and the target alone costs verify(1) for one token. The controller picks the largest E[tokens] / E[seconds];
"none" (the target alone) is one of the options, so speculation is off whenever it does not pay, and also
when it promises less than MARGIN over the target alone: such gains are within the error of the estimates,
and the promise this controller keeps is never to be slower than the target alone.

What it learns, and where it keeps it:
- `MachineCosts` (shared by every request of one engine): the cost to verify n tokens, to draft one token
  with each drafter, and for a drafter to catch up on context it has not seen (the draft model's prefill of
  the prompt). Medians of recent rounds, so a slow outlier moves nothing, kept relative to the current
  step time, so a machine that gets busier or quieter changes the level, not the choice.
- `AcceptanceStats` (one per drafter per request): acceptance per draft position and the proposal rate,
  with older rounds fading, so a request that changes character (a RAG answer that stops quoting) is
  followed. Its prior is what earlier requests saw (`AcceptanceHistory`, shared); optimistic for a drafter
  never seen, as unmeasured costs count as zero, so every drafter gets tried and measured.
- Catching up is paid once, so it is spread over the next `horizon` tokens before options are compared: a
  draft model that would first have to read a 2,000-token prompt is not picked for a few tokens' gain.

Shadows. A drafter whose proposals cost next to nothing (the n-gram lookup: microseconds against a target
step of milliseconds, as measured) is also asked for a proposal in every round that does not use it, and
that proposal is scored against the tokens the target emits. Its acceptance is thus learnt for free while
speculation is off or another drafter runs, and speculation comes back as soon as its drafts would be
accepted again. (Shadows draw from their own random generator, never the request's.)

Probes, for the drafters that cost too much to shadow (a draft model): when the target alone wins, the
controller tries one again after FIRST_PROBE_INTERVAL rounds, doubling the interval after each probe that
fails (up to MAX_PROBE_INTERVAL) and resetting it once speculation pays again. A probe whose every draft
token is accepted means the text changed: that drafter's stale record is dropped, so it is back on at once.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from statistics import median
from typing import Sequence

import numpy as np

from quickdraft.drafters import Drafter

DEFAULT_MAX_K = 16
HORIZON_TOKENS = 64  # a one-off catch-up cost is spread over this many tokens
PRIOR_STEP_SECONDS = 0.02  # a target step before anything is measured (only ratios matter until then)
LEVEL_RATE = 0.1  # how fast the current step time follows a change of load (~10 rounds)
PRIOR_EXTRA_TOKEN = 1 / 7  # verifying n tokens ~ verify(1) * (1 + (n - 1) / 7): 8 tokens ~ 2 steps
PRIOR_ACCEPTANCE = 0.5
PRIOR_PROPOSAL_RATE = 0.5
PRIOR_WEIGHT = 1.0  # pseudo-rounds the prior counts for in a request
OPTIMISTIC_ACCEPTANCE = 0.9  # a drafter is probed only if it would pay at this acceptance
DECAY = 0.9  # per observed round: a round 10 rounds ago counts ~1/3
HISTORY_DECAY = 0.995  # across requests: the prior remembers ~200 rounds
MIN_SAMPLES = 3
WINDOW = 32
REFIT_EVERY = 8  # once warmed up, the verify curve is refitted every this many observations
WARM_SAMPLES = 64
STEADY_CATCHUP = 2  # at most this many unseen tokens: an ordinary round (the bonus token, say)
ENTRY_CATCHUP = 16  # at least this many: a catch-up round, measured as such
PROBE_K = 2
MARGIN = 1.05  # speculation must promise 5% over the target alone: smaller gains are within estimation error
SHADOW_BUDGET = 0.05  # a drafter whose max_k proposal costs under this share of a step runs in shadow
FIRST_PROBE_INTERVAL = 8
MAX_PROBE_INTERVAL = 128


# ---- machine costs (shared by one engine's requests) ----------------------------------------------------
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
    found no match). Each cost is a median of recent samples in units of the level at the time: verifying
    n tokens, one drafted token per drafter, one context token caught up on per drafter. A load change moves
    the level, not the shape, and the choice between options (a ratio of tokens to time) depends on the
    shape alone. (The level is anchored to one size on purpose: fed by every size through the fitted shape,
    a shape that underestimates long verifications would raise the level during speculation and so
    confirm itself.)"""

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
            self._verify.setdefault(n_tokens, RecentMedian()).add(seconds / self._level)
            if n_tokens == 1 and self._anchored:
                self._level += LEVEL_RATE * (seconds - self._level)
            elif n_tokens == 1:  # the first one-token verification: re-express what was kept in its units
                for table in (self._verify, self._draft, self._catchup):
                    for m in table.values():
                        m.scale(self._level / seconds)
                self._level, self._anchored = seconds, True
                self._shape = []
            self._stale += 1
            self._verify_samples += 1

    def observe_draft(self, drafter: str, k: int, catchup_tokens: int, seconds: float) -> None:
        """A round's drafting time; rounds that caught up on many tokens teach the catch-up cost instead."""
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
    """Verify cost of n tokens (relative to the level): the median where n has enough samples, else a line
    intercept + slope * (n - 1) through the measured points (slope >= 0), else the prior shape."""

    medians: dict[int, float]
    counts: dict[int, int]
    intercept: float
    slope: float

    @classmethod
    def from_samples(cls, medians: dict[int, float], counts: dict[int, int]) -> "VerifyFit":
        intercept, slope = fit_line(medians, counts)
        return cls(medians, counts, intercept, slope)

    def seconds(self, n: int) -> float:
        if self.counts.get(n, 0) >= MIN_SAMPLES:
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


# ---- acceptance (per request, with a prior from earlier requests) ----------------------------------------
@dataclass
class AcceptanceStats:
    """One drafter in one request: decayed counts of draft positions tried and accepted, and of proposals
    asked for and made. Position i is tried when the drafter proposed more than i tokens and 0..i-1 were
    accepted. Each new proposal (`begin`) fades the older counts; its positions are scored as they are
    decided (`score`), at once for a verified proposal, token by token for a shadow one."""

    tried: list[float] = field(default_factory=list)
    accepted: list[float] = field(default_factory=list)
    asked: float = 0.0
    proposed: float = 0.0

    def begin(self, proposed: bool, decay: float = DECAY) -> None:
        self.tried = [x * decay for x in self.tried]
        self.accepted = [x * decay for x in self.accepted]
        self.asked = self.asked * decay + 1
        self.proposed = self.proposed * decay + (1 if proposed else 0)

    def score(self, position: int, hit: bool) -> None:
        while len(self.tried) <= position:
            self.tried.append(0.0)
            self.accepted.append(0.0)
        self.tried[position] += 1
        if hit:
            self.accepted[position] += 1

    def observe(self, drafted: int, accepted: int, decay: float = DECAY) -> None:
        """A verified round: positions 0..accepted-1 accepted, position `accepted` rejected if drafted."""
        self.begin(drafted > 0, decay)
        for i in range(min(accepted + 1, drafted)):
            self.score(i, i < accepted)

    def pooled_rate(self, prior: float, weight: float = PRIOR_WEIGHT) -> float:
        return (sum(self.accepted) + weight * prior) / (sum(self.tried) + weight)

    def position_rates(self, prior: float, n: int, weight: float = PRIOR_WEIGHT) -> list[float]:
        """Acceptance at positions 0..n-1, each shrunk toward this request's pooled rate."""
        pooled = self.pooled_rate(prior, weight)
        rates = []
        for i in range(n):
            tried = self.tried[i] if i < len(self.tried) else 0.0
            ok = self.accepted[i] if i < len(self.accepted) else 0.0
            rates.append((ok + weight * pooled) / (tried + weight))
        return rates

    def proposal_rate(self, prior: float, weight: float = PRIOR_WEIGHT) -> float:
        return (self.proposed + weight * prior) / (self.asked + weight)


class AcceptanceHistory:
    """Pooled acceptance and proposal rate per drafter over earlier requests: the prior of a new request."""

    def __init__(self):
        self._lock = threading.Lock()
        self._counts: dict[str, list[float]] = {}  # drafter -> [tried, accepted, asked, proposed]

    def begin(self, drafter: str, proposed: bool) -> None:
        with self._lock:
            c = self._counts.setdefault(drafter, [0.0, 0.0, 0.0, 0.0])
            c[:] = [x * HISTORY_DECAY for x in c]
            c[2] += 1
            c[3] += 1 if proposed else 0

    def score(self, drafter: str, hit: bool) -> None:
        with self._lock:
            c = self._counts.setdefault(drafter, [0.0, 0.0, 0.0, 0.0])
            c[0] += 1
            c[1] += 1 if hit else 0

    def prior(self, drafter: str) -> tuple[float, float]:
        """(acceptance, proposal rate). Optimistic for a drafter never seen: it gets tried, then measured."""
        with self._lock:
            counts = self._counts.get(drafter)
        if counts is None:
            return OPTIMISTIC_ACCEPTANCE, 1.0
        tried, accepted, asked, proposed = counts
        a = (accepted + PRIOR_WEIGHT * PRIOR_ACCEPTANCE) / (tried + PRIOR_WEIGHT)
        p = (proposed + PRIOR_WEIGHT * PRIOR_PROPOSAL_RATE) / (asked + PRIOR_WEIGHT)
        return a, p


@dataclass
class MachineModel:
    """What one engine's requests share: machine costs and the acceptance seen so far."""

    costs: MachineCosts = field(default_factory=MachineCosts)
    history: AcceptanceHistory = field(default_factory=AcceptanceHistory)


# ---- the choice -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Option:
    drafter: str  # "none" for the target alone
    k: int
    tokens_per_second: float


def best_k(
    rates: Sequence[float],
    proposal_rate: float,
    draft_seconds_per_token: float,
    verify: Sequence[float],
    entry_seconds: float = 0.0,
    horizon: int = HORIZON_TOKENS,
) -> tuple[int, float]:
    """(k, expected tokens/s) maximising E[tokens] / E[seconds] over k = 1..len(rates); `entry_seconds`, a
    one-off cost, is spread over `horizon` tokens. verify[n]: seconds to verify n tokens."""
    p = proposal_rate
    v1 = verify[1]
    best = (1, 0.0)
    run = 1.0  # probability that positions 0..k-1 are all accepted
    proposed_tokens = 1.0  # E[tokens | a proposal of k tokens]
    for k, a in enumerate(rates, start=1):
        run *= a
        proposed_tokens += run
        tokens = (1 - p) + p * proposed_tokens
        seconds = k * draft_seconds_per_token + (1 - p) * v1 + p * verify[k + 1]
        rate = effective_rate(tokens / seconds, entry_seconds, horizon)
        if rate > best[1]:
            best = (k, rate)
    return best


def effective_rate(tokens_per_second: float, entry_seconds: float, horizon: int = HORIZON_TOKENS) -> float:
    """Tokens/s over the next `horizon` tokens when `entry_seconds` must be paid first."""
    if entry_seconds <= 0:
        return tokens_per_second
    return horizon / (horizon / tokens_per_second + entry_seconds)


@dataclass
class Shadow:
    """A proposal made but not verified, scored against what the target emits after `at`."""

    drafter: str
    at: int
    tokens: list[int]
    scored: int = 0

    def score(self, context: Sequence[int], stats: AcceptanceStats, history: AcceptanceHistory) -> bool:
        """Score the positions the context now decides; True once the proposal is decided (miss or end)."""
        end = min(len(self.tokens), len(context) - self.at)
        for i in range(self.scored, end):
            hit = self.tokens[i] == context[self.at + i]
            stats.score(i, hit)
            history.score(self.drafter, hit)
            self.scored = i + 1
            if not hit:
                return True
        return self.scored == len(self.tokens)


class _Tracked:
    """A drafter as the controller hands it to the loop: it shows the controller the prompt and, at each
    proposal, the context (how much each drafter has not seen yet; what shadow proposals are scored on)."""

    def __init__(self, inner: Drafter, controller: "AdaptiveController"):
        self.inner = inner
        self.name = inner.name
        self._controller = controller

    def start(self, prompt) -> None:
        self._controller._context_len = len(prompt)
        self.inner.start(prompt)

    def propose(self, context, k, sampling, rng):
        self._controller._before_propose(self, context, sampling)
        return self.inner.propose(context, k, sampling, rng)


class AdaptiveController:
    """A Policy (quickdraft.policy) that learns, per request, which drafter and k pay (see the module doc)."""

    def __init__(
        self,
        drafters: Sequence[Drafter],
        none: Drafter,
        machine: MachineModel | None = None,
        *,
        max_k: int = DEFAULT_MAX_K,
        horizon: int = HORIZON_TOKENS,
    ):
        if max_k < 1:
            raise ValueError(f"max_k must be >= 1, got {max_k}")
        self.machine = machine or MachineModel()
        self.max_k = max_k
        self.horizon = horizon
        self._none = _Tracked(none, self)
        self._speculative = [_Tracked(d, self) for d in drafters if d.name != none.name]
        self.start()

    @property
    def drafters(self) -> list[_Tracked]:
        return [self._none, *self._speculative]

    # ---- one request ------------------------------------------------------------------------------------
    def start(self) -> None:
        self._round = 0
        self._context_len = 0
        self._seen: dict[str, int] = {}  # drafter -> context tokens it has processed
        self._proposed_at: dict[str, int] = {}
        self._stats = {d.name: AcceptanceStats() for d in self._speculative}
        self._priors = {d.name: self.machine.history.prior(d.name) for d in self._speculative}
        self._off_rounds = 0
        self._probe_interval = FIRST_PROBE_INTERVAL
        self._probing = False
        self._last_catchup = 0
        self._shadows: dict[str, list[Shadow]] = {}  # drafter -> its shadow proposals not decided yet
        self._shadow_rng = np.random.default_rng(0)
        self.choices: dict[str, int] = {}

    def unseen(self, drafter: str) -> int:
        """Context tokens the drafter has not processed yet, beyond the one every round adds."""
        return max(0, self._context_len - self._seen.get(drafter, 0) - 1)

    def options(self) -> list[Option]:
        """Every choice with its expected tokens/s: the target alone, then each drafter at its best k."""
        costs = self.machine.costs
        verify = costs.verify_curve(self.max_k + 1)
        out = [Option("none", 0, 1.0 / verify[1])]
        for d in self._speculative:
            a_prior, p_prior = self._priors[d.name]
            stats = self._stats[d.name]
            k, rate = best_k(
                stats.position_rates(a_prior, self.max_k),
                stats.proposal_rate(p_prior),
                costs.draft_seconds(d.name, 1),
                verify,
                costs.catchup_seconds(d.name, self.unseen(d.name)),
                self.horizon,
            )
            out.append(Option(d.name, k, rate))
        return out

    def shadowable(self, name: str) -> bool:
        """Measured to propose max_k tokens in under SHADOW_BUDGET of a target step."""
        costs = self.machine.costs
        cheap = costs.draft_seconds(name, self.max_k) < SHADOW_BUDGET * costs.verify_seconds(1)
        return cheap and costs.has_draft_cost(name)

    def choose(self) -> tuple[Drafter, int]:
        """The target alone is the none drafter asked for one token: it proposes nothing, and the round still
        passes through propose, where shadows are scored and made."""
        none, *drafting = self.options()
        best = max(drafting, key=lambda o: o.tokens_per_second, default=none)
        if best.tokens_per_second < MARGIN * none.tokens_per_second:
            best = none
        self._probing = False
        if best.drafter == "none" and self._speculative:
            self._off_rounds += 1
            if self._off_rounds >= self._probe_interval:
                best = self._probe_choice()
                self._probing = best.drafter != "none"
                self._off_rounds = 0
        elif best.drafter != "none":
            self._off_rounds = 0
            self._probe_interval = FIRST_PROBE_INTERVAL
        drafter = self._by_name(best.drafter)
        self._last_catchup = self.unseen(best.drafter) if best.drafter != "none" else 0
        key = "none" if best.drafter == "none" else f"{best.drafter}:{best.k}"
        self.choices[key] = self.choices.get(key, 0) + 1
        return drafter, best.k if best.drafter != "none" else 1

    def _probe_choice(self) -> Option:
        """A small-k round with the drafter that would pay most if its drafts were good again; none if no
        drafter could pay on this machine even at OPTIMISTIC_ACCEPTANCE."""
        costs = self.machine.costs
        verify = costs.verify_curve(self.max_k + 1)
        candidates = []
        for d in self._speculative:
            if self.shadowable(d.name):  # its record is fresh already
                continue
            _, rate = best_k(
                [OPTIMISTIC_ACCEPTANCE] * self.max_k, 1.0, costs.draft_seconds(d.name, 1), verify,
                costs.catchup_seconds(d.name, self.unseen(d.name)), self.horizon,
            )
            candidates.append(Option(d.name, min(PROBE_K, self.max_k), rate))
        best = max(candidates, key=lambda o: o.tokens_per_second, default=None)
        if best is None or best.tokens_per_second <= 1.0 / verify[1]:
            self._probe_interval = min(2 * self._probe_interval, MAX_PROBE_INTERVAL)
            return Option("none", 0, 1.0 / verify[1])
        return best

    def observe(self, drafter, k, drafted, accepted, draft_s, verify_s) -> None:
        name = drafter.name
        first_round = self._round == 0
        self._round += 1
        if not first_round:  # the first verification also reads the prompt: not a round's cost
            self.machine.costs.observe_verify(drafted + 1, verify_s)
        if name in self._stats and k > 0:
            self.machine.costs.observe_draft(name, k, self._last_catchup, draft_s)
            if self._probing:
                self._after_probe(name, drafted, accepted)
            self._record(name, drafted, accepted)
            self._seen[name] = self._proposed_at.get(name, self._context_len) + accepted
        self._context_len += accepted + 1

    def _before_propose(self, current: _Tracked, context: list[int], sampling) -> None:
        """Score pending shadow proposals on the tokens emitted since they were made, then make new ones.

        A shadow proposal is made every round and scored token by token as the target emits: each position
        counts once it is decided, and the proposal is done at its first miss or its last token. When its
        drafter drafts for real, the positions not decided yet are left unscored (neither hit nor miss)."""
        self._proposed_at[current.name] = len(context)
        for name, pending in self._shadows.items():
            stats = self._stats[name]
            self._shadows[name] = [
                sh for sh in pending if not sh.score(context, stats, self.machine.history) and name != current.name
            ]
        for d in self._speculative:
            if d is current or not self.shadowable(d.name):
                continue
            tokens = list(d.inner.propose(context, self.max_k, sampling, self._shadow_rng).tokens)
            self._seen[d.name] = len(context)
            self._stats[d.name].begin(bool(tokens))
            self.machine.history.begin(d.name, bool(tokens))
            if tokens:
                self._shadows.setdefault(d.name, []).append(Shadow(d.name, len(context), tokens))

    def _record(self, name: str, drafted: int, accepted: int) -> None:
        """A verified round."""
        self._stats[name].observe(drafted, accepted)
        self.machine.history.begin(name, drafted > 0)
        for i in range(min(accepted + 1, drafted)):
            self.machine.history.score(name, i < accepted)

    def _after_probe(self, name: str, drafted: int, accepted: int) -> None:
        if drafted == 0:  # no proposal: nothing learnt about acceptance, try again next interval
            return
        if accepted == drafted:  # the text changed: forget the stale record
            self._stats[name] = AcceptanceStats()
            self._probe_interval = FIRST_PROBE_INTERVAL
        else:
            self._probe_interval = min(2 * self._probe_interval, MAX_PROBE_INTERVAL)

    def _by_name(self, name: str) -> _Tracked:
        if name == "none":
            return self._none
        return next(d for d in self._speculative if d.name == name)

    def describe(self) -> dict:
        return {
            "policy": "auto",
            "max_k": self.max_k,
            "drafters": [d.name for d in self._speculative],
            "options": [
                {"drafter": o.drafter, "k": o.k, "tokens_per_second": round(o.tokens_per_second, 2)}
                for o in self.options()
            ],
            "choices": dict(self.choices),
            "probe_interval": self._probe_interval,
            "costs": self.machine.costs.describe(),
        }
