"""Node authentication: a shared key, proven with HMAC challenge-response at connect; the key never crosses
the wire.

With a key, a connection opens with two exchanges before anything else is served:

    client -> node   {op: "challenge", nonce: C}          C: 16 random bytes of the client's
    node -> client   {nonce: N, proof: HMAC(key, "node" C N)}
    client -> node   {op: "info", protocol, auth: HMAC(key, "client" N C)}
    node -> client   the info (or {error: "auth_failed"} and the connection closes)

Each side proves it holds the key on the other's fresh nonce, so neither proof can be replayed. A node with a
key answers every other first request with `auth_required`; a coordinator with a key refuses a node that
cannot prove it (a node without a key, or with another one). The key authenticates; it does not encrypt:
token ids still cross the network in the clear (use a VPN or a private link for that).

Where the key comes from: `quickdraft node --key`, or QUICKDRAFT_NODE_KEY, on the node; on the coordinator
`node://HOST:PORT?key=...`, the config's `nodes.key`, or QUICKDRAFT_NODE_KEY.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import secrets
from typing import Callable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from quickdraft.node import protocol as p

ENV_KEY = "QUICKDRAFT_NODE_KEY"
NONCE_BYTES = 16

log = logging.getLogger("quickdraft.node")


class NodeAuthError(p.NodeProtocolError):
    """The node key is missing or wrong (on either side)."""


def _mac(key: str, label: bytes, first: bytes, second: bytes) -> bytes:
    return hmac.new(key.encode(), label + first + second, hashlib.sha256).digest()


def env_key() -> str | None:
    return os.environ.get(ENV_KEY) or None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name may resolve to anything


def check_exposure(host: str, key: str | None, what: str = "node") -> None:
    """A node (or anything speaking the node protocol) off loopback must have a key."""
    if not key and not is_loopback(host):
        raise NodeAuthError(
            f"refusing to start a {what} on {host} without a node key: anyone who can reach it could use it. "
            f"Give one with --key or {ENV_KEY} (and the same key to the coordinator), or listen on 127.0.0.1."
        )


# ---- addresses --------------------------------------------------------------------------------------------
def with_key(url: str, key: str | None) -> str:
    """node://HOST:PORT[?...] with `key=` added, unless the address names a key already."""
    if not key:
        return url
    parts = urlsplit(url)
    query = parse_qsl(parts.query)
    if any(k == "key" for k, _ in query):
        return url
    return urlunsplit(parts._replace(query=urlencode([*query, ("key", key)])))


def public_url(url: str) -> str:
    """The address without its key, for logs, errors and metric labels."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "key"]
    return urlunsplit(parts._replace(query=urlencode(query)))


# ---- the node's side --------------------------------------------------------------------------------------
class NodeGate:
    """One connection's authentication on the node. `check(request)` returns None when the request may be
    served, or the error reply to send (after which the connection is closed: `closing`)."""

    def __init__(self, key: str | None, peer: str):
        self.key, self.peer = key, peer
        self.open = key is None
        self.closing = False
        self._nonce: bytes | None = None
        self._client_nonce: bytes | None = None

    def check(self, request: dict) -> dict | None:
        op = request.get("op")
        if op == "challenge":
            return self._challenge(request)
        if self.open:
            return None
        if op == "info" and self._nonce is not None and "auth" in request:
            proof = request.get("auth")
            expected = _mac(self.key, b"client", self._nonce, self._client_nonce)
            if isinstance(proof, bytes) and hmac.compare_digest(proof, expected):
                self.open = True
                return None
            return self._refuse("auth_failed", "wrong node key: this node was started with another key")
        return self._refuse("auth_required", "this node requires a node key: give the coordinator the node's key "
                            f"(node://HOST:PORT?key=..., nodes.key in its config, or {ENV_KEY})")

    def _challenge(self, request: dict) -> dict:
        nonce = request.get("nonce")
        if not isinstance(nonce, bytes) or len(nonce) != NONCE_BYTES:
            return self._refuse("bad_request", "challenge needs a 16-byte nonce")
        if self.key is None:
            return {"nonce": None}  # this node has no key: the client decides whether that will do
        self._client_nonce, self._nonce = nonce, secrets.token_bytes(NONCE_BYTES)
        return {"nonce": self._nonce, "proof": _mac(self.key, b"node", nonce, self._nonce)}

    def _refuse(self, code: str, message: str) -> dict:
        log.warning("refused connection from %s: %s", self.peer, message)
        self.closing = True
        return p.error_reply(code, message)


# ---- the coordinator's side -------------------------------------------------------------------------------
def client_handshake(key: str, url: str, call: Callable[[dict], dict]) -> tuple[bytes, bool]:
    """Run the challenge with the node over `call` (one request -> its reply). Returns the `auth` value the
    first `info` must carry, and whether the node proved it holds the key (checked after `info`, so that a
    node with another key refuses, and logs, the coordinator's proof first). Raises NodeAuthError for a node
    without a key."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    reply = call({"op": "challenge", "nonce": nonce})
    node_nonce, proof = reply.get("nonce"), reply.get("proof")
    if node_nonce is None:
        raise NodeAuthError(f"{url} runs without a node key, but this coordinator has one: start the node "
                            f"with the same --key (or {ENV_KEY}), or give the coordinator none")
    if not isinstance(node_nonce, bytes) or len(node_nonce) != NONCE_BYTES:
        raise NodeAuthError(f"{url} answered the key challenge with {reply!r:.200}")
    proven = isinstance(proof, bytes) and hmac.compare_digest(proof, _mac(key, b"node", nonce, node_nonce))
    return _mac(key, b"client", node_nonce, nonce), proven


def unproven_node(url: str) -> NodeAuthError:
    return NodeAuthError(f"{url} does not hold this coordinator's node key (wrong key on one side)")


def auth_error(code: str | None, message: str, where: str) -> NodeAuthError | None:
    """The client-side error for a node's refusal (`where`: "target node node://..."), or None."""
    if code == "auth_required":
        return NodeAuthError(f"{where} requires a node key and this coordinator has none: {message}")
    if code == "auth_failed":
        return NodeAuthError(f"{where} refused this coordinator's node key: {message}")
    return None
