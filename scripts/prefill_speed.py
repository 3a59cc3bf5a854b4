"""Prompt processing, single-step and 5-token-batch speed of the llama-cpp-python this interpreter has, at
quickdraft's exact settings (flash attention off, F16 KV cache): what exactness costs where a build differs
only in its kernels.

    .venv/bin/python scripts/prefill_speed.py MODEL.gguf [--tokens 1000]      # quickdraft's build
    OTHER_VENV/bin/python scripts/prefill_speed.py MODEL.gguf                  # e.g. a stock build

Uses llama_cpp alone (no quickdraft import), so any environment with llama-cpp-python runs it. Prints the
build's system info (LLAMAFILE = 1 or not), the best of 3 prefills of the first N tokens of README.md (logits
for the last token only, 512-token batches, as llama.cpp reads a prompt), then the median of 32 one-token
steps and of 8 five-token batches after it.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import time

import llama_cpp


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--tokens", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    llm = llama_cpp.Llama(model_path=args.model, n_ctx=4096, n_threads=args.threads, n_threads_batch=args.threads,
                          flash_attn=False, n_batch=512, n_ubatch=512, verbose=False)
    info = llama_cpp.llama_print_system_info().decode()
    text = (pathlib.Path(__file__).resolve().parent.parent / "README.md").read_text()
    tokens = llm.tokenize(text.encode())[: args.tokens]
    best = float("inf")
    for _ in range(3):
        llm.reset()  # forget the cached tokens: the next eval reads the whole prompt again
        t0 = time.perf_counter()
        llm.eval(tokens)
        best = min(best, time.perf_counter() - t0)
    steps = []
    for t in tokens[:32]:
        t0 = time.perf_counter()
        llm.eval([t])
        steps.append(time.perf_counter() - t0)
    batches = []
    for i in range(8):  # 5 tokens at once, as a verification of 4 drafted tokens
        t0 = time.perf_counter()
        llm.eval(tokens[32 + 5 * i: 37 + 5 * i])
        batches.append(time.perf_counter() - t0)
    print(f"llama-cpp-python {llama_cpp.__version__}, LLAMAFILE = {'1' if 'LLAMAFILE = 1' in info else '0'}, "
          f"{args.threads} threads, {pathlib.Path(args.model).name}")
    print(f"prefill {len(tokens)} tokens: {best:.3f} s ({len(tokens) / best:.0f} tok/s); after them, median "
          f"one-token step {statistics.median(steps) * 1000:.2f} ms, 5-token batch "
          f"{statistics.median(batches) * 1000:.2f} ms")


if __name__ == "__main__":
    main()
