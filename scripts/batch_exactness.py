"""Does verifying B tokens in one batch give the logits of decoding them one at a time? Per model and KV
cache type, prints the largest |logit difference| for batch sizes B at two context lengths (0 = bit-exact).

    .venv/bin/python scripts/batch_exactness.py gemma-3-270m-q8_0 gemma-3-270m-f16 gemma-3-270m --kv q8_0 f16
"""

from __future__ import annotations

import argparse

import numpy as np

from quickdraft import model_store
from quickdraft.llama_model import LlamaModel

KV_TYPES = {"f16": 1, "q8_0": 8}
TEXT = ("In the beginning the universe was created. This has made a lot of people very angry and been "
        "widely regarded as a bad move. ") * 200


def max_diffs(model: LlamaModel, context: int, batches: list[int]) -> dict[int, float]:
    tokens = model.tokenize(TEXT)
    prefix, tail = tokens[:context], tokens[context : context + max(batches)]
    model.reset()
    model.evaluate(prefix, 1)
    single = [model.evaluate(prefix + tail[: i + 1], 1)[0].copy() for i in range(len(tail))]
    out = {}
    for b in batches:
        model.reset()  # a fresh prefill each time: every prefix position computed exactly as for `single`
        model.evaluate(prefix, 1)
        batch = model.evaluate(prefix + tail[:b], b)
        out[b] = max(float(np.abs(batch[i] - single[i]).max()) for i in range(b))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--kv", nargs="+", default=["q8_0", "f16"], choices=sorted(KV_TYPES))
    ap.add_argument("--batches", nargs="+", type=int, default=[2, 3, 5, 9])
    ap.add_argument("--contexts", nargs="+", type=int, default=[100, 600])
    args = ap.parse_args()
    for name in args.models:
        for kv in args.kv:
            m = LlamaModel(model_store.resolve(name), threads=2, n_ctx=4096, kv_type=KV_TYPES[kv])
            cells = []
            for c in args.contexts:
                d = max_diffs(m, c, args.batches)
                cells += [f"ctx {c} B={b}: {v:.3g}" for b, v in d.items()]
            print(f"{name:20s} kv={kv:5s} " + ", ".join(cells), flush=True)
            m.close()


if __name__ == "__main__":
    main()
