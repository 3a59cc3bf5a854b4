"""Replay n-gram drafting over the target's own greedy answers: how many tokens each rule drafts, how many
the target accepts, and what that would cost, without the noise of timing whole generations.

Greedy output does not depend on the drafter, so one target-alone answer per prompt decides every round a
drafter could play on it: propose from the context, accept the prefix that matches the answer, move on by
the accepted tokens plus the target's own. Each round's cost is the measured time to verify its tokens
(verify(n): a pass over n tokens with logits at every position, median of 5, after a 300-token prefix).

Prompts are held out from `quickdraft bench --per-category 2`: the 3rd and 4th of every Spec-Bench category,
first turn, rendered with the target's chat template. Answers are cached in the output folder.

    .venv/bin/python scripts/ngram_replay.py gemma-3-270m-f16 [--out /tmp/replay] [--max-tokens 128]

The rules compared: `counted`, quickdraft's NgramDrafter (quickdraft.drafters: most frequent follower,
drafted while the context backs it), and `latest`, the rule it replaced (the longest n = 4..2 with an
earlier occurrence; what followed its latest occurrence, copied up to k).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict
from pathlib import Path

from quickdraft.bench.prompts import load_suite
from quickdraft.drafters import NgramDrafter
from quickdraft.engine import Engine
from quickdraft.sampling import SamplingParams

GREEDY = SamplingParams()


class LatestCopy:
    """The previous rule, kept here for comparison only."""

    def __init__(self, max_n=4, min_n=2):
        self.max_n, self.min_n = max_n, min_n

    def start(self, prompt):
        pass

    def propose(self, context, k, sampling):
        L = len(context)
        for n in range(min(self.max_n, L - 1), self.min_n - 1, -1):
            key = context[L - n :]
            for e in range(L - 1, n - 1, -1):
                if context[e - n : e] == key:
                    return list(context[e : min(e + k, L)])
        return []


def held_out(per_category=(2, 3)):
    seen = defaultdict(int)
    for p in load_suite("spec-bench"):
        if seen[p.category] in per_category:
            yield p
        seen[p.category] += 1


def answers(engine: Engine, out: Path, max_tokens: int) -> list[dict]:
    cache = out / "answers.json"
    if cache.exists():
        return json.loads(cache.read_text())
    rows = []
    for p in held_out():
        prompt = engine.chat_prompt([{"role": "user", "content": p.turns[0]}])
        result = engine.generate(prompt, max_tokens=max_tokens, draft="none")
        rows.append({"id": p.id, "category": p.category, "prompt": prompt, "answer": result.tokens})
        print(f"  {p.category:15s} {len(prompt):5d} prompt tokens, {len(result.tokens)} answer tokens", flush=True)
    cache.write_text(json.dumps(rows))
    return rows


def verify_curve(engine: Engine, max_n: int) -> list[float]:
    model = engine.tokenizer
    text = "The history of the region spans many centuries, and its people have long traded by sea. " * 60
    tokens = model.tokenize(text)
    curve = [0.0]
    for n in range(1, max_n + 1):
        times = []
        for _ in range(5):
            model.evaluate(tokens[:300], 1)
            t = time.perf_counter()
            model.evaluate(tokens[: 300 + n], n)
            times.append(time.perf_counter() - t)
        curve.append(statistics.median(times))
    return curve


def replay(drafter, prompt, answer, k):
    drafter.start(prompt)
    context = list(prompt)
    end = len(prompt) + len(answer)
    full = list(prompt) + list(answer)
    rounds = drafted = accepted = 0
    lengths = []
    while len(context) < end:
        room = end - len(context) - 1
        proposal = drafter.propose(context, min(k, room), GREEDY) if room > 0 else []
        n = 0
        while n < len(proposal) and proposal[n] == full[len(context) + n]:
            n += 1
        rounds += 1
        drafted += len(proposal)
        accepted += n
        lengths.append(len(proposal))
        context = full[: len(context) + n + 1]
    return rounds, drafted, accepted, lengths


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("target")
    ap.add_argument("--out", default="/tmp/ngram-replay")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--k", type=int, nargs="+", default=[4, 8, 16])
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    engine = Engine.load(args.target, draft="none", threads=2)
    rows = answers(engine, out, args.max_tokens)
    curve = verify_curve(engine, max(args.k) + 1)
    print("verify ms: " + ", ".join(f"{n}: {1e3 * s:.1f}" for n, s in enumerate(curve) if n))
    rules = {"latest": LatestCopy, "counted": NgramDrafter}
    print(f"{'rule':8s} {'k':>3s} {'accept':>7s} {'tok/round':>9s} {'drafted/round':>13s} {'est. x target':>13s}")
    per_cat: dict[tuple[str, int], dict[str, float]] = {}
    for k in args.k:
        for name, make in rules.items():
            tot = defaultdict(float)
            for row in rows:
                rounds, drafted, acc, lengths = replay(make(), row["prompt"], row["answer"], k)
                seconds = sum(curve[n + 1] for n in lengths)
                tokens = len(row["answer"])
                for key, v in (("rounds", rounds), ("drafted", drafted), ("accepted", acc),
                               ("seconds", seconds), ("tokens", tokens)):
                    tot[key] += v
                cat = per_cat.setdefault((name, k), defaultdict(float))
                cat[row["category"] + ":s"] += seconds
                cat[row["category"] + ":t"] += tokens
            alone = tot["tokens"] * curve[1]
            print(f"{name:8s} {k:3d} {tot['accepted'] / max(tot['drafted'], 1):7.0%} "
                  f"{tot['tokens'] / tot['rounds']:9.2f} {tot['drafted'] / tot['rounds']:13.2f} "
                  f"{alone / tot['seconds']:12.2f}x")
    cats = sorted({row["category"] for row in rows})
    print("\nestimated speedup over the target alone, per category")
    print(f"{'category':15s} " + " ".join(f"{name}:{k:<6d}" for k in args.k for name in rules))
    for c in cats:
        cells = []
        for k in args.k:
            for name in rules:
                d = per_cat[(name, k)]
                cells.append(f"{d[c + ':t'] * curve[1] / d[c + ':s']:>{len(name) + 7}.2f}x")
        print(f"{c:15s} " + " ".join(cells))


if __name__ == "__main__":
    main()
