"""How much of a request the engine's own Python costs, next to llama.cpp.

Runs greedy generation with the n-gram drafter (the cheapest drafter, so the engine's share is largest)
on chat-formatted Spec-Bench prompts, and compares the time spent inside llama_decode with the wall time of
the whole request. Optionally profiles the same run with pyinstrument.

    .venv/bin/python scripts/overhead.py [--target gemma-3-270m-q8_0] [--prompts 8] [--max-tokens 128]
"""

from __future__ import annotations

import argparse
import json
import time
from importlib import resources

from quickdraft import Engine


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", default="gemma-3-270m-q8_0")
    ap.add_argument("--draft", default="ngram")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--profile", action="store_true", help="also print a pyinstrument profile")
    args = ap.parse_args()

    engine = Engine.load(args.target, args.draft, k=args.k, threads=args.threads)
    rows = [json.loads(x) for x in resources.files("quickdraft").joinpath("data/prompts/spec_bench.jsonl").read_text().splitlines()]
    by_cat = {}
    for r in rows:
        by_cat.setdefault(r["category"], r)
    prompts = [engine.chat_prompt([{"role": "user", "content": r["turns"][0]}]) for r in list(by_cat.values())[: args.prompts]]

    model = engine.target.model
    for p in prompts:  # prefill every prompt once, so the measurement is about decoding
        model.reset()
        model.evaluate(p, 1)

    profiler = None
    if args.profile:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0005)
        profiler.start()
    wall = decode = 0.0
    tokens = rounds = 0
    for p in prompts:
        model.reset()
        model.evaluate(p, 1)  # the prompt's prefill is not the engine's overhead: leave it out
        d0 = model.decode_seconds
        t0 = time.perf_counter()
        r = engine.generate(p, max_tokens=args.max_tokens, draft=args.draft, k=args.k)
        wall += time.perf_counter() - t0
        decode += model.decode_seconds - d0
        tokens += len(r.tokens)
        rounds += r.stats.rounds
    if profiler:
        profiler.stop()
        print(profiler.output_text(unicode=True, color=False, show_all=False))
    outside = wall - decode
    print(f"target {args.target}, draft {args.draft}, k={args.k}, {len(prompts)} prompts, {tokens} tokens, {rounds} rounds")
    print(f"wall {wall:.3f} s, inside llama_decode {decode:.3f} s, outside {outside:.3f} s")
    print(f"engine overhead: {1e3 * outside / rounds:.3f} ms per round, {1e3 * outside / tokens:.3f} ms per token, "
          f"{100 * outside / wall:.2f}% of the time")


if __name__ == "__main__":
    main()
