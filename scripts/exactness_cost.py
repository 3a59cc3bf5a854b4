"""What the exactness settings cost: prompt prefill (1,024 tokens), one decoding step and a 5-token
verification, for one model, with quickdraft's exact settings (flash attention off) and with llama.cpp's
defaults (LlamaModel(exact=False): flash attention where supported). Best of 3.

    .venv/bin/python scripts/exactness_cost.py gemma-3-270m-q8_0 [--threads 2]
"""

import argparse
import time

from quickdraft import model_store
from quickdraft.llama_model import LlamaModel

ap = argparse.ArgumentParser()
ap.add_argument("model")
ap.add_argument("--threads", type=int, default=2)
args = ap.parse_args()
for exact in (True, False):
    m = LlamaModel(model_store.resolve(args.model), threads=args.threads, exact=exact)
    t = m.tokenize("The history of the region spans many centuries, and its people have long traded by sea. " * 100)
    best_pf = best_dec = best_v = 1e9
    for _ in range(3):
        m.reset()
        s = time.perf_counter()
        m.evaluate(t[:1024], 1)
        best_pf = min(best_pf, time.perf_counter() - s)
        s = time.perf_counter()
        for i in range(1025, 1041):
            m.evaluate(t[:i], 1)
        best_dec = min(best_dec, (time.perf_counter() - s) / 16)
        m.evaluate(t[:1040], 1)
        s = time.perf_counter()
        m.evaluate(t[:1045], 5)
        best_v = min(best_v, time.perf_counter() - s)
    m.close()
    print(f"{args.model} exact={exact}: prefill {1024 / best_pf:.0f} tok/s, decode {1 / best_dec:.1f} tok/s, "
          f"verify5 {1e3 * best_v:.1f} ms")
