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

import re
import resource
import signal
import socket
import struct
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

from quickdraft.errors import ModelLoadError
from quickdraft.llama_build import ensure_tool, find_tool
from quickdraft.llama_model import check_reachable, parse_endpoint, rpc_devices  # noqa: F401 (re-exported)

DEFAULT_RPC_PORT = 50052


# ---- probing a worker: its RPC protocol version, before llama.cpp connects ------------------------------
# rpc-server speaks a binary protocol (ggml/src/ggml-rpc/ggml-rpc.cpp): a request is | command (1 byte) |
# size (u64) | data |, a reply | size (u64) | data |. Every connection starts with HELLO (command 14 in every
# version): 24 bytes of transport capabilities (zeros: plain TCP) -> major, minor, patch, padding, 24 bytes of
# capabilities. libggml-rpc aborts the process on a version mismatch, so quickdraft asks first.
RPC_CMD_GET_DEVICE_MEMORY, RPC_CMD_HELLO, RPC_CMD_DEVICE_COUNT = 11, 14, 15
CONN_CAPS_BYTES = 24
FALLBACK_PROTOCOL = (7, 0, 0)  # llama-cpp-python 0.3.36's, when its header is not installed


class RpcWorkerError(ModelLoadError):
    """An RPC worker cannot be used: unreachable, busy with another client, or another llama.cpp version."""


class RpcWorkerUnreachable(RpcWorkerError):
    """Nothing listens there (yet): worth waiting for."""


@dataclass
class WorkerStatus:
    endpoint: str
    version: tuple[int, int, int]
    devices: int
    free_bytes: int
    total_bytes: int
    round_trip_ms: float


def local_protocol() -> tuple[int, int, int]:
    """The RPC protocol version this process's libggml-rpc speaks, read from the ggml-rpc.h installed with it."""
    header = Path(sysconfig.get_paths()["purelib"]) / "include" / "ggml-rpc.h"
    try:
        text = header.read_text()
    except OSError:
        return FALLBACK_PROTOCOL
    found = [re.search(rf"#define\s+RPC_PROTO_{part}_VERSION\s+(\d+)", text) for part in ("MAJOR", "MINOR", "PATCH")]
    return tuple(int(m.group(1)) for m in found) if all(found) else FALLBACK_PROTOCOL  # type: ignore[return-value]


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the worker closed the connection")
        data += chunk
    return data


def _command(sock: socket.socket, cmd: int, payload: bytes, reply_size: int) -> bytes:
    sock.sendall(struct.pack("<BQ", cmd, len(payload)) + payload)
    (size,) = struct.unpack("<Q", _recv_exactly(sock, 8))
    if size != reply_size:
        raise ConnectionError(f"command {cmd}: a {size}-byte reply where {reply_size} were expected")
    return _recv_exactly(sock, size)


def _reset(sock: socket.socket) -> None:
    """Close with a reset, discarding the HELLO still queued: a busy rpc-server that later reads it would
    answer into a closed socket and die of SIGPIPE."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def probe_worker(endpoint: str, timeout: float = 3.0) -> WorkerStatus:
    """Connect to an rpc-server, check its protocol version (HELLO), read its devices' memory, disconnect.

    RpcWorkerUnreachable when nothing listens; RpcWorkerError when it is another llama.cpp version (llama.cpp
    would abort this process), or busy: rpc-server serves one client at a time, and a worker that a
    coordinator is using does not answer anyone else until that client leaves."""
    host, port = parse_endpoint(endpoint)
    ours = local_protocol()
    t0 = time.perf_counter()
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except (socket.timeout, TimeoutError):
        raise RpcWorkerUnreachable(f"RPC worker {endpoint} did not accept a connection within {timeout:g} s "
                                   "(down, or busy: rpc-server serves one client at a time)") from None
    except OSError as e:
        raise RpcWorkerUnreachable(f"RPC worker {endpoint} is not reachable ({e}); start one with "
                                   f"`quickdraft rpc-worker --port {port}`") from None
    with sock:
        try:
            hello = _command(sock, RPC_CMD_HELLO, bytes(CONN_CAPS_BYTES), 4 + CONN_CAPS_BYTES)
        except (socket.timeout, TimeoutError):
            _reset(sock)
            raise RpcWorkerError(f"RPC worker {endpoint} accepted the connection but did not answer HELLO within "
                                 f"{timeout:g} s: it is busy with another client (rpc-server serves one at a "
                                 "time), or it is not an rpc-server") from None
        except (ConnectionError, OSError) as e:
            raise RpcWorkerError(
                f"RPC worker {endpoint} refused this llama.cpp's HELLO ({e}): it runs another llama.cpp version "
                f"(this one speaks RPC protocol {'.'.join(map(str, ours))}). Run the rpc-server of the same "
                "version: `quickdraft rpc-worker` builds it") from None
        rtt = (time.perf_counter() - t0) * 1000
        version = (hello[0], hello[1], hello[2])
        if version[0] != ours[0] or version[1] > ours[1]:
            raise RpcWorkerError(
                f"RPC worker {endpoint} speaks RPC protocol {'.'.join(map(str, version))}, this llama.cpp "
                f"{'.'.join(map(str, ours))}: llama.cpp would abort. Run the rpc-server of the same llama.cpp "
                "version on the worker (`quickdraft rpc-worker` builds it)")
        (n_devices,) = struct.unpack("<I", _command(sock, RPC_CMD_DEVICE_COUNT, b"", 4))
        free = total = 0
        for device in range(n_devices):
            f, t = struct.unpack("<QQ", _command(sock, RPC_CMD_GET_DEVICE_MEMORY, struct.pack("<I", device), 16))
            free, total = free + f, total + t
    return WorkerStatus(endpoint, version, n_devices, free, total, rtt)


_checked: set[str] = set()  # workers this process has checked: its own libggml-rpc connection keeps them busy


def check_workers(endpoints) -> None:
    """Probe each worker once per process before llama.cpp connects to it (see probe_worker)."""
    for endpoint in endpoints:
        if endpoint not in _checked:
            probe_worker(endpoint)
            _checked.add(endpoint)


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
    return subprocess.Popen(cmd, preexec_fn=parent_death_signal(preexec), **popen)


def wait_for_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 60.0,
                  host: str = "127.0.0.1") -> None:
    """Wait until something accepts connections on host:port (a worker just started). RuntimeError if `proc`
    exits first, TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0] if proc.args else 'the process'} exited with {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:g} s")


def parent_death_signal(then=None):
    """A preexec function: the worker gets SIGTERM when the process that started it dies, even by SIGKILL
    (Linux's PR_SET_PDEATHSIG), so a killed `quickdraft rpc-worker` leaves no rpc-server behind."""

    def apply():
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            pass
        if then is not None:
            then()

    return apply


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
