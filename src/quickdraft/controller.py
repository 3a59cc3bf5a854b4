"""The adaptive drafter behind `draft="auto"`: each round, the drafter and k with the most expected tokens per
second, from what this engine has measured.

A round with drafter d allowed k draft tokens emits, on average,

    E[tokens] = (1 - p) * 1 + p * (1 + r0*a0 + r1*a0*a1 + ... + r(k-1)*a0*a1*...*a(k-1))

where p is how often d proposes anything at all (the n-gram drafter often has no match; a round without a
proposal is an ordinary target step), a_i is the rate at which draft position i is accepted once the
positions before it were, and r_i how often a proposal is longer than i tokens (1 for a draft model, which
always drafts k; the n-gram drafter stops where the context stops backing it). With every r_i = 1 and one
rate a for every position the sum is (1 - a^(k+1)) / (1 - a), the formula of `acceptance.expected_accepted`.
The round costs

    E[seconds] = draft(d, 1) * E[length] + (1 - p) * verify(1) + p * E[verify(length + 1)]

(expectations over the proposal's length, k at most, whose distribution the r_i give), and the target alone
costs verify(1) for one token, measured before anything else (an engine's first round after a prefill is
the target alone's: every option is compared with it). The controller picks the largest E[tokens] / E[seconds];
"none" (the target alone) is one of the options, so speculation is off whenever it does not pay, and also
when it promises less than MARGIN over the target alone: such gains are within the error of the estimates,
and the promise this controller keeps is never to be slower than the target alone.

What it learns, and where it keeps it:
- the costs, draft(d, k), verify(n) and each drafter's catch-up on context it has not seen (the draft
  model's prefill of the prompt): quickdraft.cost_model, shared by every request of one engine;
- p and the a_i: quickdraft.acceptance_stats, per drafter per request, with what earlier requests saw as
  the prior.
Catching up is paid once, so it is spread over the next `horizon` tokens before options are compared: a
draft model that would first have to read a 2,000-token prompt is not picked for a few tokens' gain. How
much a drafter has to catch up on is the context it has not processed: all of it at the start of a request,
then what was emitted since its last proposal.

It is a Policy (quickdraft.policy), and all its work happens inside the three calls the loop makes:
`start` starts the drafters, `choose` scores and makes shadow proposals and picks, `observe` learns costs
and acceptance from the round.

Shadows. A drafter whose proposals cost next to nothing (the n-gram lookup: microseconds against a target
step of milliseconds, as measured) is also asked for a proposal in every round that does not use it, and
that proposal is scored against the tokens the target emits. Its acceptance is thus learnt for free while
speculation is off or another drafter runs, and speculation comes back as soon as its drafts would be
accepted again. (A shadow proposal is made with the request's sampling, like a real one: drafting is
deterministic given the request's seed, quickdraft.coupling, so it changes nothing the target emits.)

Probes, for the drafters that cost too much to shadow (a draft model): when the target alone wins, the
controller tries one again after FIRST_PROBE_INTERVAL rounds, doubling the interval after each probe that
fails (up to MAX_PROBE_INTERVAL) and resetting it once speculation pays again. A probe whose every draft
token is accepted means the text changed: that drafter's stale record is dropped, so it is back on at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

from quickdraft.acceptance_stats import (
    OPTIMISTIC_ACCEPTANCE,
    AcceptanceHistory,
    AcceptanceStats,
    Shadow,
    decided_positions,
)
from quickdraft.cost_model import MachineCosts
from quickdraft.drafters import Drafter
from quickdraft.policy import AUTO_MAX_K
from quickdraft.sampling import SamplingParams

if TYPE_CHECKING:
    from quickdraft.generate import Round

HORIZON_TOKENS = 64  # a one-off catch-up cost is spread over this many tokens
PROBE_K = 2
MARGIN = 1.05  # speculation must promise 5% over the target alone: smaller gains are within estimation error
SHADOW_BUDGET = 0.05  # a drafter whose max_k proposal costs under this share of a step runs in shadow
FIRST_PROBE_INTERVAL = 8
MAX_PROBE_INTERVAL = 128


@dataclass
class MachineModel:
    """What one engine's requests share: machine costs and the acceptance seen so far."""

    costs: MachineCosts = field(default_factory=MachineCosts)
    history: AcceptanceHistory = field(default_factory=AcceptanceHistory)


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
    reach: Sequence[float] | None = None,
) -> tuple[int, float]:
    """(k, expected tokens/s) maximising E[tokens] / E[seconds] over k = 1..len(rates); `entry_seconds`, a
    one-off cost, is spread over `horizon` tokens. verify[n]: seconds to verify n tokens. reach[i]: the
    chance that a proposal is longer than i tokens (default: always as long as allowed)."""
    p = proposal_rate
    v1 = verify[1]
    r = list(reach) if reach is not None else [1.0] * len(rates)
    r.append(0.0)  # past the last k considered, nothing is drafted
    best = (1, 0.0)
    run = 1.0  # probability that positions 0..k-1 are all accepted
    proposed_tokens = 1.0  # E[tokens | a proposal, k allowed]
    length = 0.0  # E[length | a proposal, k allowed]
    shorter = 0.0  # sum over L < k of P(length = L) * verify(L + 1)
    for k, a in enumerate(rates, start=1):
        run *= a
        proposed_tokens += r[k - 1] * run
        length += r[k - 1]
        verify_proposal = shorter + r[k - 1] * verify[k + 1]  # a proposal as long as k: verify(k + 1)
        shorter += (r[k - 1] - r[k]) * verify[k + 1]
        tokens = (1 - p) + p * proposed_tokens
        seconds = length * draft_seconds_per_token + (1 - p) * v1 + p * verify_proposal
        rate = effective_rate(tokens / seconds, entry_seconds, horizon)
        if rate > best[1]:
            best = (k, rate)
    return best


