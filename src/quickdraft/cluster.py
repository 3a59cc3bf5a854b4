"""A cluster: one OpenAI endpoint over several machines, described in the config's `cluster:` section.

    cluster:
      run_dir: ~/.cache/quickdraft/cluster      # pid files and logs of the processes `up` starts
      workers:                                   # llama.cpp rpc-server workers: hold the target's layers
        - {host: 10.0.0.3, port: 50052, threads: 8, local: false}   # started on its machine by hand
        - {host: 127.0.0.1, port: 50053, threads: 1}                # local: `cluster up` starts it
      nodes:                                     # quickdraft nodes (a draft node; or a target node)
        - {role: draft, model: gemma-3-270m, host: 127.0.0.1, port: 8472, threads: 1}
      models:                                    # targets `serve` can load over the workers; swap between them
        - {name: gemma, path: gemma-3-270m-q8_0, ctx: 4096, default: true}
        - {name: smol, path: smollm2-135m, ctx: 2048}
      serve: true                                # `up` starts `quickdraft serve` too (the server: section)

`serve` with a cluster section serves the default model (or a target node, if the nodes list one) over the
workers with the draft node as its draft, unless --target/--draft/--rpc say otherwise. The node key is the
config's `nodes.key` (or QUICKDRAFT_NODE_KEY): `up` hands it to the nodes it starts through their environment.

`quickdraft cluster up | down | status [--json] | swap MODEL --config FILE`:
- up starts the local workers, nodes and server it owns (detached, in any order: serve waits for what it needs),
  each with a pid file and a log under run_dir; down stops them (only processes whose pid files it wrote and
  that still run quickdraft);
- status probes every worker (RPC protocol version, device memory, round trip) and node (quickdraft and
  protocol versions, model, memory, round trip) and the server's /health; a worker the server's target uses
  answers nobody else (rpc-server serves one client), so its figures are the server's, from when it connected;
- swap asks the server to load another of `models` (POST /v1/quickdraft/admin/swap, with server.admin_key,
  else the API key): new requests wait, running ones finish, the workers stay up.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from quickdraft.errors import QuickdraftError

if TYPE_CHECKING:
    from quickdraft.config import Config


class ClusterError(QuickdraftError):
    """The cluster's topology or one of its processes is not as it should be."""


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WorkerSpec(_Entry):
    host: str = "127.0.0.1"
    port: int = Field(50052, ge=1, le=65535)
    threads: int | None = Field(None, ge=1)
    mem: int | None = Field(None, ge=1, description="MB the worker may use")
    local: bool = Field(True, description="`cluster up` starts it on this machine (false: started elsewhere)")

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def label(self) -> str:
        return f"worker-{self.host}-{self.port}"


class NodeSpec(_Entry):
    role: Literal["target", "draft"] = "draft"
    model: str
    host: str = "127.0.0.1"
    port: int = Field(..., ge=1, le=65535)
    threads: int | None = Field(None, ge=1)
    ctx: int = Field(4096, ge=32)
    local: bool = True

    @property
    def url(self) -> str:
        return f"node://{self.host}:{self.port}"

    @property
    def label(self) -> str:
        return f"{self.role}-node-{self.host}-{self.port}"


class ModelSpec(_Entry):
    name: str
    path: str = Field(..., description="a .gguf path or a model name (quickdraft models)")
    ctx: int | None = Field(None, ge=32)
    default: bool = False


class ClusterConfig(_Entry):
    run_dir: str = "~/.cache/quickdraft/cluster"
    workers: list[WorkerSpec] = Field(default_factory=list)
    nodes: list[NodeSpec] = Field(default_factory=list)
    models: list[ModelSpec] = Field(default_factory=list)
    serve: bool = Field(True, description="`cluster up` starts `quickdraft serve` on this machine")

    @model_validator(mode="after")
    def _check(self) -> "ClusterConfig":
        if sum(m.default for m in self.models) > 1:
            raise ValueError("at most one of cluster.models may be the default")
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError("cluster.models names must be unique")
        for role in ("target", "draft"):
            if sum(n.role == role for n in self.nodes) > 1:
                raise ValueError(f"at most one {role} node in cluster.nodes")
        return self

    # ---- what serve uses ----------------------------------------------------------------------------------
    def node(self, role: str) -> NodeSpec | None:
        return next((n for n in self.nodes if n.role == role), None)

    def default_model(self) -> ModelSpec | None:
        return next((m for m in self.models if m.default), self.models[0] if self.models else None)

    def model_paths(self) -> dict[str, dict]:
        """Swappable targets: name -> {path, ctx}."""
        return {m.name: {"path": m.path, "ctx": m.ctx} for m in self.models}

    def serving_overrides(self) -> dict[str, object]:
        """Config keys (dotted) that the topology sets for `serve`; flags and --set still win over them."""
        out: dict[str, object] = {}
        target_node, draft_node = self.node("target"), self.node("draft")
        model = self.default_model()
        if target_node is not None:
            out["models.target"] = target_node.url
        elif model is not None:
            out["models.target"] = model.path
            out["models.name"] = model.name
            if model.ctx:
                out["models.ctx"] = model.ctx
        if draft_node is not None:
            out["models.draft"] = draft_node.url
        if self.workers and target_node is None:
            out["nodes.rpc"] = [w.endpoint for w in self.workers]
        return out

    @property
    def run_path(self) -> Path:
        return Path(os.path.expanduser(self.run_dir))


