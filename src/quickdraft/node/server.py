"""`quickdraft node`: one model behind the node protocol, served over WebSocket.

One thread per connection reads a request from its socket, lets the `NodeService` answer it, and writes the
reply (quickdraft.node.wire: no hand-off between threads). A background thread expires idle sessions. Binds to
127.0.0.1 unless told otherwise; off loopback it refuses to start without a node key, which every connection
must then prove (quickdraft.node.auth) within AUTH_SECONDS. At most MAX_CONNECTIONS at once.

A browser lets any web page open a WebSocket to 127.0.0.1 (CORS does not apply to WebSockets), so the
handshake is refused (403) when it carries an Origin (nodes serve no web page) or, on loopback, a Host that is
not a loopback name (DNS rebinding): quickdraft.server.guard's rule, as the HTTP server applies it.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from typing import Sequence

from quickdraft.node import protocol as p
from quickdraft.node import wire
from quickdraft.node.auth import NodeGate, check_exposure, env_key
from quickdraft.node.service import DEFAULT_SESSION_TTL, NodeService
from quickdraft.server.guard import RequestRules

log = logging.getLogger("quickdraft.node")

DEFAULT_PORTS = {"target": 8471, "draft": 8472}
MAX_REQUEST_BYTES = 16 << 20
MAX_CONNECTIONS = 64  # coordinators hold one each (plus readiness probes and `cluster status`, briefly)
AUTH_SECONDS = 10.0  # a node with a key: the time a new connection has to prove it


class NodeServer:
    def __init__(self, service: NodeService, host: str = "127.0.0.1", port: int = 0, *, key: str | None = None,
                 max_connections: int = MAX_CONNECTIONS, auth_seconds: float = AUTH_SECONDS):
        self.service = service
        self.key = key or None
        self.auth_seconds = auth_seconds
        self.rules = RequestRules.for_node(host)
        self._server = wire.Server(self._connection, host, port, max_size=MAX_REQUEST_BYTES,
                                   max_connections=max_connections, check=self._check_handshake)
        self.host = host
        self.port = self._server.socket.getsockname()[1]
        self._stop = threading.Event()
        self._sweeper = threading.Thread(target=self._sweep, name="session-sweeper", daemon=True)

    @property
    def url(self) -> str:
        return f"node://{self.host}:{self.port}"

    def _check_handshake(self, request) -> tuple[int, str] | None:
        """The WebSocket upgrade request: refused (status, why) if a browser page sent it."""
        try:
            refusal = self.rules.check("GET", request.headers)
        except LookupError:  # websockets' Headers: a header sent twice (MultipleValuesError)
            return 400, "a header is repeated"
        if refusal is None:
            return None
        log.warning("refused a WebSocket handshake (%s): %s", refusal.code, refusal.message)
        return refusal.status, refusal.message

    def _connection(self, ws: wire.WebSocket) -> None:
        """Serve one client until it goes away (or fails to prove the node key in time)."""
        gate = NodeGate(self.key, _peer(ws))
        deadline = time.monotonic() + self.auth_seconds
        while True:
            # ConnectionError when the client leaves, TimeoutError when it has not proven the key in time: the
            # wire server ends the thread and closes the connection
            try:
                message = ws.recv(timeout=None if gate.open else max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                log.warning("closed the connection from %s: no node key proven within %g s", gate.peer,
                            self.auth_seconds)
                raise
            try:
                request = p.unpack(message)
            except Exception as e:
                reply = p.error_reply("bad_request", f"unreadable message: {e}")
            else:
                refusal = gate.check(request)
                reply = refusal if refusal is not None else self.service.handle(request)
            ws.send(p.pack(reply))
            if gate.closing:
                ws.close()
                return

    def _sweep(self) -> None:
        interval = max(1.0, min(30.0, self.service.session_ttl / 4))
        while not self._stop.wait(interval):
            with self.service.lock:
                n = self.service.expire_idle()
            if n:
                log.info("expired %d idle session(s)", n)

    def serve_forever(self) -> None:
        self._sweeper.start()
        self._server.serve_forever()

    def start(self) -> "NodeServer":
        """Serve from background threads (tests, benchmarks)."""
        threading.Thread(target=self.serve_forever, name="node-server", daemon=True).start()
        return self

    def shutdown(self) -> None:
        self._stop.set()
        self._server.shutdown()


def _peer(ws: wire.WebSocket) -> str:
    try:
        host, port = ws.sock.getpeername()[:2]
        return f"{host}:{port}"
    except OSError:
        return "?"


def run_node(model: str, role: str = "target", *, host: str = "127.0.0.1", port: int | None = None,
             threads: int | None = None, n_ctx: int = 4096, rpc: Sequence[str] = (),
             gpu_layers: int | str | None = None, main_gpu: int | None = None,
             session_ttl: float = DEFAULT_SESSION_TTL, key: str | None = None) -> int:
    """Load the model, serve until SIGINT/SIGTERM. Prints one `listening on node://HOST:PORT` line when ready.
    key (else QUICKDRAFT_NODE_KEY): the node key clients must prove; required off loopback.

    The model is opened and (for a target) made a target exactly as the in-process engine does it
    (quickdraft.loading): a target node measures its exact K on this machine, where its verification runs.
    gpu_layers, main_gpu: quickdraft.placement's (None: auto; with RPC workers auto is all of them)."""
    from quickdraft.loading import describe_placement, open_model
    from quickdraft.placement import resolve_one

    logging.basicConfig(level=logging.INFO, format="[quickdraft node] %(message)s", stream=sys.stderr)
    if role not in p.ROLES:
        raise ValueError(f"--role must be one of {', '.join(p.ROLES)}")
    key = key or env_key()
    check_exposure(host, key)  # before loading anything
    rpc = tuple(rpc)
    placed = resolve_one(role, model, gpu_layers, main_gpu, n_ctx=n_ctx, threads=threads, rpc=bool(rpc))
    llama = open_model(model, n_ctx=n_ctx, threads=placed.threads, rpc_servers=rpc, gpu_layers=placed.gpu_layers,
                       main_gpu=placed.main_gpu)
    service = NodeService(llama, role, session_ttl=session_ttl)
    log.info("%s node: %s (%d tokens of context, %d threads%s), vocabulary %s...%s", role, llama.name, llama.n_ctx,
             llama.threads, f", {describe_placement(llama)}, RPC workers {', '.join(rpc)}" if rpc else "",
             llama.vocab_fingerprint[:12],
             f", K up to {service.target.max_k} verified exactly" if service.target is not None else "")
    server = NodeServer(service, host, DEFAULT_PORTS[role] if port is None else port, key=key)
    if key:
        log.info("clients must prove the node key")
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s: the node key authenticates clients but nothing is encrypted; keep it on a "
                    "trusted network", host)

    def stop(signum, frame):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"listening on {server.url}", flush=True)
    server.serve_forever()
    llama.close()
    return 0
