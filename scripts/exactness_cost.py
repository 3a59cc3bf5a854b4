"""What the exactness settings cost: prompt prefill (1,024 tokens), one decoding step and a 5-token
verification, for one model with a Q8_0 (8) or F16 (1) KV cache. Run it under this project's build
(llamafile kernels off) and under a stock llama-cpp-python build to compare.

    .venv/bin/python scripts/exactness_cost.py gemma-3-270m-f16 8
"""

import time, sys
from quickdraft import model_store
from quickdraft.llama_model import LlamaModel
name = sys.argv[1]; kv = int(sys.argv[2])
m = LlamaModel(model_store.resolve(name), threads=2, kv_type=kv)
t = m.tokenize("The history of the region spans many centuries, and its people have long traded by sea. " * 100)
best_pf = best_dec = best_v = 1e9
for _ in range(3):
    m.reset(); s = time.perf_counter(); m.evaluate(t[:1024], 1); best_pf = min(best_pf, time.perf_counter() - s)
    s = time.perf_counter()
    for i in range(1025, 1041): m.evaluate(t[:i], 1)
    best_dec = min(best_dec, (time.perf_counter() - s) / 16)
    m.evaluate(t[:1040], 1); s = time.perf_counter(); m.evaluate(t[:1045], 5); best_v = min(best_v, time.perf_counter() - s)
print(f"{name} kv={kv}: prefill {1024/best_pf:.0f} tok/s, decode {1/best_dec:.1f} tok/s, verify5 {1e3*best_v:.1f} ms")
