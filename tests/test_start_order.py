"""Start in any order: `serve` waits for its target node / RPC workers (503 on /health naming them meanwhile),
starts with the target alone while its draft node is down, gives up clearly after --wait, and refuses an
rpc-server of another llama.cpp version before llama.cpp can abort the process.

Real processes on loopback (SmolLM2, the smallest demo model, as target and draft), short generations, and a
bounded wait everywhere.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import threading
import time

import httpx
import pytest

from quickdraft import Engine
from quickdraft.loading import open_model
from quickdraft.node.launch import NodeProcess
from quickdraft.node.rpc import RpcWorkerError, probe_worker
from quickdraft.server.process import ServerProcess, free_port

MODEL = "smollm2-135m"
PROMPT = "The three primary colours are"
MAX_TOKENS = 12
SERVE = ["--draft-tokens", "4", "--threads", "1", "--ctx", "512"]


@pytest.fixture(scope="module")
def expected():
    engine = Engine.load(MODEL, "none", threads=1, n_ctx=512)
    return engine.generate(PROMPT, max_tokens=MAX_TOKENS).text


class Serve(ServerProcess):
    """`quickdraft serve` as a process whose start is not waited for (ServerProcess.start waits)."""

    def __init__(self, *args: str, env: dict | None = None):
        super().__init__(*SERVE, *args, env=env)
        self.launch()

    @property
    def proc(self) -> subprocess.Popen:
        return self.process

    def output(self) -> str:
        return self.log()

    def health(self) -> httpx.Response | None:
        try:
            return httpx.get(f"{self.root}/health", timeout=2)
        except httpx.HTTPError:
            return None

    def wait_status(self, status: int, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"serve exited:\n{self.output()[-4000:]}"
            r = self.health()
            if r is not None and r.status_code == status:
                return r.json()
            time.sleep(0.2)
        raise AssertionError(f"/health never answered {status}:\n{self.output()[-4000:]}")

    def wait_waiting_for(self, name: str, timeout: float = 60) -> dict:
        """The 503 /health body once it names `name` among what the server waits for, probed at least once
        (before the first probe it says "not probed yet")."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            body = self.wait_status(503, timeout)
            if body["waiting_for"].get(name, "not probed yet") != "not probed yet":
                return body
            time.sleep(0.2)
        raise AssertionError(f"/health never named {name}:\n{self.output()[-4000:]}")

    def complete(self) -> httpx.Response:
        return httpx.post(f"{self.root}/v1/completions", timeout=60,
                          json={"prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0})


def test_serve_started_before_its_target_node_waits_then_serves(expected):
    port = free_port()
    serve = Serve("--target", f"node://127.0.0.1:{port}")
    node = NodeProcess(MODEL, "target", port=port, ctx=512)
    try:
        waiting = serve.wait_waiting_for(f"target node node://127.0.0.1:{port}")
        assert waiting["status"] == "starting" and "Connection refused" in waiting["message"]
        refused = serve.complete()
        assert refused.status_code == 503 and "waiting for target node" in refused.json()["error"]["message"]
        node.start()
        serve.wait_status(200)
        assert serve.complete().json()["choices"][0]["text"] == expected
    finally:
        serve.stop()
        node.stop()


def test_a_draft_node_down_at_start_means_the_target_alone_until_it_comes_up(expected):
    port = free_port()
    serve = Serve("--target", MODEL, "--draft", f"node://127.0.0.1:{port}")
    node = NodeProcess(MODEL, "draft", port=port, ctx=512)
    try:
        serve.wait_status(200)
        assert serve.complete().json()["choices"][0]["text"] == expected  # the target alone
        assert "not up yet" in serve.output()
        node.start()
        deadline = time.monotonic() + 30
        while "drafting resumes" not in serve.output() and time.monotonic() < deadline:
            assert serve.complete().json()["choices"][0]["text"] == expected
            time.sleep(0.5)
        assert "drafting resumes" in serve.output()
        assert serve.complete().json()["choices"][0]["text"] == expected  # with the draft node
    finally:
        serve.stop()
        node.stop()


def test_serve_gives_up_after_its_wait_with_the_reason():
    port = free_port()
    serve = Serve("--target", f"node://127.0.0.1:{port}", "--wait", "1")
    try:
        assert serve.proc.wait(timeout=60) == 1
    finally:
        serve.stop()
    assert f"gave up after waiting 1 s for target node node://127.0.0.1:{port}" in serve.output()


# ---- rpc-server versions ----------------------------------------------------------------------------------
class FakeRpcServer:
    """Answers HELLO like an rpc-server of another version (or hangs up, as older ones do on this HELLO)."""

    def __init__(self, version: tuple[int, int, int] | None):
        self.version = version
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.recv(1 + 8 + 24)
                if self.version is not None:
                    conn.sendall(struct.pack("<Q", 28) + bytes([*self.version, 0]) + bytes(24))
                    conn.recv(1)

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("version, message", [((6, 1, 0), "speaks RPC protocol 6.1.0"),
                                              (None, "runs another llama.cpp version")])
def test_an_rpc_server_of_another_version_is_refused_before_llama_cpp_connects(version, message):
    fake = FakeRpcServer(version)
    try:
        with pytest.raises(RpcWorkerError, match=message):
            probe_worker(fake.endpoint)
        with pytest.raises(RpcWorkerError, match=message):  # and the model is not loaded: no abort
            open_model(MODEL, n_ctx=128, threads=1, rpc_servers=[fake.endpoint], gpu_layers=99)
    finally:
        fake.close()


def test_serve_started_before_its_rpc_worker_waits_then_serves(expected):
    from quickdraft.llama_build import BuildError
    from quickdraft.node.rpc import worker_binary

    try:
        worker_binary()
    except BuildError as e:
        pytest.skip(f"rpc-server cannot be built on this machine: {e}")
    port = free_port()
    serve = Serve("--target", MODEL, "--draft", "ngram", "--rpc", f"127.0.0.1:{port}",
                  env={"QUICKDRAFT_LLAMA_LOG": "1"})
    worker = None
    try:
        serve.wait_waiting_for(f"RPC worker 127.0.0.1:{port}")
        worker = subprocess.Popen([sys.executable, "-m", "quickdraft", "rpc-worker", "--port", str(port),
                                   "--threads", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        serve.wait_status(200, timeout=180)
        assert serve.complete().json()["choices"][0]["text"] == expected  # spread over the worker = alone
        assert "offloaded" in serve.output()  # llama.cpp put the layers on the RPC device
    finally:
        serve.stop()
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=15)
