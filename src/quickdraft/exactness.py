"""How many draft tokens this machine verifies exactly: the largest batch whose logits equal, bit for bit,
those of decoding the same tokens one at a time (`LlamaModel.max_exact_batch`), remembered on disk.

Speculative decoding is lossless only if verifying k + 1 tokens in one batch gives the logits one-token
decoding gives; llama.cpp's kernels choose code paths by batch shape, and some (K-quant matmuls with
repacked weights, for one) round differently. The engine caps K to what this probe finds.
"""

from __future__ import annotations

import json
import logging
import os
from importlib.metadata import version

from quickdraft.llama_model import LlamaModel
from quickdraft.model_store import cache_dir

log = logging.getLogger("quickdraft")


def exact_max_k(model: LlamaModel, k: int) -> int:
    """The largest K <= k whose verification batch (K + 1 tokens) reproduces one-by-one decoding bit for bit
    on this machine, remembered per model file and llama.cpp build."""
    st = model.path.stat()
    key = f"{model.path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{version('llama-cpp-python')}|{k + 1}"
    cache = cache_dir() / "exact-batch.json"
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        known[key] = model.max_exact_batch(k + 1)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, indent=1))
        os.replace(tmp, cache)
    exact_k = known[key] - 1
    if exact_k < k:
        log.warning(
            "%s: llama.cpp's kernels here verify at most %d tokens per batch bit-exactly; K is capped at %d so "
            "the output stays the target's own (exact=False lifts the cap)", model.name, exact_k + 1, exact_k
        )
    return exact_k
