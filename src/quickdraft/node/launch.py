"""Start `quickdraft node` processes and wait until they listen: for tests, benchmarks and scripts.

A node can be pinned to CPU cores (`taskset`) and started inside a network namespace (`ip netns exec`).
Every wait is bounded; `stop()` kills the process (and only it).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from typing import Callable, Sequence

from quickdraft.errors import QuickdraftError


class NodeStartError(QuickdraftError):
    """A node process exited or did not listen in time."""


def pin_prefix(cpus: str | None) -> list[str]:
    """["taskset", "-c", cpus] where taskset exists and the cores are there; else nothing."""
    if not cpus or not shutil.which("taskset"):
        return []
    wanted = {int(c) for c in cpus.replace("-", ",").split(",") if c.strip().isdigit()}
    if not wanted <= os.sched_getaffinity(0):
        return []
    return ["taskset", "-c", cpus]


class NodeProcess:
    def __init__(self, model: str, role: str, *, port: int = 0, host: str = "127.0.0.1", threads: int | None = 1,
                 cpus: str | None = None, netns: str | None = None, ctx: int = 4096, extra: Sequence[str] = (),
                 env: dict[str, str] | None = None, die_with_parent: bool = False,
                 on_line: Callable[[str], None] | None = None):
        """threads None: the node's default (physical cores). die_with_parent: the node gets SIGTERM when the
        thread that started it ends (Linux's PR_SET_PDEATHSIG), even when this process is SIGKILLed. on_line: called with each line the node prints."""
        self.model, self.role, self.host, self.port = model, role, host, port
        self.threads, self.cpus, self.netns, self.ctx = threads, cpus, netns, ctx
        self.extra = list(extra)
        self.env = dict(env or {})
        self.die_with_parent, self.on_line = die_with_parent, on_line
        self.proc: subprocess.Popen | None = None
        self.url: str | None = None
        self.output: deque[str] = deque(maxlen=5000)  # the process's last lines: errors, tests

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "quickdraft", "node", "--model", self.model, "--role", self.role,
               "--host", self.host, "--port", str(self.port), "--ctx", str(self.ctx), *self.extra]
        if self.threads is not None:
            cmd += ["--threads", str(self.threads)]
        cmd = pin_prefix(self.cpus) + cmd
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns] + cmd
        return cmd

    def start(self, timeout: float = 300.0) -> "NodeProcess":
        """Start the node and wait (at most `timeout` s) for its `listening on` line. A target node measures
        its exact K before it listens: the first time for a model and machine, that takes a while."""
        from quickdraft.node.rpc import parent_death_signal

        self.proc = subprocess.Popen(
            self.command(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
            preexec_fn=parent_death_signal() if self.die_with_parent else None,
        )
        ready = threading.Event()

        def read(proc=self.proc):
            for line in proc.stdout:
                self.output.append(line.rstrip())
                if self.on_line is not None:
                    self.on_line(line.rstrip())
                if line.startswith("listening on node://"):
                    self.url = line.split("listening on ", 1)[1].strip()
                    self.port = int(self.url.rsplit(":", 1)[1])
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not ready.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = "\n".join(list(self.output)[-20:])
                raise NodeStartError(f"{self.role} node for {self.model} did not start:\n{tail}")
        return self

    def restart(self, timeout: float = 300.0) -> "NodeProcess":
        """Stop and start again on the same port."""
        self.stop()
        return self.start(timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        """Kill the node at once (SIGKILL): a crash, as far as its clients can tell."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a stopped process must run to die cleanly
            self.proc.kill()
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)

    def __enter__(self) -> "NodeProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
