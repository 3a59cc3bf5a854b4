"""What verifying n tokens costs the target, with logits at every position (as verification needs) and at
the last one only, against one decoding step. Best of 7, after a 300-token prefix.

    .venv/bin/python scripts/verify_cost.py gemma-3-270m-q8_0
"""

from __future__ import annotations

import sys
import time

from quickdraft import model_store
from quickdraft.llama_model import LlamaModel

TEXT = "The history of the region spans many centuries, and its people have long traded by sea. " * 100


def main() -> None:
    for name in sys.argv[1:] or ["gemma-3-270m-q8_0"]:
        m = LlamaModel(model_store.resolve(name), threads=2)
        tokens = m.tokenize(TEXT)
        prefix = tokens[:300]
        row_all, row_last = [], []
        for n in (1, 2, 3, 5, 9, 17):
            for n_logits, row in ((n, row_all), (1, row_last)):
                best = float("inf")
                for _ in range(7):
                    m.evaluate(prefix, 1)
                    t = time.perf_counter()
                    m.evaluate(prefix + tokens[300 : 300 + n], n_logits)
                    best = min(best, time.perf_counter() - t)
                row.append(f"{n}: {1e3 * best:.1f} ms")
        print(f"{name}: logits at every position  " + ", ".join(row_all))
        print(f"{name}: logits at the last only   " + ", ".join(row_last))


if __name__ == "__main__":
    main()
