"""Replay `auto`'s choices over a bench's greedy answers, without running the model: the real n-gram drafter
and adaptive controller, a stand-in target that accepts exactly the tokens the target alone wrote, and the
verify costs `auto` learnt in that bench run (results.json's `learnt_costs`, interpolated between sizes).
An approximation for comparing controller changes on the same answers: the prompt is left out of the
n-gram drafter's context (results.json does not keep prompt tokens), and drafting costs nothing.

    .venv/bin/python scripts/auto_replay.py bench-out/results.json [CATEGORY]
"""

from __future__ import annotations

import json
import sys

from quickdraft.controller import AdaptiveController, MachineModel
from quickdraft.drafters import NgramDrafter, NoDrafter
from quickdraft.generate import Round
from quickdraft.sampling import SamplingParams

GREEDY = SamplingParams(temperature=0.0, seed=0)


def verify_costs(results: dict) -> dict[int, float]:
    """The learnt verify costs of the auto run that had measured the most sizes."""
    learnt = max((r["learnt_costs"] for r in results["runs"] if r.get("learnt_costs")),
                 key=lambda c: len(c["verify_ms"]))
    return {int(n): ms / 1e3 for n, ms in learnt["verify_ms"].items()}


def interpolate(table: dict[int, float], n: int) -> float:
    """Between the nearest measured sizes; a batch size (n >= 2) only from batch sizes (one token runs
    other kernels and costs about half of two)."""
    if n in table:
        return table[n]
    sizes = sorted(s for s in table if s >= 2 or n == 1)
    lo = max((s for s in sizes if s < n), default=sizes[0])
    hi = min((s for s in sizes if s > n), default=sizes[-1])
    return table[lo] if hi == lo else table[lo] + (table[hi] - table[lo]) * (n - lo) / (hi - lo)


def replay(answer: list[int], machine: MachineModel, costs: dict[int, float]) -> tuple[float, int, dict]:
    """(seconds, rounds that drafted and had nothing accepted, the controller's choices) for one answer."""
    controller = AdaptiveController([NgramDrafter(4, 1)], NoDrafter(), machine, max_k=16)
    context = answer[:1]
    controller.start(context, GREEDY)
    i, seconds, wasted = 1, 0.0, 0
    while i < len(answer):
        drafter, k = controller.choose(context)
        k = min(k, len(answer) - i - 1)
        draft = drafter.propose(context, k, GREEDY)[:k] if k else []
        accepted = 0
        while accepted < len(draft) and draft[accepted] == answer[i + accepted]:
            accepted += 1
        emitted = answer[i : i + accepted + 1]
        cost = interpolate(costs, len(draft) + 1)
        seconds += cost
        context = context + emitted
        controller.observe(Round(emitted, None, drafter.name if k else "none", k, len(draft), accepted,
                                 0.0, cost), context)
        i += len(emitted)
        wasted += bool(draft) and accepted == 0
    return seconds, wasted, dict(controller.choices)


def main() -> None:
    results = json.load(open(sys.argv[1]))
    only = sys.argv[2] if len(sys.argv) > 2 else None
    costs = verify_costs(results)
    machine = MachineModel()
    total = alone_total = 0.0
    wasted_total = 0
    for run in (r for r in results["runs"] if r["config"] == "target alone"):
        seconds, wasted, choices = replay(run["tokens"], machine, costs)
        alone = interpolate(costs, 1) * (len(run["tokens"]) - 1)
        total, alone_total, wasted_total = total + seconds, alone_total + alone, wasted_total + wasted
        if only in (None, run["category"]):
            top = dict(sorted(choices.items(), key=lambda c: -c[1])[:4])
            print(f"{run['category']:14s} {run['prompt_id']}/{run['turn']}  speedup {alone / seconds:.2f}  "
                  f"wasted rounds {wasted}  {top}")
    print(f"overall speedup {alone_total / total:.3f}, wasted rounds {wasted_total}")


if __name__ == "__main__":
    main()