def effective_rate(tokens_per_second: float, entry_seconds: float, horizon: int = HORIZON_TOKENS) -> float:
    """Tokens/s over the next `horizon` tokens when `entry_seconds` must be paid first."""
    if entry_seconds <= 0:
        return tokens_per_second
    return horizon / (horizon / tokens_per_second + entry_seconds)


class AdaptiveController:
    """A Policy (quickdraft.policy) that learns, per request, which drafter and k pay (see the module doc)."""

    def __init__(
        self,
        drafters: Sequence[Drafter],
        none: Drafter,
        machine: MachineModel | None = None,
        *,
        max_k: int = AUTO_MAX_K,
        horizon: int = HORIZON_TOKENS,
    ):
        if max_k < 1:
            raise ValueError(f"max_k must be >= 1, got {max_k}")
        self.machine = machine or MachineModel()
        self.max_k = max_k
        self.horizon = horizon
        self._none = none
        self._speculative = [d for d in drafters if d.name != none.name]
        self.drafters: list[Drafter] = [none, *self._speculative]
        self._reset(0, None)

    # ---- the Policy -------------------------------------------------------------------------------------
    def start(self, prompt: Sequence[int], sampling: SamplingParams) -> None:
        """A new request: every drafter starts on the prompt; acceptance starts from the engine's history."""
        for d in self.drafters:
            d.start(prompt)
        self._reset(len(prompt), sampling)

    def _reset(self, prompt_len: int, sampling: SamplingParams | None) -> None:
        self._sampling = sampling  # what shadow proposals are made with
        self._context_len = prompt_len  # of the latest context seen (for describe)
        self._seen: dict[str, int] = {}  # drafter -> context tokens it has processed
        self._stats = {d.name: AcceptanceStats() for d in self._speculative}
        self._priors = {d.name: self.machine.history.prior(d.name) for d in self._speculative}
        self._off_rounds = 0
        self._probe_interval = FIRST_PROBE_INTERVAL
        self._probing = False
        self._shadows: dict[str, list[Shadow]] = {}  # drafter -> its shadow proposals not decided yet
        self.choices: dict[str, int] = {}

    def choose(self, context: Sequence[int]) -> tuple[Drafter, int]:
        """The best option for the next round ((none, 0): the target alone). Pending shadow proposals are
        scored on the context first, and the cheap drafters not chosen make new ones."""
        self._context_len = len(context)
        self._score_shadows(context)
        none, *drafting = self.options(len(context))
        best = max(drafting, key=lambda o: o.tokens_per_second, default=none)
        if best.tokens_per_second < MARGIN * none.tokens_per_second:
            best = none
        if not self.machine.costs.knows_step():  # what every option is compared with is measured first
            best = none
        self._probing = False
        if best.drafter == "none" and self._speculative and self.machine.costs.knows_step():
            self._off_rounds += 1
            if self._off_rounds >= self._probe_interval:
                best = self._probe_choice(len(context))
                self._probing = best.drafter != "none"
                self._off_rounds = 0
        elif best.drafter != "none":
            self._off_rounds = 0
            self._probe_interval = FIRST_PROBE_INTERVAL
        self._make_shadows(context, best.drafter)
        key = "none" if best.drafter == "none" else f"{best.drafter}:{best.k}"
        self.choices[key] = self.choices.get(key, 0) + 1
        return self._by_name(best.drafter), best.k

    def observe(self, outcome: "Round", context: Sequence[int]) -> None:
        """Learn from a round (never the prefill, which the loop does not report): the verify cost of its
        size, and for a drafting round the draft cost and the acceptance of its positions."""
        self._context_len = len(context)
        costs = self.machine.costs
        costs.observe_verify(outcome.drafted + 1, outcome.verify_seconds)
        name = outcome.drafter
        if name not in self._stats or outcome.k == 0:
            return
        at = len(context) - len(outcome.tokens)  # the context the drafter proposed on
        costs.observe_draft(name, outcome.k, self.unseen(name, at), outcome.draft_seconds)
        if self._probing:
            self._after_probe(name, outcome.judged, outcome.accepted)
        self._record(name, outcome.judged, outcome.accepted, outcome.k)
        self._seen[name] = at + outcome.accepted
        self._shadows.pop(name, None)  # it drafted for real: its undecided shadow positions stay unscored

    def describe(self) -> dict:
        return {
            "policy": "auto",
            "max_k": self.max_k,
            "drafters": [d.name for d in self._speculative],
            "options": [
                {"drafter": o.drafter, "k": o.k, "tokens_per_second": round(o.tokens_per_second, 2)}
                for o in self.options(self._context_len)
            ],
            "choices": dict(self.choices),
            "probe_interval": self._probe_interval,
            "costs": self.machine.costs.describe(),
        }

    # ---- the choice ---------------------------------------------------------------------------------------
    def unseen(self, drafter: str, context_len: int) -> int:
        """Tokens of a context of this length the drafter has not processed yet, beyond the one every round
        adds: its catch-up."""
        return max(0, context_len - self._seen.get(drafter, 0) - 1)

    def options(self, context_len: int) -> list[Option]:
        """Every choice with its expected tokens/s: the target alone, then each drafter at its best k."""
        costs = self.machine.costs
        verify = costs.verify_curve(self.max_k + 1)
        out = [Option("none", 0, 1.0 / verify[1])]
        for d in self._speculative:
            out.append(self._by_record(d.name, verify, costs.catchup_seconds(d.name, self.unseen(d.name, context_len))))
        return out

    def _by_record(self, name: str, verify: Sequence[float], entry_seconds: float = 0.0) -> Option:
        """The drafter at its best k by its acceptance record, with this verify curve and one-off cost."""
        a_prior, p_prior = self._priors[name]
        stats = self._stats[name]
        k, rate = best_k(
            stats.position_rates(a_prior, self.max_k),
            stats.proposal_rate(p_prior),
            self.machine.costs.draft_seconds(name, 1),
            verify,
            entry_seconds,
            self.horizon,
            stats.reach_rates(self.max_k),
        )
        return Option(name, k, rate)

    def shadowable(self, name: str) -> bool:
        """Measured to propose max_k tokens in under SHADOW_BUDGET of a target step."""
        costs = self.machine.costs
        cheap = costs.draft_seconds(name, self.max_k) < SHADOW_BUDGET * costs.verify_seconds(1)
        return cheap and costs.has_draft_cost(name)

    def _probe_choice(self, context_len: int) -> Option:
        """A small-k round with the drafter that would pay most if its drafts were good again; none if no
        drafter could pay on this machine even at OPTIMISTIC_ACCEPTANCE.

        A drafting cost with fewer than MIN_SAMPLES samples counts as zero here: one slow sample (a pause of
        the interpreter during a proposal) must not keep a drafter from being measured again.
        A drafter judged in shadow has a fresh acceptance record, but the verify costs it is weighed with
        come only from real rounds: a few slow samples (a busy moment) would keep it off for good. So it is
        probed too, at the k its record would choose if verifying cost what the prior shape says, as long
        as that verify size has fewer than MIN_SAMPLES samples and the prior says it would pay."""
        costs = self.machine.costs
        verify = costs.verify_curve(self.max_k + 1)
        candidates = []
        for d in self._speculative:
            if self.shadowable(d.name):  # its record is fresh already; its costs may not be
                option = self._by_record(d.name, costs.prior_curve(self.max_k + 1))
                if not costs.established(option.k + 1):
                    candidates.append(option)
                continue
            draft = costs.draft_seconds(d.name, 1) if costs.draft_established(d.name) else 0.0
            _, rate = best_k(
                [OPTIMISTIC_ACCEPTANCE] * self.max_k, 1.0, draft, verify,
                costs.catchup_seconds(d.name, self.unseen(d.name, context_len)), self.horizon,
            )
            candidates.append(Option(d.name, min(PROBE_K, self.max_k), rate))
        best = max(candidates, key=lambda o: o.tokens_per_second, default=None)
        if best is None or best.tokens_per_second <= 1.0 / verify[1]:
            self._probe_interval = min(2 * self._probe_interval, MAX_PROBE_INTERVAL)
            return Option("none", 0, 1.0 / verify[1])
        return best

    def _by_name(self, name: str) -> Drafter:
        if name == "none":
            return self._none
        return next(d for d in self._speculative if d.name == name)

    # ---- learning acceptance ------------------------------------------------------------------------------
    def _score_shadows(self, context: Sequence[int]) -> None:
        """Score pending shadow proposals on the tokens emitted since they were made. Each position counts
        once it is decided; a proposal is done at its first miss or its last token."""
        for name, pending in self._shadows.items():
            stats = self._stats[name]
            self._shadows[name] = [sh for sh in pending if not sh.score(context, stats, self.machine.history)]

    def _make_shadows(self, context: Sequence[int], chosen: str) -> None:
        """A shadow proposal at this context from every cheap drafter but the one that drafts this round."""
        for d in self._speculative:
            if d.name == chosen or not self.shadowable(d.name):
                continue
            tokens = d.propose(context, self.max_k, self._sampling)
            self._seen[d.name] = len(context)
            self._stats[d.name].begin(len(tokens), self.max_k)
            self.machine.history.begin(d.name, bool(tokens))
            if tokens:
                self._shadows.setdefault(d.name, []).append(Shadow(d.name, len(context), tokens))

    def _record(self, name: str, drafted: int, accepted: int, cap: int) -> None:
        """A verified round."""
        self._stats[name].observe(drafted, accepted, cap)
        self.machine.history.begin(name, drafted > 0)
        for _, hit in decided_positions(drafted, accepted):
            self.machine.history.score(name, hit)

    def _after_probe(self, name: str, drafted: int, accepted: int) -> None:
        if drafted == 0:  # no proposal: nothing learnt about acceptance, try again next interval
            return
        if accepted == drafted and not self.shadowable(name):  # the text changed: forget the stale record
            self._stats[name] = AcceptanceStats()
            self._probe_interval = FIRST_PROBE_INTERVAL
        else:
            self._probe_interval = min(2 * self._probe_interval, MAX_PROBE_INTERVAL)
