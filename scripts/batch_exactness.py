"""Does llama.cpp give the same logits for a batch of tokens as for the same tokens one at a time?

Speculative verification evaluates k+1 tokens in one batch; llama.cpp's own greedy decoding (the reference
quickdraft must reproduce: `llama_cpp.Llama(..., flash_attn=False)`) reads the prompt in chunks of n_batch
(512) tokens from its start, then decodes one token at a time. This prints, per model and runtime setting
(flash attention on/off, KV cache type):

1. batch vs single: the largest |logit difference| between evaluating B tokens in one batch and the same B
   tokens one at a time, after a prefix ("KV length") L. The prefix is read as llama.cpp reads a prompt
   (chunks of 512 from its start), the same prefix for both; B runs over every size 2..max(--batches), the
   table shows --batches, and "exact<=" is the largest B such that every batch up to B is bit-exact
   (K cap = that - 1);
2. chunking: a prompt of L tokens read in chunks of 512 from the start (llama.cpp) vs remainder first
   (quickdraft before this change) vs one token at a time: largest |difference| over the last prompt
   position's logits and the next 4 single-token steps;
3. (--vs-llama, flash attention off, F16 KV) quickdraft's LlamaModel vs llama_cpp.Llama itself: a prompt of
   L tokens then 8 single steps, largest |difference| (0 = the same computation).

    .venv/bin/python scripts/batch_exactness.py smollm2-135m gemma-3-270m-q8_0 --vs-llama --json out.json

0 means bit-exact. The llama.cpp build is whichever llama-cpp-python this Python imports.
"""

from __future__ import annotations

import argparse
import json
import time
from importlib import resources

import numpy as np

from quickdraft import model_store
from quickdraft.llama_model import LlamaModel, system_info

SETTINGS = {"fa-off/f16": (False, "f16"), "fa-on/f16": (True, "f16"), "fa-on/q8_0": (True, "q8_0")}


def corpus_text() -> str:
    """Real, varied text: Spec-Bench's long rag and summarization prompts, in file order."""
    rows = [json.loads(line) for line in
            resources.files("quickdraft").joinpath("data", "prompts", "spec_bench.jsonl").read_text().splitlines()
            if line.strip()]
    return "\n\n".join(t for r in rows if r["category"] in ("rag", "summarization") for t in r["turns"])


def read_prompt(model: LlamaModel, tokens: list[int], how: str) -> np.ndarray:
    """Make the cache hold `tokens`, read the way `how` says; the last position's logits."""
    model.reset()
    if how == "llama.cpp":  # chunks of n_batch from the start (LlamaModel.evaluate chunks that way)
        ends = [len(tokens)]
    elif how == "remainder-first":  # the short chunk first, then full chunks
        ends = range(len(tokens) % model.n_batch or model.n_batch, len(tokens) + 1, model.n_batch)
    elif how == "single":
        ends = range(1, len(tokens) + 1)
    else:
        raise ValueError(how)
    for end in ends:
        logits = model.evaluate(tokens[:end], 1)
    return logits[0].copy()


def batch_vs_single(model: LlamaModel, tokens: list[int], kv_len: int, max_b: int) -> dict[int, float]:
    """{B: max |logit diff|} for B = 2..max_b, batch of B after kv_len tokens vs B single steps."""
    read_prompt(model, tokens[:kv_len], "llama.cpp")
    single = [model.evaluate(tokens[: kv_len + i + 1], 1)[0].copy() for i in range(max_b)]
    out = {}
    for b in range(2, max_b + 1):
        batch = model.evaluate(tokens[: kv_len + b], b)  # drops the tail back to kv_len, then one batch
        out[b] = max(float(np.abs(batch[i] - single[i]).max()) for i in range(b))
    return out


def steps_after_prompt(model: LlamaModel, tokens: list[int], prompt_len: int, how: str, steps: int) -> np.ndarray:
    rows = [read_prompt(model, tokens[:prompt_len], how)]
    rows += [model.evaluate(tokens[: prompt_len + i + 1], 1)[0].copy() for i in range(steps)]
    return np.stack(rows)


def llama_steps(llm, tokens: list[int], prompt_len: int, steps: int) -> np.ndarray:
    """llama_cpp.Llama reading the prompt (Llama.eval: chunks of n_batch) then single tokens."""
    import llama_cpp

    llm.reset()
    rows = []
    llm.eval(tokens[:prompt_len])
    n_vocab = llm.n_vocab()
    rows.append(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1), shape=(n_vocab,)).copy())
    for i in range(steps):
        llm.eval([tokens[prompt_len + i]])
        rows.append(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1), shape=(n_vocab,)).copy())
    return np.stack(rows)


