"""llama.cpp RPC: a target model spread over rpc-server workers on other machines.

This is llama.cpp's own distributed engine, for a target too big for one machine: the target node keeps the
model's graph and asks each worker to hold and compute some of its layers. (It ships activations between
machines every token, which is why the draft talks to the target node in token ids instead.)

- `rpc_devices(["HOST:PORT", ...])` registers each worker with libggml-rpc (`ggml_backend_rpc_add_server`,
  the function llama.cpp's own `--rpc` flag calls) and returns the NULL-terminated device list that
  `llama_model_params.devices` takes; `LlamaModel(..., rpc_servers=..., n_gpu_layers=N)` uses it.
- `run_worker(...)` runs llama.cpp's `rpc-server` program (built once and cached by quickdraft.llama_build).

rpc-server has no authentication and no encryption: anyone who can reach its port can run computations on
it and read what it holds. It binds to 127.0.0.1 unless told otherwise; expose it only on a trusted network.
"""

from __future__ import annotations

import ctypes
import socket
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
from typing import Sequence

from quickdraft.errors import ModelLoadError

DEFAULT_RPC_PORT = 50052


@lru_cache(maxsize=None)
def _libs() -> tuple[ctypes.CDLL, ctypes.CDLL]:
    """libggml-base and libggml-rpc: the very libraries llama-cpp-python loaded (same paths, same handles)."""
    import llama_cpp

    from quickdraft.llama_model import _llama

    _llama()  # the backend is initialised before devices are made
    if not llama_cpp.llama_supports_rpc():
        raise ModelLoadError(
            "this llama-cpp-python was built without RPC; reinstall it with CMAKE_ARGS=-DGGML_RPC=on "
            "(the Makefile does)"
        )
    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    base = ctypes.CDLL(str(lib_dir / "libggml-base.so"))
    rpc = ctypes.CDLL(str(lib_dir / "libggml-rpc.so"))
    rpc.ggml_backend_rpc_add_server.argtypes = [ctypes.c_char_p]
    rpc.ggml_backend_rpc_add_server.restype = ctypes.c_void_p
    base.ggml_backend_reg_dev_count.argtypes = [ctypes.c_void_p]
    base.ggml_backend_reg_dev_count.restype = ctypes.c_size_t
    base.ggml_backend_reg_dev_get.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    base.ggml_backend_reg_dev_get.restype = ctypes.c_void_p
    return base, rpc


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ModelLoadError(f"an RPC worker is HOST:PORT, got {endpoint!r}")
    return host.strip("[]"), int(port)


def check_reachable(endpoint: str, timeout: float = 3.0) -> None:
    """libggml-rpc aborts the whole process when a worker cannot be reached; find out first, and say so."""
    host, port = parse_endpoint(endpoint)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as e:
        raise ModelLoadError(
            f"RPC worker {endpoint} is not reachable ({e}); start one with `quickdraft rpc-worker --port {port}`"
        ) from None


def rpc_devices(endpoints: Sequence[str]) -> ctypes.Array:
    """The devices of the given rpc-server workers, as a NULL-terminated ggml_backend_dev_t array."""
    base, rpc = _libs()
    devices: list[int] = []
    for endpoint in endpoints:
        check_reachable(endpoint)
        reg = rpc.ggml_backend_rpc_add_server(endpoint.encode())
        if not reg:
            raise ModelLoadError(f"RPC worker {endpoint} offers no device")
        for i in range(base.ggml_backend_reg_dev_count(reg)):
            devices.append(base.ggml_backend_reg_dev_get(reg, i))
    return (ctypes.c_void_p * (len(devices) + 1))(*devices, None)


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
    import resource

    limit = (mem_mb + 64) << 20

    def apply():
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))

    return apply


def worker_binary(log=None) -> Path:
    """rpc-server from PATH or quickdraft's cache, built (printing progress) the first time."""
    from quickdraft.llama_build import ensure_tool, find_tool

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
    import signal

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
