"""Acceptance of the coupled draws (quickdraft.coupling) against rejection sampling, on the same positions.

For each prompt (the first turn of the first Spec-Bench prompt of each category, chat-formatted), the target
alone samples an answer; then both models read that answer position by position. At each position, with
p the target's sampling distribution and q the draft's:
- coupled: the draft's race equals the target's race (the first draft token of a round is accepted), averaged
  over --draws noise seeds, the first being the request's own (the one that drew the target's token);
- rejection: sum(min(p, q)) = 1 - TV(p, q), the acceptance probability of the old rejection sampling;
- bound: (1 - TV) / (1 + TV), the coupling's guaranteed floor (Daliri, Musco, Suresh 2024);
- greedy: the two argmaxes agree.

    .venv/bin/python scripts/coupling_acceptance.py --categories 6 --max-tokens 48 --temperature 0.8
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import numpy as np

from quickdraft import Engine
from quickdraft.bench.prompts import load_suite
from quickdraft.coupling import coupled_token
from quickdraft.loading import open_model
from quickdraft.sampling import SamplingParams, distribution

COLUMNS = ("coupled", "rejection", "bound", "greedy")


def first_prompts(n: int) -> list[tuple[str, str]]:
    """(category, first turn) of the first prompt of each of the first n categories."""
    seen: dict[str, str] = {}
    for p in load_suite("spec-bench"):
        seen.setdefault(p.category, p.turns[0])
    return list(seen.items())[:n]


def walk(target, draft, prompt: list[int], output: list[int], params: SamplingParams, draws: int) -> dict:
    rows: dict[str, list[float]] = defaultdict(list)
    reproduced = 0
    for j in range(len(output)):
        seq, pos = prompt + output[:j], len(prompt) + j
        t = np.array(target.evaluate(seq, 1)[0])  # copies: the views die at the next call
        d = np.array(draft.evaluate(seq, 1)[0])
        reproduced += coupled_token(t, params, pos) == output[j]
        agree = [coupled_token(d, p, pos) == coupled_token(t, p, pos)
                 for p in (params.model_copy(update={"seed": params.seed + 7919 * r}) for r in range(draws))]
        overlap = float(np.minimum(distribution(t, params).to_dense(len(t)),
                                   distribution(d, params).to_dense(len(d))).sum())
        rows["coupled"].append(float(np.mean(agree)))
        rows["rejection"].append(overlap)
        rows["bound"].append(overlap / (2.0 - overlap))  # (1 - TV) / (1 + TV) with 1 - TV = overlap
        rows["greedy"].append(float(np.argmax(t) == np.argmax(d)))
    rows["reproduced"] = [float(reproduced)]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", default="gemma-3-270m-q8_0")
    ap.add_argument("--draft", default="gemma-3-270m")
    ap.add_argument("--categories", type=int, default=6, metavar="N", help="the first N Spec-Bench categories")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--min-p", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=1, help="prompt i is sampled with seed + i")
    ap.add_argument("--draws", type=int, default=8, help="noise seeds the coupled agreement is averaged over")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", action="store_true", help="print the figures as JSON instead of a table")
    args = ap.parse_args()
    if args.temperature <= 0:
        ap.error("--temperature must be > 0 (greedy decoding has no sampling to compare)")

    engine = Engine.load(args.target, draft="none", threads=args.threads)
    target = engine.target.model  # the same LlamaModel (quickdraft.loading.open_model) that generates
    draft = open_model(args.draft, threads=args.threads)
    results, positions = {}, 0
    for i, (category, question) in enumerate(first_prompts(args.categories)):
        params = SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                                min_p=args.min_p, seed=args.seed + i)
        prompt = engine.chat_prompt([{"role": "user", "content": question}])
        out = engine.generate(prompt, max_tokens=args.max_tokens, draft="none", sampling=params).tokens
        rows = walk(target, draft, prompt, out, params, args.draws)
        results[category] = rows
        positions += len(out)
        if int(rows["reproduced"][0]) != len(out):
            print(f"warning: {category}: the walk reproduced {int(rows['reproduced'][0])}/{len(out)} target tokens")
    overall = {c: [x for rows in results.values() for x in rows[c]] for c in COLUMNS}
    table = {cat: {"positions": len(rows["coupled"]), **{c: float(np.mean(rows[c])) for c in COLUMNS}}
             for cat, rows in [*results.items(), ("overall", overall)]}
    if args.json:
        print(json.dumps({"settings": vars(args), "figures": table}, indent=1))
        return
    print(f"target {args.target}, draft {args.draft}, temperature {args.temperature}, top_p {args.top_p}, "
          f"top_k {args.top_k}, min_p {args.min_p}, {args.draws} draws a position")
    print("| category | positions | coupled | rejection sampling | (1-TV)/(1+TV) | greedy agreement |")
    print("| --- | --- | --- | --- | --- | --- |")
    for cat, f in table.items():
        name = f"**{cat}**" if cat == "overall" else cat
        print(f"| {name} | {f['positions']} | {f['coupled']:.3f} | {f['rejection']:.3f} | {f['bound']:.3f} "
              f"| {f['greedy']:.3f} |")


if __name__ == "__main__":
    main()
