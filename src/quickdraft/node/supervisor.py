"""A target spread over RPC workers, kept in a child process so that a worker's death does not end `serve`.

llama.cpp's RPC client aborts the whole process when a worker goes away in the middle of a computation
(ggml-rpc: "Remote RPC server crashed or returned malformed response"); no error ever reaches the caller. So
`serve --rpc` runs that target in a child `quickdraft node --rpc` on loopback, with a random node key, and
uses it as its node:// target: only token ids cross that hop (the draft stays in the server's process).

    supervised = SupervisedTarget(model, workers, ...)
    supervised.start(wait)            # wait for the workers, start the child, watch it
    Engine.load(supervised.url, ...)  # the engine's target is the child node

When the child dies, the request it was serving fails at once (503, quickdraft.server.errors), `on_change`
tells the server what it now waits for (its /health answers 503 and new requests a 503 with Retry-After),
and the child is started again, on the same port, as soon as every worker answers. The engine's node target
reconnects by itself. `serve --rpc-in-process` keeps the target in the server's own process instead: one
loopback hop less per round, and a worker that dies takes the server with it.
"""

from __future__ import annotations

import logging
import re
import secrets
import threading
import time
from typing import Callable, Sequence

from quickdraft.node.launch import NodeProcess
from quickdraft.node.readiness import Backend, NotYet, wait_until_ready

log = logging.getLogger("quickdraft.node")

RESTART_WAIT = 24 * 3600.0  # how long a restart waits for the workers: until they are back, practically


class SupervisedTarget:
    def __init__(self, model: str, workers: Sequence[str], *, ctx: int, threads: int | None = None,
                 gpu_layers: int | str | None = None, main_gpu: int | None = None,
                 on_change: Callable[[dict[str, str]], None] = lambda waiting: None):
        """on_change: called with {what: why} while the target is not available, and {} once it is again."""
        self.model, self.workers = model, list(workers)
        self.on_change = on_change
        self.key = secrets.token_urlsafe(24)
        extra = ["--rpc", ",".join(self.workers)]
        if gpu_layers is not None:
            extra += ["--gpu-layers", str(gpu_layers)]
        if main_gpu is not None:
            extra += ["--main-gpu", str(main_gpu)]
        self.node = NodeProcess(model, "target", ctx=ctx, threads=threads, extra=extra, die_with_parent=True,
                                env={"QUICKDRAFT_NODE_KEY": self.key},
                                on_line=lambda line: log.info("target node: %s", line))
        self.restarts = 0
        self.worker_status: list[dict] = []  # what each worker said before the child connected to it
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"node://127.0.0.1:{self.node.port}?key={self.key}"

    def start(self, wait: float, timeout: float = 600.0) -> "SupervisedTarget":
        """Wait (up to `wait` s) for the workers, start the child (up to `timeout` s to load), then watch it.
        One thread starts and restarts the child: the child is told to stop when that thread ends
        (PR_SET_PDEATHSIG follows the thread that started it), so no node outlives its server."""
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            try:
                self._start_child(wait, timeout)
            except BaseException as e:
                failure.append(e)
                return
            finally:
                started.set()
            self._watch()

        self._watcher = threading.Thread(target=run, name="quickdraft-target-node", daemon=True)
        self._watcher.start()
        started.wait()
        if failure:
            raise failure[0]
        return self

    def _backend(self, endpoint: str, status: dict) -> Backend:
        """Probe the worker (its version too: another one would abort the child) and note what it said."""
        from quickdraft.node.rpc import RpcWorkerUnreachable, probe_worker

        def probe() -> None:
            try:
                s = probe_worker(endpoint)
            except RpcWorkerUnreachable as e:
                raise NotYet(str(e)) from None
            status[endpoint] = {"endpoint": endpoint, "rpc_protocol": ".".join(map(str, s.version)),
                                "devices": s.devices, "free_bytes": s.free_bytes, "total_bytes": s.total_bytes,
                                "round_trip_ms": round(s.round_trip_ms, 3), "probed_at": time.time()}

        return Backend(f"RPC worker {endpoint}", probe)

    def _start_child(self, wait: float, timeout: float) -> None:
        status: dict[str, dict] = {}
        wait_until_ready([self._backend(e, status) for e in self.workers], wait,
                         on_change=lambda waiting: waiting and self.on_change(waiting))  # {}: not ready yet
        self.worker_status = [status[e] for e in self.workers]  # while the child uses a worker, it answers nobody else
        self.on_change({"target node": "loading the target over the RPC workers"})
        self.node.start(timeout)
        log.info("target %s runs in a child node (pid %d) over RPC workers %s", self.model, self.node.proc.pid,
                 ", ".join(self.workers))
        self.on_change({})

    def _watch(self) -> None:
        while not self._stopping.is_set():
            code = self.node.proc.wait()
            if self._stopping.is_set():
                return
            self.restarts += 1
            last = next((line for line in reversed(self.node.output)
                         if any(w in line.lower() for w in ("crashed", "abort", "error"))), None)
            why = f"exit status {code}" + (f": {re.sub(r'[^ ]*/', '', last.strip())}" if last else "")
            log.error("the target's node process ended (%s): a worker failed? starting it again once every RPC "
                      "worker answers", why)
            self.on_change({"target node": f"restarting after it ended ({why})"})
            delay = 1.0
            while not self._stopping.is_set():
                try:
                    self._start_child(RESTART_WAIT, 600.0)
                    break
                except Exception as e:  # keep trying: the server stays up meanwhile
                    if self._stopping.is_set():
                        return
                    log.error("starting the target's node again failed: %s", e)
                    self.on_change({"target node": f"could not start again: {e}"})
                    self._stopping.wait(delay)
                    delay = min(delay * 2, 30.0)

    def describe(self) -> dict:
        return {"pid": self.node.proc.pid if self.node.alive() else None, "restarts": self.restarts,
                "rpc_workers": self.worker_status}

    def stop(self) -> None:
        self._stopping.set()
        self.node.stop()
