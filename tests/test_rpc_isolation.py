"""`serve --rpc`: the target over an RPC worker runs in a child node process (quickdraft.node.supervisor), so
killing the worker mid-request fails that request fast (503) instead of ending serve (llama.cpp aborts the
process that uses a dead worker). serve stays up, says what it waits for (/health 503 `recovering`), and once a
worker listens again it answers exactly as before. Structured outputs work through the child (the node applies
the grammar). `--rpc-in-process` keeps the old behaviour: the target in serve's process.

Real processes on loopback (llama.cpp's rpc-server, SmolLM2); every answer is compared with the target alone in
this process, never with what the model "knows".
"""

from __future__ import annotations

import json
import subprocess
import threading
import time

import httpx
import pytest

from quickdraft import Engine
from quickdraft.constraint import GrammarSpec
from quickdraft.server.process import free_port
from test_start_order import Serve

MODEL = "smollm2-135m"
PROMPT = "Once upon a time, a lighthouse keeper named"
SHORT = 12
SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                           "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}


@pytest.fixture(scope="module")
def references():
    engine = Engine.load(MODEL, "none", threads=1, n_ctx=512)
    out = {"short": engine.generate(PROMPT, max_tokens=SHORT).text,
           "json": engine.generate("A person:", max_tokens=48, grammar=GrammarSpec("json_schema", SCHEMA)).text}
    engine.target.close()
    return out


def start_worker(port: int) -> subprocess.Popen:
    """llama.cpp's rpc-server itself (not the `quickdraft rpc-worker` wrapper): what the test kills."""
    from quickdraft.llama_build import BuildError
    from quickdraft.node.rpc import start_worker as start

    try:
        return start(port=port, threads=1, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except BuildError as e:
        pytest.skip(f"rpc-server cannot be built on this machine: {e}")


def complete(serve: Serve, **body) -> httpx.Response:
    return httpx.post(f"{serve.root}/v1/completions", timeout=120,
                      json={"prompt": PROMPT, "max_tokens": SHORT, "temperature": 0, **body})


def test_a_worker_killed_mid_request_is_a_fast_503_and_serve_recovers(references):
    port = free_port()
    worker = start_worker(port)
    serve = Serve("--target", MODEL, "--draft", "ngram", "--rpc", f"127.0.0.1:{port}")
    try:
        serve.wait_status(200, timeout=300)
        assert complete(serve).json()["choices"][0]["text"] == references["short"]
        r = complete(serve, prompt="A person:", max_tokens=48, json_schema=SCHEMA)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["text"] == references["json"]  # the child node applied the grammar
        status = httpx.get(f"{serve.root}/v1/quickdraft/status", timeout=10).json()["target_process"]
        assert status["pid"] > 0 and status["restarts"] == 0
        (w,) = status["rpc_workers"]  # recorded before the child connected: a busy worker answers nobody
        assert w["endpoint"] == f"127.0.0.1:{port}" and w["rpc_protocol"].count(".") == 2 and w["total_bytes"] > 0

        killer = threading.Timer(1.0, worker.kill)
        killer.start()
        t0 = time.monotonic()
        r = complete(serve, max_tokens=400)
        elapsed = time.monotonic() - t0
        killer.join()
        assert r.status_code == 503 and r.json()["error"]["code"] == "node_unavailable", r.text
        assert elapsed < 30  # seen when it happens, not after a timeout
        assert serve.proc.poll() is None  # serve is still up
        waiting = serve.wait_waiting_for(f"RPC worker 127.0.0.1:{port}")
        assert waiting["status"] == "recovering"
        refused = complete(serve)
        assert refused.status_code == 503 and refused.headers.get("retry-after")
        assert "waiting for RPC worker" in refused.json()["error"]["message"]

        worker = start_worker(port)  # a worker on the same address: serve starts its target node again
        serve.wait_status(200, timeout=300)
        assert complete(serve).json()["choices"][0]["text"] == references["short"]
        status = httpx.get(f"{serve.root}/v1/quickdraft/status", timeout=10).json()["target_process"]
        assert status["restarts"] == 1
    finally:
        serve.stop()
        worker.kill()
        worker.wait(timeout=15)
    assert "the target's node process ended" in serve.output()


def test_rpc_in_process_keeps_the_target_in_serve(references):
    port = free_port()
    worker = start_worker(port)
    serve = Serve("--target", MODEL, "--draft", "ngram", "--rpc", f"127.0.0.1:{port}", "--rpc-in-process")
    try:
        serve.wait_status(200, timeout=300)
        assert complete(serve).json()["choices"][0]["text"] == references["short"]
        status = httpx.get(f"{serve.root}/v1/quickdraft/status", timeout=10).json()
        assert "target_process" not in status and status["config"]["nodes"]["rpc_in_process"] is True
        assert json.dumps(status["engine"]).count("node://") == 0  # the target is local, over the worker
    finally:
        serve.stop()
        worker.kill()
        worker.wait(timeout=15)
