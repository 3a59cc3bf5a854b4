"""The adaptive controller against simulated drafters: known acceptance and cost curves, so the best choice
is known exactly. No models, no timing: costs are the simulation's, reported to the controller as seconds."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable

import pytest

from quickdraft.acceptance import expected_accepted
from quickdraft.acceptance_stats import AcceptanceStats
from quickdraft.controller import AdaptiveController, MachineModel, best_k, effective_rate
from quickdraft.cost_model import VerifyFit
from quickdraft.drafters import NoDrafter
from quickdraft.generate import Round
from quickdraft.sampling import SamplingParams

SAMPLING = SamplingParams(temperature=0.7, seed=11)  # handed to start; shadow proposals must use it


@dataclass
class World:
    """verify_ms(n): a target pass over n tokens. draft_ms[d]: one draft token. acceptance(d, round): the
    chance each draft position is right, given the ones before it were. proposes(d, round): the chance d
    proposes anything at all."""

    verify_ms: Callable[[int], float]
    draft_ms: dict[str, float]
    acceptance: Callable[[str, int], float]
    proposes: Callable[[str, int], float] = lambda d, r: 1.0


class Sim:
    """A simulated request stream: the text the target writes is fixed by a seed, and a drafter guesses it."""

    def __init__(self, world: World, seed: int = 0):
        self.world = world
        self.seed = seed
        self.round = 0
        self.requests = 0
        self._truth: list[int] = []

    def true_token(self, i: int) -> int:
        while len(self._truth) <= i:
            self._truth.append(random.Random(f"{self.seed}:{self.requests}:{len(self._truth)}").randrange(10**9))
        return self._truth[i]

    def controller(self, *names: str, machine: MachineModel | None = None, max_k: int = 16) -> AdaptiveController:
        return AdaptiveController([FakeDrafter(n, self) for n in names], NoDrafter(), machine, max_k=max_k)


class FakeDrafter:
    """Proposes the true token at each position with the world's acceptance (wrong from the first miss on),
    or nothing at all; the same context always gets the same proposal."""

    def __init__(self, name: str, sim: Sim):
        self.name = name
        self.sim = sim
        self.started_with: list[int] | None = None
        self.calls: list[tuple[int, int, SamplingParams]] = []  # (len(context), k, sampling) per proposal

    def start(self, prompt):
        self.started_with = list(prompt)

    def propose(self, context, k, sampling):
        sim, at = self.sim, len(context)
        self.calls.append((at, k, sampling))
        r = random.Random(f"{sim.seed}:{sim.requests}:{self.name}:{at}")
        if r.random() >= sim.world.proposes(self.name, sim.round):
            return []
        a = sim.world.acceptance(self.name, sim.round)
        tokens, right = [], True
        for j in range(k):
            right = right and r.random() < a
            tokens.append(sim.true_token(at + j) if right else -1 - j)
        return tokens


@dataclass
class Log:
    rounds: list[tuple[str, int, int, float]] = field(default_factory=list)  # drafter, k, tokens, seconds

    def throughput(self, start: int = 0, end: int | None = None) -> float:
        part = self.rounds[start:end]
        return sum(r[2] for r in part) / sum(r[3] for r in part)

    def speculating(self, start: int = 0, end: int | None = None) -> float:
        part = self.rounds[start:end]
        return sum(1 for r in part if r[0] != "none") / len(part)

    def share(self, drafter: str, start: int = 0) -> float:
        part = self.rounds[start:]
        return sum(1 for r in part if r[0] == drafter) / len(part)

    def k_mode(self, start: int = 0) -> int:
        ks = [r[1] for r in self.rounds[start:] if r[0] != "none"]
        return max(set(ks), key=ks.count)


def simulate(controller: AdaptiveController, sim: Sim, rounds: int, *, prompt_len: int = 50,
             log: Log | None = None) -> Log:
    """One request of `rounds` rounds after the prefill, driven the way quickdraft.generate drives a policy
    (start, then the prefill round unreported, then choose / propose / verify / observe each round)."""
    log = log or Log()
    sim.requests += 1
    sim._truth = []
    context = [sim.true_token(i) for i in range(prompt_len)]
    controller.start(context, SAMPLING)
    context.append(sim.true_token(len(context)))  # the prefill round: the target's first token
    for _ in range(rounds):
        drafter, k = controller.choose(context)
        assert drafter in controller.drafters and (k == 0) == (drafter.name == "none"), (drafter.name, k)
        tokens = drafter.propose(context, k, SAMPLING)[:k] if k else []
        accepted = 0
        while accepted < len(tokens) and tokens[accepted] == sim.true_token(len(context) + accepted):
            accepted += 1
        draft_s = k * sim.world.draft_ms.get(drafter.name, 0.0) / 1e3
        verify_s = sim.world.verify_ms(len(tokens) + 1) / 1e3
        emitted = [sim.true_token(len(context) + i) for i in range(accepted + 1)]
        context += emitted
        name = drafter.name if k else "none"
        controller.observe(Round(emitted, None, name, k, len(tokens), accepted, draft_s, verify_s), context)
        log.rounds.append((name, k, accepted + 1, draft_s + verify_s))
        sim.round += 1
    return log


def fixed_throughput(world: World, drafter: str, k: int, a: float) -> float:
    """Tokens/s of always drafting k tokens with a constant acceptance a (the analytic optimum's yardstick)."""
    tokens = expected_accepted(a, k)
    seconds = (k * world.draft_ms[drafter] + world.verify_ms(k + 1)) / 1e3
    return tokens / seconds


def linear_verify(step_ms: float, per_token_ms: float) -> Callable[[int], float]:
    return lambda n: step_ms + per_token_ms * (n - 1)


# ---- the pure pieces ------------------------------------------------------------------------------------
@pytest.mark.parametrize("a", [0.0, 0.3, 0.8, 0.95])
def test_constant_acceptance_gives_the_closed_form(a):
    """With one rate everywhere and p = 1, best_k's E[tokens] is (1 - a^(k+1)) / (1 - a)."""
    verify = [0.010] * 10  # flat verify, free drafts: rate = E[tokens] / 10 ms
    for k in (1, 3, 6):
        _, rate = best_k([a] * k, 1.0, 0.0, verify)
        best_possible = max(expected_accepted(a, j) for j in range(1, k + 1)) / 0.010
        assert rate == pytest.approx(best_possible)


def test_no_proposal_costs_a_target_step_and_earns_one_token():
    """A drafter that never proposes: every round is a target step, so it never beats the target alone."""
    verify = [0.010 * (1 + (n - 1) / 7) for n in range(10)]
    _, rate = best_k([0.9] * 8, 0.0, 1e-5, verify)
    assert rate < 1 / verify[1]
    _, rate_free = best_k([0.9] * 8, 0.0, 0.0, verify)
    assert rate_free == pytest.approx(1 / verify[1])


def test_entry_cost_is_spread_over_the_horizon():
    assert effective_rate(100.0, 0.0) == 100.0
    assert effective_rate(100.0, 0.64, horizon=64) == pytest.approx(50.0)


def test_acceptance_counts_positions_tried():
    s = AcceptanceStats()
    s.observe(drafted=4, accepted=2, cap=4, decay=1.0)  # positions 0, 1 accepted, 2 rejected, 3 never tried
    s.observe(drafted=0, accepted=0, cap=4, decay=1.0)  # no proposal
    assert s.tried == [1, 1, 1]
    assert s.accepted == [1, 1, 0]
    assert s.asked == 2 and s.proposed == 1
    rates = s.position_rates(prior=0.5, n=4, weight=1e-9)
    assert rates[:3] == pytest.approx([1.0, 1.0, 0.0], abs=1e-6)


def test_reach_counts_how_far_proposals_go_when_allowed():
    s = AcceptanceStats()
    s.begin(2, cap=8, decay=1.0)  # stopped after 2 of 8 allowed
    s.begin(4, cap=4, decay=1.0)  # as long as allowed: says nothing about position 4 and beyond
    s.begin(0, cap=8, decay=1.0)  # no proposal: says nothing about length
    assert s.reached[1:] == [2, 2, 1]
    assert s.went_on[1:] == [2, 1, 1]
    reach = s.reach_rates(6, weight=1e-9)
    # longer than 0: always; than 1: 2/2; than 2: 1/2 more; than 3: 1/1 of those; beyond: nothing known -> 1
    assert reach == pytest.approx([1.0, 1.0, 0.5, 0.5, 0.5, 0.5], abs=1e-6)
    assert AcceptanceStats().reach_rates(3) == [1.0, 1.0, 1.0]  # unseen: as long as allowed


def test_best_k_counts_a_proposal_by_its_likely_length():
    verify = [0.0] + [0.010 + 0.005 * (n - 1) for n in range(1, 18)]
    rates = [0.9] * 16
    full = best_k(rates, 1.0, 0.0, verify)
    same = best_k(rates, 1.0, 0.0, verify, reach=[1.0] * 16)
    assert full == same
    # a drafter that never goes past 2 tokens: any k >= 2 is the same round, so they score alike
    short = [1.0, 1.0] + [0.0] * 14
    k2 = best_k(rates[:2], 1.0, 0.0, verify, reach=short[:2])[1]
    k9 = best_k(rates[:9], 1.0, 0.0, verify, reach=short[:9])
    assert k9[1] == pytest.approx(k2)
    tokens, seconds = 1 + 0.9 + 0.81, verify[3]
    assert k2 == pytest.approx(tokens / seconds)
    # half its proposals stop at 1 token: expected tokens and cost mix the two lengths
    half = [1.0, 0.5]
    k, rate = best_k([0.9, 0.9], 1.0, 0.0, verify, reach=half)
    expected_2 = (1 + 0.9 + 0.5 * 0.81) / (0.5 * verify[2] + 0.5 * verify[3])
    assert rate == pytest.approx(max(expected_2, 1.9 / verify[2]))


def test_verify_fit_follows_measurements():
    fit = VerifyFit.from_samples({1: 0.010, 5: 0.030, 9: 0.034}, {1: 5, 5: 5, 9: 5})
    assert fit.seconds(1) == pytest.approx(0.010)
    assert fit.seconds(7) == pytest.approx(0.032)  # a line between the measured batch sizes
    assert fit.seconds(17) == pytest.approx(0.042)
    # the one-token step is not on the batches' line (other kernels): it is what was measured, one sample
    # is enough (the step is the level every cost is relative to), and it does not bend the line
    fit = VerifyFit.from_samples({1: 0.019, 3: 0.038, 5: 0.041}, {1: 1, 3: 5, 5: 5})
    assert fit.seconds(1) == pytest.approx(0.019)
    assert fit.seconds(2) == pytest.approx(0.0365)
    # no step measured yet: the line (here through one size, with the prior's slope) stands for it
    fit = VerifyFit.from_samples({9: 0.020}, {9: 5})
    assert fit.seconds(1) == pytest.approx(0.020 / (1 + 8 / 7))


def cpu_verify(n: int) -> float:
    """Gemma 3 270M F16 on 2 cores, as measured (quickdraft.5 build): one token 19 ms, then 2 tokens ~2x that
    (batch kernels), and ~4.6 ms per token more."""
    return 19.0 if n == 1 else 36.0 + 4.6 * (n - 2)


def test_a_draft_model_almost_as_slow_as_the_target_is_not_chosen():
    """A draft model at 0.7 of a target step per token never pays, however good its drafts: with the
    verify curve above and 97% acceptance, its best k (6) gives ~46 tok/s against the target alone's 53. The
    controller once kept choosing it on a fresh engine, because it compared with a target-alone step
    extrapolated from the batch sizes (~1.7x too slow) before it had measured one."""
    world = World(cpu_verify, {"model": 13.3}, lambda d, r: 0.97)
    best = max(fixed_throughput(world, "model", k, 0.97) for k in range(1, 17))
    assert best < 0.9 * 1000 / 19.0
    sim = Sim(world, seed=3)
    controller = sim.controller("model")
    log = simulate(controller, sim, 300)
    assert log.speculating(start=20) < 0.1
    assert log.throughput() >= 0.95 * 1000 / 19.0


# ---- the controller in simulated worlds ----------------------------------------------------------------
@pytest.mark.parametrize(
    "a, step_ms, per_token_ms, draft_ms",
    [
        (0.9, 10.0, 1.0, 1.0),  # good draft, cheap verification: a long k pays
        (0.6, 10.0, 2.0, 1.5),  # mediocre draft: a short k
        (0.8, 10.0, 0.3, 0.2),  # almost free drafting and verification: long k again
        (0.95, 20.0, 10.0, 0.0),  # verification costs half a step a token (Gemma's vocabulary on a CPU)
    ],
)
def test_picks_the_k_that_maximises_throughput(a, step_ms, per_token_ms, draft_ms):
    world = World(linear_verify(step_ms, per_token_ms), {"draft": draft_ms}, lambda d, r: a)
    by_k = {k: fixed_throughput(world, "draft", k, a) for k in range(1, 17)}
    k_star = max(by_k, key=by_k.get)
    sim = Sim(world, seed=1)
    log = simulate(sim.controller("draft"), sim, 3000)
    # after learning, the controller mostly picks the optimum (or a neighbour within 2% of it)
    near = {k for k, t in by_k.items() if t >= 0.98 * by_k[k_star]}
    assert log.k_mode(start=500) in near, (log.k_mode(start=500), k_star, by_k)
    assert log.throughput(start=500) >= 0.95 * by_k[k_star]
    assert log.throughput(start=500) > 1.05 * (1000 / step_ms)  # and it beats the target alone


def test_turns_speculation_off_when_drafts_are_always_rejected():
    sim = Sim(World(linear_verify(10.0, 1.5), {"draft": 2.0}, lambda d, r: 0.0))
    log = simulate(sim.controller("draft"), sim, 1000)
    assert log.speculating(start=100) < 0.03  # only sparse probes, with backoff
    probes = [i for i, r in enumerate(log.rounds) if r[0] != "none"]
    gaps = [b - a for a, b in zip(probes, probes[1:])]
    assert len(probes) >= 5  # it keeps looking...
    assert gaps == sorted(gaps) and gaps[-1] >= 8 * gaps[1]  # ...ever more rarely
    assert log.throughput(start=100) >= 0.97 * (1000 / 10.0)


def test_comes_back_when_drafts_are_accepted_again():
    switch = 600
    sim = Sim(World(linear_verify(10.0, 1.5), {"draft": 2.0}, lambda d, r: 0.0 if r < switch else 0.9))
    log = simulate(sim.controller("draft"), sim, 1400)
    assert log.speculating(400, switch) < 0.05
    settle = switch + 128 + 10  # at most one maximal probe interval after the change
    assert log.speculating(settle) > 0.95
    assert log.throughput(settle) > 1.5 * (1000 / 10.0)


def test_a_free_drafter_is_judged_in_shadow():
    """An n-gram-like drafter (microseconds) is scored on every round's output without being used: off at no
    cost while its drafts are wrong, back within a few rounds once they are right."""
    switch = 600
    sim = Sim(World(linear_verify(10.0, 5.0), {"ngram": 0.0001}, lambda d, r: 0.0 if r < switch else 0.95))
    controller = sim.controller("ngram")
    log = simulate(controller, sim, 1000)
    wasted = sum(1 for r in log.rounds[20:switch] if r[0] != "none")
    assert wasted == 0  # no paid probes: shadows tell it the drafts would fail
    ngram = controller.drafters[1]
    shadows = [c for c in ngram.calls[:switch] if c[0] > 100]  # asked in rounds that did not use it
    assert len(shadows) > 0.9 * (switch - 20)
    assert all(k == controller.max_k and sampling is SAMPLING for _, k, sampling in shadows)
    assert log.speculating(switch + 10) > 0.95
    assert log.throughput(start=20, end=switch) >= 0.99 * (1000 / 10.0)


def test_no_proposal_rounds_cost_nothing_and_good_ones_are_taken():
    """The drafter proposes in 10% of rounds, always right: speculate exactly then, and never lose."""
    sim = Sim(World(linear_verify(10.0, 5.0), {"ngram": 0.0001}, lambda d, r: 1.0, lambda d, r: 0.1))
    log = simulate(sim.controller("ngram"), sim, 2000)
    assert log.throughput(start=100) > 1000 / 10.0


def test_picks_the_drafter_that_pays_more():
    """A cheap n-gram drafter that rarely proposes against an accurate but costly draft model, both ways."""
    verify = linear_verify(10.0, 1.0)
    sim = Sim(World(verify, {"ngram": 0.0001, "model": 2.0},
                    lambda d, r: 0.6 if d == "ngram" else 0.9, lambda d, r: 0.2 if d == "ngram" else 1.0), seed=3)
    log = simulate(sim.controller("ngram", "model"), sim, 1500)
    assert log.share("model", start=300) > 0.9

    sim = Sim(World(verify, {"ngram": 0.0001, "model": 9.0},
                    lambda d, r: 0.9, lambda d, r: 0.7 if d == "ngram" else 1.0), seed=4)
    log = simulate(sim.controller("ngram", "model"), sim, 1500)
    assert log.share("ngram", start=300) > 0.6 and log.share("model", start=300) < 0.05


def test_every_drafter_gets_tried():
    """A decent n-gram drafter listed first must not hide a better, never-tried draft model."""
    sim = Sim(World(linear_verify(10.0, 1.0), {"ngram": 0.0, "model": 0.5},
                    lambda d, r: 0.8 if d == "ngram" else 0.97), seed=5)
    log = simulate(sim.controller("ngram", "model"), sim, 600)
    assert log.share("model", start=100) > 0.9


def test_a_busier_machine_changes_the_level_not_the_choice():
    """Everything gets 3x slower at round 800 (another process took the cores): the same best k after."""
    a = 0.85
    quiet = World(linear_verify(10.0, 1.0), {"draft": 1.0}, lambda d, r: a)
    busy = World(lambda n: 3 * linear_verify(10.0, 1.0)(n), {"draft": 3.0}, lambda d, r: a)
    by_k = {k: fixed_throughput(quiet, "draft", k, a) for k in range(1, 17)}
    near = {k for k, t in by_k.items() if t >= 0.98 * max(by_k.values())}
    sim = Sim(quiet)
    controller = sim.controller("draft")
    log = simulate(controller, sim, 800)
    sim.world = busy
    simulate(controller, sim, 800, log=log)
    assert log.k_mode(start=300) in near
    assert log.k_mode(start=1000) in near
    assert controller.machine.costs.verify_seconds(1) == pytest.approx(0.030, rel=0.1)  # was 0.010


def test_costs_stay_true_when_speculation_comes_and_goes():
    """Verification costs about half a step per extra token (Gemma's 262k-row output layer on a CPU, as
    measured), and the drafts are good and bad in turns: the learnt costs must still match the truth."""
    world = World(lambda n: 10.0 + 8.0 * n, {"draft": 1.0}, lambda d, r: 0.97 if (r // 60) % 2 else 0.0)
    sim = Sim(world, seed=7)
    controller = sim.controller("draft")
    log = simulate(controller, sim, 1200)
    costs = controller.machine.costs
    assert costs.verify_seconds(1) == pytest.approx(0.018, rel=0.05)
    used = {r[1] + 1 for r in log.rounds[600:] if r[0] != "none"}  # the sizes it verifies
    assert used
    for n in used:
        assert costs.verify_seconds(n) / costs.verify_seconds(1) == pytest.approx(world.verify_ms(n) / 18.0, rel=0.1)
    # never much slower than the target alone: the probes that land in bad stretches cost a little (whether
    # one lands in a good stretch and turns speculation back on is luck of the interval, not asserted)
    assert log.throughput() >= 0.97 * 1000 / 18.0


def test_slow_samples_taken_in_a_busy_moment_do_not_keep_a_good_drafter_off():
    """Two batch verifications measured 10x too slow (another process had the cores), then the machine is
    quiet: the n-gram drafter's shadow record says its drafts are good, but the verify line through those
    two samples says they cannot pay, and only real rounds re-measure verification. Probes at the k its
    record asks for (while that size has few samples) must bring it back."""
    world = World(linear_verify(10.0, 1.0), {"ngram": 0.0001}, lambda d, r: 0.95)
    machine = MachineModel()
    costs = machine.costs
    for _ in range(5):
        costs.observe_verify(1, 0.010)
    costs.observe_verify(6, 0.150)
    costs.observe_verify(17, 0.260)
    costs.observe_draft("ngram", 4, 0, 0.0000004)
    sim = Sim(world, seed=11)
    controller = sim.controller("ngram", machine=machine)
    assert max(o.tokens_per_second for o in controller.options(50)[1:]) < controller.options(50)[0].tokens_per_second
    log = simulate(controller, sim, 600)
    assert log.speculating(start=300) > 0.9
    assert log.throughput(start=300) > 2 * 1000 / 10.0


def test_one_slow_drafting_sample_does_not_keep_a_cheap_drafter_off():
    """The n-gram lookup's first measured proposal took 30 ms a token (the interpreter paused in it), so it
    looks too costly to judge in shadow or to use; its drafts are good. Probes must measure it again."""
    world = World(linear_verify(10.0, 1.0), {"ngram": 0.0001}, lambda d, r: 0.95)
    machine = MachineModel()
    for n in (1, 1, 1, 3, 3, 3, 5, 5, 5):
        machine.costs.observe_verify(n, world.verify_ms(n) / 1e3)
    machine.costs.observe_draft("ngram", 2, 0, 0.060)
    sim = Sim(world, seed=13)
    controller = sim.controller("ngram", machine=machine)
    assert not controller.shadowable("ngram")
    assert controller.options(50)[1].tokens_per_second < controller.options(50)[0].tokens_per_second
    log = simulate(controller, sim, 400)
    assert log.speculating(start=200) > 0.9
    assert controller.shadowable("ngram")


def test_machine_costs_are_shared_acceptance_is_per_request():
    machine = MachineModel()
    sim = Sim(World(linear_verify(10.0, 1.0), {"draft": 1.0}, lambda d, r: 0.9))
    simulate(sim.controller("draft", machine=machine), sim, 300)
    assert machine.costs.verify_seconds(1) == pytest.approx(0.010, rel=0.02)  # rarely measured: fitted
    assert machine.costs.verify_seconds(9) == pytest.approx(0.018, rel=0.02)
    assert machine.costs.draft_seconds("draft", 3) == pytest.approx(0.003, rel=0.02)

    # a new request on the same machine: costs known from the start, acceptance starts from the prior
    fresh = sim.controller("draft", machine=machine)
    fresh.start([1, 2, 3], SAMPLING)
    assert fresh._stats["draft"].asked == 0
    a_prior, _ = machine.history.prior("draft")
    assert a_prior > 0.8  # what earlier requests saw
    sim.world = World(sim.world.verify_ms, sim.world.draft_ms, lambda d, r: 0.0)
    log = simulate(fresh, sim, 300)
    assert log.speculating(start=50) < 0.05


def test_decisions_are_visible():
    sim = Sim(World(linear_verify(10.0, 1.0), {"draft": 1.0}, lambda d, r: 0.9))
    controller = sim.controller("draft")
    simulate(controller, sim, 200)
    info = controller.describe()
    assert info["policy"] == "auto"
    assert sum(controller.choices.values()) == 200
    assert any(key.startswith("draft:") for key in controller.choices)
    assert {o["drafter"] for o in info["options"]} == {"none", "draft"}
    assert info["costs"]["verify_ms"]


def test_start_reaches_every_drafter():
    sim = Sim(World(linear_verify(10.0, 1.0), {}, lambda d, r: 0.5))
    inner, none = FakeDrafter("draft", sim), NoDrafter()
    controller = AdaptiveController([inner], none)
    assert controller.drafters == [none, inner]
    controller.start([1, 2, 3], SAMPLING)
    assert inner.started_with == [1, 2, 3]


def test_catchup_is_the_context_a_drafter_has_not_processed():
    """All of the context at first (less the token every round adds anyway); after a drafting round, none;
    then what was emitted while it was not used."""
    sim = Sim(World(linear_verify(10.0, 1.0), {"draft": 1.0}, lambda d, r: 0.5))
    controller = sim.controller("draft")
    context = [1, 2, 3, 4]  # a prompt of 3, and the prefill round's token
    controller.start(context[:3], SAMPLING)
    assert controller.unseen("draft", len(context)) == 3
    drafter, k = controller.choose(context)  # a fresh engine measures the target alone's step first
    assert (drafter.name, k) == ("none", 0)
    context += [5]
    controller.observe(Round([5], None, "none", 0, 0, 0, 0.0, 0.010), context)
    assert controller.unseen("draft", len(context)) == 4
    drafter, k = controller.choose(context)  # never seen, optimistic: it drafts
    assert drafter.name == "draft" and k > 0
    context += [6, 7]  # one draft token accepted, then the target's
    controller.observe(Round([6, 7], None, "draft", k, k, 1, 0.001 * k, 0.010), context)
    assert controller.unseen("draft", len(context)) == 0
    assert controller.unseen("draft", len(context) + 5) == 5


def test_the_first_reported_round_is_measured():
    """The loop never reports the prefill round, so the first round observe sees is a real one and its
    verify time counts (it was once dropped as if it were the prefill)."""
    controller = AdaptiveController([], NoDrafter())
    controller.start([1, 2, 3], SAMPLING)
    drafter, k = controller.choose([1, 2, 3, 4])
    assert (drafter.name, k) == ("none", 0)  # the target alone is k == 0
    controller.observe(Round([5], None, "none", 0, 0, 0, 0.0, 0.012), [1, 2, 3, 4, 5])
    assert controller.machine.costs.describe()["verify_ms"] == {1: 12.0}
    assert controller.machine.costs.verify_seconds(1) == pytest.approx(0.012)


def test_a_draft_the_grammar_cut_counts_as_rejected_where_it_was_cut():
    """A drafter proposed 4 tokens, a grammar kept the first 2 and the target accepted both: position 2 was
    judged wrong (the target could not emit that token), so the drafter's record says so; its verify cost is
    the 3 positions actually verified."""
    sim = Sim(World(linear_verify(10.0, 1.0), {"draft": 1.0}, lambda d, r: 0.5))
    rates = {}
    for proposed in (None, 4):
        controller = sim.controller("draft")
        controller.start([1, 2, 3], SAMPLING)
        context = [1, 2, 3, 4, 5, 6, 7]  # prompt, the prefill round's token, then 2 accepted + the target's
        controller.observe(Round([5, 6, 7], None, "draft", 4, 2, 2, 0.004, 0.012, proposed), context)
        stats = controller._stats["draft"]
        rates[proposed] = (list(stats.tried[:4]), list(stats.accepted[:4]))
        assert controller.machine.costs.describe()["verify_ms"] == {3: 12.0}
    tried, accepted = rates[4]
    assert tried[:3] == [1, 1, 1] and accepted[:3] == [1, 1, 0]  # position 2: a rejection
    assert rates[None][0][2:3] in ([], [0])  # without the cut nothing was judged at position 2
