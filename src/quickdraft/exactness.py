"""How many draft tokens this machine verifies exactly: the largest batch whose logits equal, bit for bit,
those of decoding the same tokens one at a time (`LlamaModel.max_exact_batch`), remembered on disk.

Speculative decoding is lossless only if verifying k + 1 tokens in one batch gives the logits one-token
decoding gives. llama.cpp's kernels choose code paths by batch shape (llamafile's sgemm for batches of 2+,
repacked K-quant gemm for 4+, flash attention's KV-split kernel for one query at 512+ cells, a padded KV
view once a batch crosses a multiple of 256 cells, Gemma 3's 512-token sliding window), and some round
differently. The probe checks every batch size up to k + 1 after prefixes of PROBE_KV_LENS tokens; the
engine caps K to what it finds.

The result is kept in ~/.cache/quickdraft/exact-batch.json under a key over everything that picks kernels:
the model file, the llama.cpp build, the CPU, threads, KV cache type, flash attention, the layers llama.cpp
really offloaded (and to which devices), RPC workers and the backend devices. Anything else (another
machine, an upgraded wheel, another placement) probes again.

GPU kernels are usually not batch-invariant (a matrix multiply picks its tiling by batch size), so a model
with layers on a GPU may verify no batch bit-exactly: K is then 0, speculation off, and the load says so in
one line naming --inexact, the switch to llama.cpp-level exactness (equal up to rounding; the bench reports
how often outputs still match).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from functools import lru_cache
from pathlib import Path

from quickdraft.llama_model import LlamaModel, backend_devices, system_info
from quickdraft.model_store import cache_dir

log = logging.getLogger("quickdraft")

# KV lengths the probe verifies batches after: a short prefix; one whose batches cross the 256-cell
# boundary of llama.cpp's padded KV view; one past Gemma 3's 512-token sliding window and past 2 prompt
# chunks of 512 (the first token after a chunked prompt is where a difference would show first).
PROBE_KV_LENS = (24, 250, 1030)


@lru_cache(maxsize=None)
def _cpu() -> str:
    """The CPU's model name and feature flags (the kernels llama.cpp picks at run time depend on them)."""
    try:
        first_cpu = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
        fields = dict(line.split(":", 1) for line in first_cpu.splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        flags = fields.get("flags") or fields.get("Features") or ""
        name = fields.get("model name") or fields.get("CPU part") or platform.processor()
        return f"{name} | {hashlib.sha256(flags.encode()).hexdigest()[:16]}"
    except OSError:
        return f"{platform.machine()} {platform.processor()}"


def probe_key(model: LlamaModel, limit: int) -> dict:
    """Everything that changes which kernels run (and so how they round) for this model here."""
    st = model.path.stat()
    info = system_info()
    return {
        "model": [str(model.path.resolve()), st.st_size, st.st_mtime_ns],
        "llama_cpp_python": info["llama_cpp_python"],
        "build": info["system_info"],
        "cpu": _cpu(),
        "threads": model.threads,
        "n_batch": model.n_batch,
        "kv_type": model.kv_type,
        "flash_attn": model.flash_attn,
        "gpu_layers": model.offloaded_layers,  # what llama.cpp did, not what was asked (a CPU build offloads 0)
        **({"layer_devices": model.layer_devices} if model.offloaded_layers else {}),
        "rpc": list(model.rpc_servers),
        "devices": list(backend_devices()),
        "kv_lens": list(PROBE_KV_LENS),
        "limit": limit,
    }


def _read(cache: Path) -> dict:
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        return {}
    return {d: e for d, e in known.items() if isinstance(e, dict)}  # drops entries of older formats


def exact_max_k(model: LlamaModel, k: int) -> int:
    """The largest K <= k whose verification batch (K + 1 tokens) reproduces one-by-one decoding bit for bit
    on this machine after each prefix length of PROBE_KV_LENS (those that fit the context), remembered on disk."""
    key = probe_key(model, k + 1)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    cache = cache_dir() / "exact-batch.json"
    entry = _read(cache).get(digest)
    if not isinstance(entry, dict) or "max_batch" not in entry:
        t0 = time.perf_counter()
        entry = {"max_batch": model.max_exact_batch(k + 1, kv_lens=PROBE_KV_LENS),
                 "probe_seconds": round(time.perf_counter() - t0, 2), "key": key}
        log.info("%s: exactness probe took %.1fs: batches up to %d are exact", model.name,
                 entry["probe_seconds"], entry["max_batch"])
        known = _read(cache)  # again: another process may have added entries while this one probed
        known[digest] = entry
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, indent=1))
        os.replace(tmp, cache)
    exact_k = entry["max_batch"] - 1
    if exact_k < k:
        log.warning(cap_message(model, exact_k))
    return exact_k


def cap_message(model: LlamaModel, exact_k: int) -> str:
    """The one line said at load when the probe caps K; at 0, speculation is off, and it names --inexact."""
    where = ", ".join(f"{n} layers on {d}" for d, n in sorted(model.layer_devices.items())) or "CPU"
    if exact_k == 0:
        return (f"{model.name}: speculation is OFF: llama.cpp's kernels here ({where}) compute a batch of 2 tokens "
                "differently, in the last bits, from one token at a time, so every token comes from the target "
                "alone (strict exactness). --inexact (models.exact: false; Engine.load(exact=False)) turns "
                "speculation back on with llama.cpp-level exactness: outputs equal the target's up to rounding, "
                "and `quickdraft bench --inexact` reports how often they match.")
    return (f"{model.name}: llama.cpp's kernels here ({where}) verify at most {exact_k + 1} tokens per batch "
            f"bit-exactly; K is capped at {exact_k} so the output stays the target's own (--inexact lifts the cap)")