# ---- the processes `up` owns ------------------------------------------------------------------------------
def _quickdraft(*args: str) -> list[str]:
    return [sys.executable, "-m", "quickdraft", *args]


def worker_command(w: WorkerSpec) -> list[str]:
    cmd = _quickdraft("rpc-worker", "--host", w.host, "--port", str(w.port))
    if w.threads:
        cmd += ["--threads", str(w.threads)]
    if w.mem:
        cmd += ["--mem", str(w.mem)]
    return cmd


def node_command(n: NodeSpec, cluster: ClusterConfig) -> list[str]:
    cmd = _quickdraft("node", "--model", n.model, "--role", n.role, "--host", n.host, "--port", str(n.port),
                      "--ctx", str(n.ctx))
    if n.threads:
        cmd += ["--threads", str(n.threads)]
    if n.role == "target" and cluster.workers:
        cmd += ["--rpc", ",".join(w.endpoint for w in cluster.workers)]
    return cmd


def owned_processes(config: "Config", config_path: str) -> list[tuple[str, list[str]]]:
    """(label, command) of every process `up` starts here, in start order (any order works)."""
    cluster = _cluster(config)
    out = [(w.label, worker_command(w)) for w in cluster.workers if w.local]
    out += [(n.label, node_command(n, cluster)) for n in cluster.nodes if n.local]
    if cluster.serve:
        out.append(("serve", _quickdraft("serve", "--config", str(Path(config_path).resolve()))))
    return out


def _cluster(config: "Config") -> ClusterConfig:
    if config.cluster is None:
        raise ClusterError("the config has no cluster: section (see `quickdraft cluster --help`)")
    return config.cluster


def _pid_file(run_dir: Path, label: str) -> Path:
    return run_dir / f"{label}.pid"


def running_pid(pid_file: Path) -> int | None:
    """The pid in the file if that process still runs quickdraft (a pid may be reused: then None)."""
    import psutil

    try:
        pid = int(pid_file.read_text().strip())
        cmdline = " ".join(psutil.Process(pid).cmdline())
    except (OSError, ValueError, psutil.Error):
        return None
    return pid if "quickdraft" in cmdline else None


def up(config: "Config", config_path: str, *, say=print) -> list[str]:
    """Start what is not running yet, detached, each with a pid file and a log in run_dir."""
    cluster = _cluster(config)
    run_dir = cluster.run_path
    run_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if config.nodes.key:
        env["QUICKDRAFT_NODE_KEY"] = config.nodes.key  # through the environment: not in the process list
    started = []
    for label, cmd in owned_processes(config, config_path):
        pid_file = _pid_file(run_dir, label)
        pid = running_pid(pid_file)
        if pid is not None:
            say(f"{label}: already running (pid {pid})")
            continue
        log = open(run_dir / f"{label}.log", "ab")
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)  # outlives this command
        log.close()
        pid_file.write_text(f"{proc.pid}\n")
        say(f"{label}: started (pid {proc.pid}, log {run_dir / (label + '.log')})")
        started.append(label)
    return started


def down(config: "Config", *, say=print, timeout: float = 15.0) -> list[str]:
    """Stop the processes `up` started (server first, workers last): SIGTERM, then SIGKILL after `timeout`."""
    run_dir = _cluster(config).run_path
    order = {"serve": 0, "target": 1, "draft": 1, "worker": 2}
    files = sorted(run_dir.glob("*.pid"), key=lambda f: order.get(f.stem.split("-")[0], 1))
    stopped = []
    for pid_file in files:
        label, pid = pid_file.stem, running_pid(pid_file)
        if pid is not None:
            _stop(pid, timeout)
            say(f"{label}: stopped (pid {pid})")
            stopped.append(label)
        pid_file.unlink(missing_ok=True)
    return stopped


def _stop(pid: int, timeout: float) -> None:
    import psutil

    try:
        proc = psutil.Process(pid)
        proc.terminate()
        proc.wait(timeout)
    except psutil.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)
    except psutil.NoSuchProcess:
        pass


