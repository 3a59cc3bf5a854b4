"""`quickdraft serve` as a child process on a free loopback port (for tests and benchmarks).

    with ServerProcess("--draft", "none") as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="unused")
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, *args: str, env: dict[str, str] | None = None, startup_timeout: float = 180.0):
        self.args = list(args)
        self.env = {**os.environ, **(env or {})}
        self.startup_timeout = startup_timeout
        self.port = free_port()
        self.root = f"http://127.0.0.1:{self.port}"
        self.base_url = f"{self.root}/v1"
        self.process: subprocess.Popen | None = None
        self._log = tempfile.TemporaryFile(mode="w+", encoding="utf-8")

    def launch(self) -> "ServerProcess":
        """Start the process without waiting for it to answer (start() waits)."""
        cmd = [sys.executable, "-m", "quickdraft", "serve", "--host", "127.0.0.1", "--port", str(self.port),
               *self.args]
        self.process = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=self.env)
        return self

    def start(self) -> "ServerProcess":
        self.launch()
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"quickdraft serve exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.root}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"quickdraft serve did not answer within {self.startup_timeout:.0f}s:\n{self.log()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log(self) -> str:
        self._log.seek(0)
        return self._log.read()

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        self._log.close()