def build_label() -> str:
    info = system_info()["system_info"]
    return "llamafile-on" if "LLAMAFILE = 1" in info else "llamafile-off"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+")
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--batches", nargs="+", type=int, default=[2, 3, 5, 9, 17, 33])
    ap.add_argument("--kv-lens", nargs="+", type=int, default=[100, 600, 1500, 3000])
    ap.add_argument("--chunking", nargs="*", type=int, default=[600, 1500],
                    help="prompt lengths for the chunking comparison (none: skip)")
    ap.add_argument("--chunking-single-max", type=int, default=1500,
                    help="read prompts one token at a time only up to this length (slow)")
    ap.add_argument("--vs-llama", action="store_true", help="also compare with llama_cpp.Llama (fa-off/f16)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-ctx", type=int, default=4096)
    ap.add_argument("--json", help="append one JSON object per result to this file")
    args = ap.parse_args()

    build = build_label()
    max_b = max(args.batches)
    print(f"# build: {build}; {system_info()['system_info']}", flush=True)
    results = []

    def emit(rec: dict) -> None:
        rec = {"build": build, "threads": args.threads, **rec}
        results.append(rec)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(rec) + "\n")

    for name in args.models:
        path = model_store.resolve(name)
        for setting in args.settings:
            fa, kv = SETTINGS[setting]
            m = LlamaModel(path, threads=args.threads, n_ctx=args.n_ctx, flash_attn=fa, kv_type=kv, name=name)
            tokens = m.tokenize(corpus_text())
            assert len(tokens) >= max(args.kv_lens) + max_b, f"corpus too short: {len(tokens)} tokens"
            for kv_len in args.kv_lens:
                t0 = time.perf_counter()
                d = batch_vs_single(m, tokens, kv_len, max_b)
                exact = 1
                while exact + 1 in d and d[exact + 1] == 0.0:
                    exact += 1
                cells = "  ".join(f"B={b}:{d[b]:.3g}" for b in args.batches)
                print(f"{build:13s} {name:18s} {setting:10s} L={kv_len:<5d} {cells}  exact<={exact}"
                      f"  ({time.perf_counter() - t0:.0f}s)", flush=True)
                emit({"kind": "batch", "model": name, "setting": setting, "kv_len": kv_len,
                      "diffs": {str(b): v for b, v in d.items()}, "exact_upto": exact})
            for plen in args.chunking:
                t0 = time.perf_counter()
                ref = steps_after_prompt(m, tokens, plen, "llama.cpp", 4)
                rem = steps_after_prompt(m, tokens, plen, "remainder-first", 4)
                line = f"remainder-first:{float(np.abs(ref - rem).max()):.3g}"
                rec = {"kind": "chunking", "model": name, "setting": setting, "prompt_len": plen,
                       "remainder_first": float(np.abs(ref - rem).max())}
                if plen <= args.chunking_single_max:
                    one = steps_after_prompt(m, tokens, plen, "single", 4)
                    rec["single"] = float(np.abs(ref - one).max())
                    line += f"  one-at-a-time:{rec['single']:.3g}"
                print(f"{build:13s} {name:18s} {setting:10s} prompt {plen} chunked 512-from-start vs {line}"
                      f"  ({time.perf_counter() - t0:.0f}s)", flush=True)
                emit(rec)
            if args.vs_llama and setting == "fa-off/f16":
                import llama_cpp

                llm = llama_cpp.Llama(model_path=str(path), n_ctx=args.n_ctx, n_threads=args.threads,
                                      n_threads_batch=args.threads, flash_attn=False, verbose=False)
                for plen in sorted(set(args.kv_lens + args.chunking)):
                    ref = llama_steps(llm, tokens, plen, 8)
                    ours = steps_after_prompt(m, tokens, plen, "llama.cpp", 8)
                    diff = float(np.abs(ref - ours).max())
                    print(f"{build:13s} {name:18s} {setting:10s} prompt {plen} + 8 steps: LlamaModel vs "
                          f"llama_cpp.Llama {diff:.3g}", flush=True)
                    emit({"kind": "vs_llama", "model": name, "setting": setting, "prompt_len": plen, "diff": diff})
                llm.close()
            m.close()


if __name__ == "__main__":
    main()
