"""What `serve --rpc` pays for keeping its target in a child node process (quickdraft.node.supervisor) against
`--rpc-in-process`: the same greedy requests through one local rpc-server worker, one way after the other
(one server at a time: two would share the cores).

    .venv/bin/python scripts/rpc_hop_cost.py [--model smollm2-135m] [--requests 6] [--max-tokens 96]

Prints tokens per second for each way and checks that both answered the same text.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import httpx

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from test_start_order import Serve  # noqa: E402  (a `quickdraft serve` process whose start is not waited for)

from quickdraft.node.rpc import start_worker  # noqa: E402
from quickdraft.server.process import free_port  # noqa: E402

PROMPTS = ["Write a short story about a lighthouse keeper.", "Explain how a refrigerator works.",
           "List the steps to bake bread at home."]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--requests", type=int, default=6)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    ways = {"child node (default)": [], "--rpc-in-process": ["--rpc-in-process"]}
    times = {name: [0.0, 0] for name in ways}
    texts: dict[str, list[str]] = {name: [] for name in ways}
    for name, extra in ways.items():  # one server at a time: they would share the cores
        port = free_port()
        worker = start_worker(port=port, threads=args.threads, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        serve = Serve("--target", args.model, "--draft", "ngram", "--threads", str(args.threads),
                      "--rpc", f"127.0.0.1:{port}", *extra)
        try:
            serve.wait_status(200, timeout=600)
            httpx.post(f"{serve.root}/v1/completions", timeout=300,
                       json={"prompt": "Hello", "max_tokens": 8, "temperature": 0})  # warm-up
            for i in range(args.requests):
                t0 = time.perf_counter()
                r = httpx.post(f"{serve.root}/v1/completions", timeout=300,
                               json={"prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": args.max_tokens,
                                     "temperature": 0}).json()
                times[name][0] += time.perf_counter() - t0
                times[name][1] += r["usage"]["completion_tokens"]
                texts[name].append(r["choices"][0]["text"])
        finally:
            serve.stop()
            worker.kill()
            worker.wait()
    for name, (seconds, tokens) in times.items():
        print(f"{name:22s} {tokens} tokens in {seconds:.2f} s: {tokens / seconds:.1f} tok/s")
    same = texts["child node (default)"] == texts["--rpc-in-process"]
    print(f"same text both ways: {same} ({args.requests} requests, {args.model}, one rpc-server worker on loopback)")


if __name__ == "__main__":
    main()