# ---- status -----------------------------------------------------------------------------------------------
def worker_status(w: WorkerSpec, run_dir: Path) -> dict:
    from quickdraft.node.rpc import RpcWorkerError, RpcWorkerUnreachable, probe_worker

    out: dict = {"endpoint": w.endpoint, "local": w.local, "pid": running_pid(_pid_file(run_dir, w.label))}
    try:
        s = probe_worker(w.endpoint, timeout=1.0)
    except RpcWorkerUnreachable as e:
        return {**out, "reachable": False, "error": str(e)}
    except RpcWorkerError as e:
        busy = "busy" in str(e)
        return {**out, "reachable": busy, "in_use": busy, "error": None if busy else str(e)}
    return {**out, "reachable": True, "in_use": False, "rpc_protocol": ".".join(map(str, s.version)),
            "devices": s.devices, "free_bytes": s.free_bytes, "total_bytes": s.total_bytes,
            "round_trip_ms": round(s.round_trip_ms, 3)}


def node_status(n: NodeSpec, key: str | None, run_dir: Path) -> dict:
    from quickdraft.node.auth import with_key
    from quickdraft.node.client import NodeClient

    out: dict = {"url": n.url, "role": n.role, "local": n.local, "pid": running_pid(_pid_file(run_dir, n.label))}
    client = NodeClient(with_key(n.url, key), role=n.role, connect_timeout=2.0, timeout=5.0)
    try:
        info = client.connect()
        t0 = time.perf_counter()
        client.call({"op": "ping"})
        rtt = (time.perf_counter() - t0) * 1000
    except Exception as e:
        return {**out, "reachable": False, "error": f"{type(e).__name__}: {e}"}
    finally:
        client.close()
    return {**out, "reachable": True, "quickdraft": info.get("quickdraft"), "protocol": info.get("protocol"),
            "llama_cpp": info.get("llama_cpp", {}).get("llama_cpp_python"), "model": info.get("model"),
            "rss_bytes": info.get("rss_bytes"), "sessions": info.get("sessions"), "round_trip_ms": round(rtt, 3)}


def server_root(config: "Config") -> str:
    host = config.server.host
    host = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)
    return f"http://{host}:{config.server.port}"


def _auth_headers(config: "Config", *, admin: bool = False) -> dict:
    """The API key's header; admin: the admin key's (server.admin_key, else the API key), for swap."""
    key = (config.server.admin_key if admin else None) or config.server.api_key
    return {"Authorization": f"Bearer {key}"} if key else {}


def server_status(config: "Config") -> dict:
    import httpx

    root = server_root(config)
    out: dict = {"url": root, "pid": running_pid(_pid_file(_cluster(config).run_path, "serve"))}
    try:
        health = httpx.get(f"{root}/health", headers=_auth_headers(config), timeout=3)  # with the key: where
    except httpx.HTTPError as e:
        return {**out, "reachable": False, "error": str(e)}
    out.update(reachable=True, health=health.json())
    if health.status_code == 200:
        status = httpx.get(f"{root}/v1/quickdraft/status", headers=_auth_headers(config), timeout=3)
        if status.status_code == 200:
            body = status.json()
            out.update(model=body.get("model"), version=body.get("version"), engine=body.get("engine"),
                       target_process=body.get("target_process"))
    return out


def fill_in_use_workers(workers: list[dict], server: dict) -> None:
    """A worker the server's target uses answers nobody else: show what it said when the server's target node
    connected to it (`as_of`), from the server's status."""
    said = {w["endpoint"]: w for w in ((server.get("target_process") or {}).get("rpc_workers") or [])}
    for w in workers:
        if w.get("in_use") and w["endpoint"] in said:
            known = said[w["endpoint"]]
            w.update({k: known[k] for k in ("rpc_protocol", "devices", "free_bytes", "total_bytes", "round_trip_ms")},
                     as_of=known["probed_at"])


def status(config: "Config") -> dict:
    cluster = _cluster(config)
    run_dir = cluster.run_path
    workers, server = [worker_status(w, run_dir) for w in cluster.workers], server_status(config)
    fill_in_use_workers(workers, server)
    return {
        "workers": workers,
        "nodes": [node_status(n, config.nodes.key, run_dir) for n in cluster.nodes],
        "models": [m.model_dump() for m in cluster.models],
        "server": server,
    }


