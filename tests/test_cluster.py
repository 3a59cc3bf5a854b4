"""`quickdraft cluster`: a topology on loopback (one rpc-server worker holding the target's layers, a draft node,
two swappable SmolLM2 targets, the server) brought up and down by the real CLI; status; a draft node killed
and restarted mid-request (answer unchanged); a swap under load (the running request finishes with the old
model, a new one waits and gets the new model); and a target node killed mid-request (a clear 503, fast).

Every answer is compared with the target alone in this process (greedy), never with what a model "knows".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import httpx
import pytest
import yaml

from quickdraft import Engine
from quickdraft.node.launch import NodeProcess
from quickdraft.server.process import free_port

MODEL, MODEL_Q8 = "smollm2-135m", "smollm2-135m-q8_0"
PROMPT = "Once upon a time, a lighthouse keeper named"
LONG = 160  # tokens: long enough to be running while something else happens
SHORT = 12


def cluster_cli(*args: str, config: str, timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "quickdraft", "cluster", *args, "--config", config],
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def references():
    out = {}
    for name in (MODEL, MODEL_Q8):
        engine = Engine.load(name, "none", threads=1, n_ctx=512)
        out[name] = {n: engine.generate(PROMPT, max_tokens=n).text for n in (SHORT, LONG)}
        assert len(out[name][LONG]) > 200  # a real comparison: the model writes on for LONG tokens
        engine.target.close()
    return out


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, references):
    from quickdraft.llama_build import BuildError
    from quickdraft.node.rpc import worker_binary

    try:
        worker_binary()
    except BuildError as e:
        pytest.skip(f"rpc-server cannot be built on this machine: {e}")
    tmp = tmp_path_factory.mktemp("cluster")
    draft_port, server_port = free_port(), free_port()
    config = {
        "models": {"threads": 1, "k": 4},
        "nodes": {"key": "cluster test key", "wait": 120},
        "server": {"port": server_port, "api_key": "admin key", "log_level": "warning"},
        "cluster": {
            "run_dir": str(tmp / "run"),
            "workers": [{"port": free_port(), "threads": 1}],
            "nodes": [{"role": "draft", "model": MODEL, "port": draft_port, "threads": 1, "ctx": 512}],
            "models": [{"name": "smol", "path": MODEL, "ctx": 512, "default": True},
                       {"name": "smol-q8", "path": MODEL_Q8, "ctx": 512}],
        },
    }
    path = tmp / "cluster.yaml"
    path.write_text(yaml.safe_dump(config))
    up = cluster_cli("up", config=str(path))
    assert up.returncode == 0, up.stdout + up.stderr
    info = {"config": str(path), "root": f"http://127.0.0.1:{server_port}", "run": tmp / "run",
            "draft_port": draft_port, "headers": {"Authorization": "Bearer admin key"}}
    yield info
    down = cluster_cli("down", config=str(path), timeout=120)
    assert down.returncode == 0, down.stderr


def complete(cluster, max_tokens: int) -> dict:
    r = httpx.post(f"{cluster['root']}/v1/completions", headers=cluster["headers"], timeout=120,
                   json={"prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0})
    assert r.status_code == 200, r.text
    return r.json()


def stream_text(cluster, max_tokens: int, on_first_chunk=lambda: None) -> str:
    text, first = [], True
    with httpx.stream("POST", f"{cluster['root']}/v1/completions", headers=cluster["headers"], timeout=300,
                      json={"prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0, "stream": True}) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            assert "error" not in chunk, chunk
            text.append(chunk["choices"][0]["text"])
            if first and text[-1]:
                first = False
                on_first_chunk()
    return "".join(text)


def pid_of(cluster, label: str) -> int:
    return int((cluster["run"] / f"{label}.pid").read_text())


def test_up_serves_the_target_over_the_worker_with_the_draft_node(cluster, references):
    assert complete(cluster, SHORT)["choices"][0]["text"] == references[MODEL][SHORT]
    status = json.loads(cluster_cli("status", "--json", config=cluster["config"]).stdout)
    (worker,) = status["workers"]
    assert worker["reachable"] and worker["in_use"]  # the server holds the worker's one connection
    assert worker["rpc_protocol"].count(".") == 2 and worker["total_bytes"] > 0  # as the server saw it
    (node,) = status["nodes"]
    assert node["reachable"] and node["model"] == MODEL and node["rss_bytes"] > 0 and node["round_trip_ms"] > 0
    assert status["server"]["health"]["status"] == "ok" and status["server"]["model"] == "smol"
    text = cluster_cli("status", config=cluster["config"]).stdout
    assert "draft node" in text and "in use by the server's target" in text and "serving smol" in text


def test_a_draft_node_killed_mid_request_changes_nothing(cluster, references):
    label = next(p.stem for p in cluster["run"].glob("draft-node-*.pid"))
    os.kill(pid_of(cluster, label), 9)
    text = stream_text(cluster, LONG)  # the draft node is dead: rounds run on the target alone
    assert text == references[MODEL][LONG]
    node = NodeProcess(MODEL, "draft", port=cluster["draft_port"], threads=1, ctx=512,
                       env={"QUICKDRAFT_NODE_KEY": "cluster test key"}).start()  # restarted: used again
    try:
        log = cluster["run"] / "serve.log"
        resumed = log.read_text().count("drafting resumes")
        deadline = time.monotonic() + 40
        while log.read_text().count("drafting resumes") == resumed:  # the fallback's retry finds it again
            assert time.monotonic() < deadline, "the restarted draft node was never used again"
            assert complete(cluster, SHORT)["choices"][0]["text"] == references[MODEL][SHORT]
            time.sleep(0.5)
        killed = threading.Event()
        text = stream_text(cluster, LONG, on_first_chunk=lambda: (node.kill(), killed.set()))
        assert killed.is_set() and text == references[MODEL][LONG]  # killed mid-request: no token lost/repeated
    finally:
        node.stop()


def test_swap_under_load(cluster, references):
    results: dict = {}

    def swap():
        results["swap"] = cluster_cli("swap", "smol-q8", config=cluster["config"])

    def late_request():
        results["late"] = complete(cluster, SHORT)

    def start_swap():
        threading.Thread(target=swap).start()

    running = threading.Thread(target=lambda: results.update(running=stream_text(cluster, LONG, start_swap)))
    running.start()
    deadline = time.monotonic() + 60
    while httpx.get(f"{cluster['root']}/health").json().get("status") != "swapping":
        assert time.monotonic() < deadline, "the swap never started"
        time.sleep(0.05)
    late = threading.Thread(target=late_request)
    late.start()  # arrives during the swap: waits for it
    running.join(timeout=300)
    late.join(timeout=300)
    assert results["running"] == references[MODEL][LONG]  # the running request finished on the old target
    assert results["swap"].returncode == 0, results["swap"].stderr
    assert json.loads(results["swap"].stdout)["model"] == "smol-q8"
    assert results["late"]["model"] == "smol-q8"
    assert results["late"]["choices"][0]["text"] == references[MODEL_Q8][SHORT]


def test_swap_needs_the_api_key_and_a_known_model(cluster):
    r = httpx.post(f"{cluster['root']}/v1/quickdraft/admin/swap", json={"model": "smol"})
    assert r.status_code == 401
    bad = cluster_cli("swap", "no-such-model", config=cluster["config"])
    assert bad.returncode != 0 and "swap to 'no-such-model' failed" in bad.stderr
    assert httpx.get(f"{cluster['root']}/health").json()["status"] == "ok"  # the previous target is back


def test_a_target_node_killed_mid_request_is_a_fast_503(references):
    from test_start_order import Serve

    target = NodeProcess(MODEL, "target", threads=1, ctx=512).start()
    serve = Serve("--target", target.url, "--draft", "ngram")
    try:
        serve.wait_status(200)
        assert complete({"root": serve.root, "headers": {}}, SHORT)["choices"][0]["text"] == references[MODEL][SHORT]
        killer = threading.Timer(1.0, target.kill)
        killer.start()
        r = httpx.post(f"{serve.root}/v1/completions", timeout=60,
                       json={"prompt": PROMPT, "max_tokens": 400, "temperature": 0})
        assert r.status_code == 503 and r.json()["error"]["code"] == "node_unavailable", r.text
        assert "did not answer" not in r.json()["error"]["message"]  # seen at once, not a verify timeout
        target.start()  # the node comes back on the same port: the next request reconnects
        assert complete({"root": serve.root, "headers": {}}, SHORT)["choices"][0]["text"] == references[MODEL][SHORT]
    finally:
        serve.stop()
        target.stop()


# ---- the topology as config (no processes) ----------------------------------------------------------------
def _topology(tmp_path, **extra):
    from quickdraft.config import load_config

    data = {"cluster": {"workers": [{"port": 50052}, {"host": "10.0.0.3", "port": 50052, "local": False}],
                        "nodes": [{"role": "draft", "model": MODEL, "port": 8472}],
                        "models": [{"name": "a", "path": MODEL}, {"name": "b", "path": MODEL_Q8, "ctx": 1024,
                                                                  "default": True}]},
            "nodes": {"key": "k"}, **extra}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, load_config


def test_the_topology_sets_what_serve_serves(tmp_path):
    path, load_config = _topology(tmp_path)
    config = load_config(path)
    assert config.models.target == MODEL_Q8 and config.models.name == "b" and config.models.ctx == 1024
    assert config.models.draft == "node://127.0.0.1:8472"
    assert config.nodes.rpc == ["127.0.0.1:50052", "10.0.0.3:50052"]
    assert config.nodes.keyed(config.models.draft) == "node://127.0.0.1:8472?key=k"
    assert config.public_dict()["nodes"]["key"] == "***"
    flagged = load_config(path, overrides={"models.draft": "ngram"})  # flags win over the topology
    assert flagged.models.draft == "ngram"


def test_a_bad_topology_is_a_clear_error(tmp_path):
    from quickdraft.config import ConfigError

    path, load_config = _topology(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["cluster"]["models"][0]["default"] = True
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="at most one of cluster.models may be the default"):
        load_config(path)
