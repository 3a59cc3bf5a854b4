"""A connection to one node: connect and check it, send a request, wait for the reply with a deadline.

`NodeClient.call` either returns the reply or raises:
- `NodeUnavailableError` when the node cannot be reached, closes the connection or does not answer in time
  (the connection is then dropped, so a late reply can never be taken for the next one; the next call
  connects again);
- `UnknownSessionError` when the node no longer has the session (it restarted, or the session expired);
- `NodeProtocolError` for any other error the node reports.
Every (re)connection starts with `info`: another protocol version, role or vocabulary is refused there. With
a node key (`?key=` on the address, the `key` argument, or QUICKDRAFT_NODE_KEY) the connection first proves
the key and checks that the node holds it too (quickdraft.node.auth); a missing or wrong key raises
`NodeAuthError`, which is not retried.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from websockets.exceptions import WebSocketException

from quickdraft.errors import IncompatibleVocabError, NodeUnavailableError
from quickdraft.node import protocol as p
from quickdraft.node import wire
from quickdraft.node.auth import auth_error, client_handshake, env_key, public_url, unproven_node

MAX_MESSAGE_BYTES = 64 << 20  # the vocabulary reply is the largest message (6.5 MB for Gemma 3)


class NodeTimeoutError(NodeUnavailableError):
    """The node did not answer in time. Not retried: a node that hangs would make every retry hang too."""


@dataclass
class OpStats:
    """What one kind of request cost, from this side: calls, bytes each way, and time, of which the node
    reported `compute_seconds` as its own work (the rest is protocol overhead: encoding, framing, network)."""

    calls: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    seconds: float = 0.0
    compute_seconds: float = 0.0
    overheads: deque = field(default_factory=lambda: deque(maxlen=4096))  # per call, recent ones

    @property
    def overhead_seconds(self) -> float:
        return self.seconds - self.compute_seconds

    def median_overhead(self) -> float:
        return statistics.median(self.overheads) if self.overheads else 0.0


class NodeClient:
    def __init__(self, url: str, *, role: str, timeout: float = 30.0, connect_timeout: float = 5.0,
                 vocab_fingerprint: str | None = None, key: str | None = None):
        self.host, self.port, options = p.parse_node_url(url)
        self.url = public_url(url)  # never the key: it appears in errors, logs and metric labels
        self.key = options.get("key") or key or env_key()
        self.role = role
        self.timeout, self.connect_timeout = timeout, connect_timeout
        self.expected_fingerprint = vocab_fingerprint  # refuse a node with another vocabulary
        self.info: dict | None = None
        self.generation = 0  # counts successful connections: a new one may be a restarted node
        self.stats: dict[str, OpStats] = {}  # per op
        self._ws: wire.WebSocket | None = None
        self._lock = threading.Lock()

    # ---- connection ---------------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._ws is not None

    def connect(self) -> dict:
        """Open the connection and check the node; returns its info."""
        with self._lock:
            return self._connect()

    def _connect(self) -> dict:
        self._disconnect()
        try:
            self._ws = wire.connect(self.host, self.port, timeout=self.connect_timeout, max_size=MAX_MESSAGE_BYTES)
        except (OSError, TimeoutError, WebSocketException) as e:
            raise NodeUnavailableError(f"{self.role} node {self.url} is not reachable: {_describe(e)}") from None
        try:
            where = f"{self.role} node {self.url}"
            request, proven = {"op": "info", "protocol": p.PROTOCOL_VERSION}, True
            if self.key:
                request["auth"], proven = client_handshake(self.key, where,
                                                           lambda r: self._call(r, self.connect_timeout))
            info = self._call(request, self.connect_timeout)
            if not proven:
                raise unproven_node(where)
        except p.NodeProtocolError:
            self._disconnect()
            raise
        self._check(info)
        self.info = info
        self.generation += 1
        return info

    def _check(self, info: dict) -> None:
        problem = None
        if info.get("protocol") != p.PROTOCOL_VERSION:
            problem = p.NodeProtocolError(
                f"{self.url} speaks node protocol {info.get('protocol')}, this coordinator {p.PROTOCOL_VERSION} "
                f"(node runs quickdraft {info.get('quickdraft')}): run the same quickdraft version on both sides"
            )
        elif info.get("role") != self.role:
            problem = p.NodeProtocolError(
                f"{self.url} is a {info.get('role')} node, but it was given as the {self.role}"
            )
        elif self.expected_fingerprint and info.get("vocab_fingerprint") != self.expected_fingerprint:
            problem = IncompatibleVocabError(
                f"{self.role} node {self.url} serves {info.get('model')} ({info.get('n_vocab')} tokens), whose "
                "vocabulary is not the target's: draft and target must share one vocabulary"
            )
        if problem is not None:
            self._disconnect()
            raise problem

    def _disconnect(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            ws.close()

    def close(self) -> None:
        with self._lock:
            self._disconnect()

    # ---- requests -----------------------------------------------------------------------------------------
    def call(self, request: dict, timeout: float | None = None) -> dict:
        """Send one request and return its reply (connecting first if needed)."""
        with self._lock:
            if self._ws is None:
                self._connect()
            return self._call(request, self.timeout if timeout is None else timeout)

    def _call(self, request: dict, timeout: float) -> dict:
        t0 = time.perf_counter()
        data = p.pack(request)
        try:
            self._ws.send(data)
            raw = self._ws.recv(timeout=timeout)
        except TimeoutError:
            self._disconnect()
            raise NodeTimeoutError(
                f"{self.role} node {self.url} did not answer {request.get('op')} within {timeout:g} s"
            ) from None
        except (OSError, WebSocketException) as e:
            self._disconnect()
            raise NodeUnavailableError(
                f"{self.role} node {self.url} dropped the connection during {request.get('op')} "
                f"after {time.perf_counter() - t0:.2f} s: {_describe(e)}"
            ) from None
        reply = p.unpack(raw)
        op = self.stats.setdefault(request.get("op", "?"), OpStats())
        op.calls += 1
        op.bytes_sent += len(data)
        op.bytes_received += len(raw)
        elapsed, compute = time.perf_counter() - t0, reply.get("compute_us", 0) / 1e6
        op.seconds += elapsed
        op.compute_seconds += compute
        op.overheads.append(elapsed - compute)
        error = reply.get("error")
        if error == "unknown_session":
            raise p.UnknownSessionError(reply.get("message", ""))
        if error is not None:
            refused = auth_error(error, reply.get("message", ""), f"{self.role} node {self.url}")
            if refused is not None:
                self._disconnect()
                raise refused
            raise p.NodeProtocolError(f"{self.role} node {self.url}: {reply.get('message', error)}")
        return reply


def _describe(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return text if len(text) < 200 else text[:200] + "..."
