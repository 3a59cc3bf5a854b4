"""How many draft tokens this machine verifies exactly: the largest batch whose logits equal, bit for bit,
those of decoding the same tokens one at a time (`LlamaModel.max_exact_batch`), remembered on disk.

Speculative decoding is lossless only if verifying k + 1 tokens in one batch gives the logits one-token
decoding gives. llama.cpp's kernels choose code paths by batch shape (llamafile's sgemm for batches of 2+,
repacked K-quant gemm for 4+, flash attention's KV-split kernel for one query at 512+ cells, a padded KV
view once a batch crosses a multiple of 256 cells, Gemma 3's 512-token sliding window), and some round
differently. The probe checks every batch size up to k + 1 after prefixes of PROBE_KV_LENS tokens; the
engine caps K to what it finds. It also checks that a prompt read after a cached prefix (one batch of up to
n_batch tokens where a fresh read splits it into chunks from its first token) leaves what a fresh read
leaves (`LlamaModel.prompt_reuse_exact`); where it does not, the engine keeps no KV cache across requests
(`LocalTarget.fresh_prefill`).

The result is kept in ~/.cache/quickdraft/exact-batch.json under a key over everything that picks kernels:
the model file, the llama.cpp build, the CPU, threads, KV cache type, flash attention, the layers llama.cpp
really offloaded (and to which devices), RPC workers and the backend devices, and on what was tested: the
prefix lengths that fit the context and the prompt-reuse shape (`probe_plan`), so a result found in a small
context is not trusted by a larger one. Anything else (another machine, an upgraded wheel, another
placement, a context that tests more) probes again.

GPU kernels are usually not batch-invariant (a matrix multiply picks its tiling by batch size), so a model
with layers on a GPU may verify no batch bit-exactly: K is then 0, speculation off, and the load says so in
one line naming --inexact, the switch to llama.cpp-level exactness (equal up to rounding; the bench reports
how often outputs still match).
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import time
from functools import lru_cache
from pathlib import Path

from quickdraft.atomic_file import write_atomic
from quickdraft.llama_model import LlamaModel, backend_devices, system_info
from quickdraft.model_store import cache_dir

log = logging.getLogger("quickdraft")

# KV lengths the probe verifies batches after: a short prefix; one whose batches cross the 256-cell
# boundary of llama.cpp's padded KV view; one past Gemma 3's 512-token sliding window and past 2 prompt
# chunks of 512 (the first token after a chunked prompt is where a difference would show first).
PROBE_KV_LENS = (24, 250, 1030)
# The prompt-reuse check: a cached prefix of up to REUSE_PREFIX tokens (its last tokens decoded one at a
# time, as an answer is), then a suffix of up to n_batch tokens in one batch, which crosses a fresh read's
# first chunk boundary; REUSE_STEPS one-token steps after it read the KV cache it left.
REUSE_PREFIX = 64
REUSE_STEPS = 2


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


def probe_plan(model: LlamaModel, limit: int) -> dict:
    """What the probe really tests in this model's context: the batch limit, the prefix lengths that fit, and
    the prompt-reuse check's [prefix, suffix, steps] (smaller where the context is). A result holds for what
    was tested only, so the cache keys on this, not on n_ctx nor on the lengths asked."""
    limit, kv_lens = model.probe_lengths(limit, PROBE_KV_LENS)
    room = model.n_ctx - REUSE_STEPS  # the longest prompt the check can read and still step after
    prefix = max(1, min(REUSE_PREFIX, room // 3))
    suffix = max(1, min(model.n_batch, room - prefix))
    return {"limit": limit, "kv_lens": kv_lens, "reuse": [prefix, suffix, REUSE_STEPS]}


def probe_key(model: LlamaModel, limit: int) -> dict:
    """Everything that changes which kernels run (and so how they round) for this model here, and what the
    probe tests in its context (`probe_plan`)."""
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
        **probe_plan(model, limit),
    }


def _read(cache: Path) -> dict:
    """The remembered probes by key digest; a missing, unreadable or damaged file counts as empty (probed
    again and rewritten), and so does any entry that is not a probe's result."""
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(known, dict):
        return {}
    return {d: e for d, e in known.items() if _valid(e)}  # drops entries of older formats


def _valid(entry) -> bool:
    batch = entry.get("max_batch") if isinstance(entry, dict) else None
    return (isinstance(batch, int) and not isinstance(batch, bool) and batch >= 1
            and isinstance(entry.get("prompt_reuse_exact"), bool))


def _remember(cache: Path, digest: str, entry: dict) -> None:
    """Add one probe's result to the cache file. It is replaced whole (atomic_file), so a process killed
    meanwhile leaves the old file; a failure to write (a full disk) costs a probe at the next load."""
    known = _read(cache)  # again: another process may have added entries while this one probed
    known[digest] = entry
    try:
        write_atomic(cache, json.dumps(known, indent=1))
    except OSError as e:
        log.warning("cannot remember the exactness probe in %s (%s): the next load probes again", cache, e)


def probe(model: LlamaModel, k: int) -> dict:
    """The probe's result for verification batches of up to k + 1 tokens, remembered on disk: max_batch (the
    largest batch exact after each prefix length tested), prompt_reuse_exact (a prompt read after a cached
    prefix leaves what a fresh read leaves), the seconds each took, and the key."""
    key = probe_key(model, k + 1)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    cache = cache_dir() / "exact-batch.json"
    entry = _read(cache).get(digest)
    if entry is None:
        t0 = time.perf_counter()
        max_batch = model.max_exact_batch(k + 1, kv_lens=PROBE_KV_LENS)
        t1 = time.perf_counter()
        prefix, suffix, steps = key["reuse"]
        # a capped K empties the cache at each request anyway (loading.local_target): not checked, not exact
        reuse_exact = max_batch == key["limit"] and model.prompt_reuse_exact(prefix, suffix, steps=steps)
        entry = {"max_batch": max_batch, "prompt_reuse_exact": reuse_exact, "probe_seconds": round(t1 - t0, 2),
                 "reuse_seconds": round(time.perf_counter() - t1, 2), "key": key}
        log.info("%s: exactness probe took %.1fs: batches up to %d are exact; a prompt read after a cached "
                 "prefix is %s (%.1fs)", model.name, entry["probe_seconds"], max_batch,
                 "exact" if reuse_exact else "not shown exact", entry["reuse_seconds"])
        _remember(cache, digest, entry)
    return entry


def exact_max_k(model: LlamaModel, k: int) -> int:
    """The largest K <= k whose verification batch (K + 1 tokens) reproduces one-by-one decoding bit for bit
    on this machine after each prefix length of PROBE_KV_LENS (those that fit the context), remembered on disk."""
    exact_k = probe(model, k)["max_batch"] - 1
    if exact_k < k:
        log.warning(cap_message(model, exact_k))
    return exact_k


def prompt_cache_exact(model: LlamaModel, k: int) -> bool:
    """Whether the engine may keep the KV cache across requests (the probe of k, remembered): a prompt read
    after a cached prefix must leave what a fresh read leaves, or the first token of a request sharing a
    prefix with the one before could differ from the target alone's. Says so at load where it may not."""
    exact = probe(model, k)["prompt_reuse_exact"]
    if not exact:
        log.warning("%s: llama.cpp's kernels here read a prompt after a cached prefix differently, in the last "
                    "bits, from a fresh read: the KV cache is emptied at each request (no prompt cache), so "
                    "the output stays the target's own", model.name)
    return exact


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