def format_status(s: dict) -> str:
    def mb(n):
        return f"{n / 2**20:.0f} MB" if isinstance(n, int) else "?"

    lines = []
    for w in s["workers"]:
        if not w["reachable"]:
            state = f"DOWN ({w.get('error')})"
        elif w.get("in_use") and "as_of" in w:
            state = (f"up, in use by the server's target, RPC protocol {w['rpc_protocol']}, {mb(w['free_bytes'])} "
                     f"free of {mb(w['total_bytes'])} when it connected "
                     f"{time.strftime('%H:%M:%S', time.localtime(w['as_of']))}")
        elif w.get("in_use"):
            state = "up, in use by a coordinator (rpc-server serves one client at a time)"
        elif w.get("error"):
            state = f"REFUSED ({w['error']})"
        else:
            state = (f"up, RPC protocol {w['rpc_protocol']}, {mb(w['free_bytes'])} free of {mb(w['total_bytes'])}, "
                     f"{w['round_trip_ms']:.2f} ms")
        lines.append(f"worker {w['endpoint']:22s} {state}")
    for n in s["nodes"]:
        state = (f"up, {n['model']}, quickdraft {n['quickdraft']} (protocol {n['protocol']}), {mb(n['rss_bytes'])}, "
                 f"{n['round_trip_ms']:.2f} ms" if n["reachable"] else f"DOWN ({n.get('error')})")
        lines.append(f"{n['role']} node {n['url']:22s} {state}")
    srv = s["server"]
    if not srv["reachable"]:
        lines.append(f"server {srv['url']} DOWN ({srv.get('error')})")
    else:
        h = srv["health"]
        lines.append(f"server {srv['url']} {h.get('status')}" + (f", serving {srv.get('model')}" if srv.get("model")
                                                                 else f": {h.get('message', '')}"))
    for m in s["models"]:
        lines.append(f"model {m['name']}: {m['path']}" + (" (default)" if m["default"] else ""))
    return "\n".join(lines)


# ---- swap -------------------------------------------------------------------------------------------------
def swap(config: "Config", model: str, timeout: float = 600.0) -> dict:
    """Ask the server to load another target (running requests finish first; the workers stay up)."""
    import httpx

    r = httpx.post(f"{server_root(config)}/v1/quickdraft/admin/swap", json={"model": model},
                   headers=_auth_headers(config, admin=True), timeout=timeout)
    if r.status_code != 200:
        try:
            message = r.json()["error"]["message"]
        except Exception:
            message = r.text
        raise ClusterError(f"swap to {model!r} failed ({r.status_code}): {message}")
    return r.json()


# ---- `quickdraft cluster` ---------------------------------------------------------------------------------
def _load(args) -> tuple["Config", str]:
    from quickdraft.config import ENV_CONFIG_FILE, load_config

    path = args.config or os.environ.get(ENV_CONFIG_FILE)
    if not path:
        raise ClusterError("name the cluster's config file: --config FILE (or QUICKDRAFT_CONFIG)")
    return load_config(path), path


def wait_healthy(config: "Config", timeout: float, say=print) -> bool:
    import httpx

    deadline = time.monotonic() + timeout
    root = server_root(config)
    run_dir = _cluster(config).run_path
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{root}/health", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        if running_pid(_pid_file(run_dir, "serve")) is None:  # it exited: say why, do not wait on
            tail = (run_dir / "serve.log").read_text(errors="replace").splitlines()[-15:]
            say("the server exited:\n" + "\n".join(tail))
            return False
        time.sleep(0.5)
    say(f"the server at {root} is not healthy after {timeout:g} s: see `quickdraft cluster status`")
    return False


def cmd_cluster(args) -> int:
    config, path = _load(args)
    if args.action == "up":
        up(config, path)
        if config.cluster.serve and not args.no_wait:
            return 0 if wait_healthy(config, config.nodes.wait + 300) else 1
        return 0
    if args.action == "down":
        down(config)
        return 0
    if args.action == "status":
        s = status(config)
        print(json.dumps(s, indent=2) if args.json else format_status(s))
        return 0
    if args.action == "swap":
        if not args.model:
            raise ClusterError("cluster swap needs a MODEL (one of cluster.models, by name)")
        print(json.dumps(swap(config, args.model)))
        return 0
    raise ClusterError(f"unknown action {args.action}")


def register(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser(
        "cluster", help="start, stop, inspect a cluster of RPC workers, nodes and a server; swap its model",
        description="up: start the local workers, nodes and server of the config's cluster: section (pid files "
        "and logs in its run_dir); down: stop them; status [--json]: each worker and node (reachable, version, "
        "model, memory, round trip) and the server; swap MODEL: load another of cluster.models in the server "
        "while the workers stay up.",
    )
    c.add_argument("action", choices=["up", "down", "status", "swap"])
    c.add_argument("model", nargs="?", help="for swap: a model name from cluster.models")
    c.add_argument("--config", metavar="FILE", help="the config file with the cluster: section "
                   "(default: $QUICKDRAFT_CONFIG)")
    c.add_argument("--json", action="store_true", help="status as JSON")
    c.add_argument("--no-wait", action="store_true", help="up: return without waiting for the server's /health")
    c.set_defaults(func=cmd_cluster)
