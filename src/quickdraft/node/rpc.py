"""llama.cpp RPC: a target model spread over rpc-server workers on other machines.

This is llama.cpp's own distributed engine, for a target too big for one machine: the target node keeps the
model's graph and asks each worker to hold and compute some of its layers. (It ships activations between
machines every token, which is why the draft talks to the target node in token ids instead.)

- `LlamaModel(..., rpc_servers=["HOST:PORT", ...], n_gpu_layers=N)` registers each worker with libggml-rpc
  (`quickdraft.llama_model.rpc_devices`, the function llama.cpp's own `--rpc` flag calls).
- `run_worker(...)` runs llama.cpp's `rpc-server` program (built once and cached by quickdraft.llama_build).

rpc-server has no authentication and no encryption: anyone who can reach its port can run computations on
it and read what it holds. It binds to 127.0.0.1 unless told otherwise; expose it only on a trusted network.
"""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
from pathlib import Path

from quickdraft.llama_build import ensure_tool, find_tool
from quickdraft.llama_model import check_reachable, parse_endpoint, rpc_devices  # noqa: F401 (re-exported)

DEFAULT_RPC_PORT = 50052


# ---- the worker -------------------------------------------------------------------------------------------
def supports_mem_flag(binary: Path) -> bool:
    """Older rpc-servers take --mem (the memory they advertise); the one in llama-cpp-python 0.3.36 does not."""
    try:
        out = subprocess.run([str(binary), "--help"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "--mem" in out.stdout + out.stderr


def worker_command(binary: Path, host: str, port: int, *, mem_mb: int | None = None, threads: int | None = None,
                   cache: bool = False, mem_flag: bool = False) -> list[str]:
    cmd = [str(binary), "--host", host, "--port", str(port)]
    if mem_mb is not None and mem_flag:
        cmd += ["--mem", str(mem_mb)]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    if cache:
        cmd += ["--cache"]
    return cmd


def _limit_data(mem_mb: int):
    """A preexec function capping the worker's heap and anonymous mappings (RLIMIT_DATA) at mem_mb, plus
    64 MB for the program itself: a client that asks for more gets an allocation failure, not an OOM."""
    limit = (mem_mb + 64) << 20

    def apply():
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))

    return apply


def worker_binary(log=None) -> Path:
    """rpc-server from PATH or quickdraft's cache, built (printing progress) the first time."""
    found = find_tool("rpc-server")
    if found:
        return found
    say = log or (lambda msg: print(f"[quickdraft rpc-worker] {msg}", file=sys.stderr, flush=True))
    say("rpc-server is not built yet: building it from the llama.cpp source of the installed "
        "llama-cpp-python (a few minutes on 2 cores, once)")
    return ensure_tool("rpc-server", log=log)


def start_worker(host: str = "127.0.0.1", port: int = DEFAULT_RPC_PORT, *, mem_mb: int | None = None,
                 threads: int | None = None, cache: bool = False, **popen) -> subprocess.Popen:
    """Start rpc-server (building it first if needed); the caller owns the process."""
    say = lambda msg: print(f"[quickdraft rpc-worker] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    binary = worker_binary()
    if host not in ("127.0.0.1", "localhost", "::1"):
        say(f"WARNING: rpc-server has no authentication; on {host} anyone who can reach port {port} can use "
            "this machine's memory and compute and read what it holds")
    mem_flag = mem_mb is not None and supports_mem_flag(binary)
    preexec = None
    if mem_mb is not None and not mem_flag:
        say(f"this rpc-server has no --mem flag: it advertises its device's own memory, and --mem {mem_mb} "
            "is enforced as a limit on its data memory instead")
        preexec = _limit_data(mem_mb)
    cmd = worker_command(binary, host, port, mem_mb=mem_mb, threads=threads, cache=cache, mem_flag=mem_flag)
    say(" ".join(cmd))
    return subprocess.Popen(cmd, preexec_fn=preexec, **popen)


def run_worker(host: str = "127.0.0.1", port: int = DEFAULT_RPC_PORT, mem_mb: int | None = None,
               threads: int | None = None, cache: bool = False) -> int:
    """Run rpc-server in the foreground until it exits (Ctrl-C stops it); its exit status."""
    proc = start_worker(host, port, mem_mb=mem_mb, threads=threads, cache=cache)
    signal.signal(signal.SIGTERM, lambda signum, frame: proc.terminate())  # stopping us stops the worker
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        try:
            return proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()
