"""Node authentication: a shared key proven at connect (HMAC challenge-response), refused clearly on both sides.

Nodes run in process (NodeServer over a real SmolLM2 model); every refusal is checked from the coordinator's
side (the error names the key) and the node's (its log says whom it refused and why).
"""

from __future__ import annotations

import logging

import pytest

from quickdraft.loading import open_model
from quickdraft.node.auth import ENV_KEY, NodeAuthError, public_url, with_key
from quickdraft.node.client import NodeClient
from quickdraft.node.remote import RemoteDrafter
from quickdraft.node.server import NodeServer, run_node
from quickdraft.node.service import NodeService
from quickdraft.sampling import SamplingParams

MODEL = "smollm2-135m"
KEY = "correct horse battery staple"


@pytest.fixture(scope="module")
def model():
    m = open_model(MODEL, n_ctx=256, threads=1)
    yield m
    m.close()


@pytest.fixture(scope="module")
def keyed_node(model):
    server = NodeServer(NodeService(model, "draft"), port=0, key=KEY).start()
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def open_node(model):
    server = NodeServer(NodeService(model, "draft"), port=0).start()
    yield server
    server.shutdown()


@pytest.fixture(autouse=True)
def no_key_in_env(monkeypatch):
    monkeypatch.delenv(ENV_KEY, raising=False)


def test_the_right_key_connects_and_serves(keyed_node, model):
    drafter = RemoteDrafter(with_key(keyed_node.url, KEY), vocab_fingerprint=model.vocab_fingerprint)
    info = drafter.connect()
    assert info["role"] == "draft"
    tokens = drafter.propose(model.tokenize("Once upon a time"), 3, SamplingParams())
    assert len(tokens) == 3
    assert "key" not in drafter.url and KEY not in drafter.client.url  # never shown
    drafter.close()


def test_the_key_may_come_from_the_environment(keyed_node, monkeypatch):
    monkeypatch.setenv(ENV_KEY, KEY)
    client = NodeClient(keyed_node.url, role="draft", connect_timeout=5)
    assert client.connect()["role"] == "draft"
    assert client.call({"op": "ping", "echo": b"x"}) == {"echo": b"x"}
    client.close()


def test_a_missing_key_is_refused_on_both_sides(keyed_node, caplog):
    client = NodeClient(keyed_node.url, role="draft", connect_timeout=5)
    with caplog.at_level(logging.WARNING, logger="quickdraft.node"):
        with pytest.raises(NodeAuthError, match="requires a node key and this coordinator has none"):
            client.connect()
    assert "refused connection from 127.0.0.1" in caplog.text and "requires a node key" in caplog.text
    assert not client.connected


def test_a_wrong_key_is_refused_on_both_sides(keyed_node, caplog):
    client = NodeClient(with_key(keyed_node.url, "not the key"), role="draft", connect_timeout=5)
    with caplog.at_level(logging.WARNING, logger="quickdraft.node"):
        with pytest.raises(NodeAuthError, match="refused this coordinator's node key"):
            client.connect()
    assert "wrong node key" in caplog.text
    assert not client.connected


def test_requests_before_the_key_are_not_served(keyed_node):
    """A client that skips the handshake gets a refusal, and the node closes the connection."""
    from quickdraft.node import protocol as p
    from quickdraft.node import wire

    ws = wire.connect(keyed_node.host, keyed_node.port, timeout=5, max_size=1 << 20)
    ws.send(p.pack({"op": "open", "tokens": [1, 2], "sampling": {}}))
    assert p.unpack(ws.recv(timeout=5))["error"] == "auth_required"
    with pytest.raises(ConnectionError):
        ws.recv(timeout=5)
    ws.close()


def test_a_coordinator_with_a_key_refuses_a_node_without_one(open_node):
    client = NodeClient(with_key(open_node.url, KEY), role="draft", connect_timeout=5)
    with pytest.raises(NodeAuthError, match="runs without a node key"):
        client.connect()


def test_a_node_off_loopback_refuses_to_start_without_a_key():
    with pytest.raises(NodeAuthError, match="without a node key"):
        run_node(MODEL, "draft", host="0.0.0.0", port=0)


def test_keys_stay_out_of_displayed_addresses():
    url = with_key("node://10.0.0.2:8471?timeout=5", "s3cret")
    assert "key=s3cret" in url and "timeout=5" in url
    assert public_url(url) == "node://10.0.0.2:8471?timeout=5"
    assert with_key(url, "other") == url  # the address's own key wins


# ---- what a web page may not do to a node (quickdraft.server.guard's rule, at the WebSocket handshake) ------
def handshake_status(port: int, **headers: str) -> int:
    """The HTTP status a node answers a WebSocket upgrade with (101: accepted), as a browser would send it."""
    import socket

    lines = ["GET / HTTP/1.1", f"Host: {headers.pop('host', f'127.0.0.1:{port}')}", "Upgrade: websocket",
             "Connection: Upgrade", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13",
             *(f"{name}: {value}" for name, value in headers.items())]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        return int(sock.recv(4096).split(b" ", 2)[1])


def test_a_web_page_cannot_open_a_websocket_to_a_node(open_node, caplog):
    """Browsers let any page open a WebSocket to 127.0.0.1 (no CORS): it always names the page's Origin."""
    with caplog.at_level(logging.WARNING, logger="quickdraft.node"):
        assert handshake_status(open_node.port, Origin="https://evil.example") == 403
        assert handshake_status(open_node.port, host=f"attacker.example:{open_node.port}") == 403  # DNS rebinding
    assert "origin_not_allowed" in caplog.text and "host_not_allowed" in caplog.text
    assert handshake_status(open_node.port) == 101  # a coordinator's handshake
    assert handshake_status(open_node.port, host=f"localhost:{open_node.port}") == 101


def test_a_connection_that_does_not_prove_the_key_in_time_is_closed(model, caplog):
    from quickdraft.node import wire

    server = NodeServer(NodeService(model, "draft"), port=0, key=KEY, auth_seconds=0.5).start()
    try:
        ws = wire.connect(server.host, server.port, timeout=5, max_size=1 << 20)
        with caplog.at_level(logging.WARNING, logger="quickdraft.node"):
            with pytest.raises(ConnectionError):  # closed by the node, well before this wait runs out
                ws.recv(timeout=30)
        assert "no node key proven within 0.5 s" in caplog.text
        ws.close()
    finally:
        server.shutdown()


def test_a_node_serves_a_bounded_number_of_connections(model, caplog):
    from quickdraft.node import protocol as p
    from quickdraft.node import wire

    server = NodeServer(NodeService(model, "draft"), port=0, max_connections=2).start()
    held = [wire.connect(server.host, server.port, timeout=5, max_size=1 << 20) for _ in range(2)]
    try:
        with caplog.at_level(logging.WARNING, logger="quickdraft.node"):
            with pytest.raises(ConnectionError):
                wire.connect(server.host, server.port, timeout=5, max_size=1 << 20)
        assert "2 are open already" in caplog.text
        for ws in held:  # the ones it took are served as before
            ws.send(p.pack({"op": "ping", "echo": b"x"}))
            assert p.unpack(ws.recv(timeout=5)) == {"echo": b"x"}
    finally:
        for ws in held:
            ws.close()
        server.shutdown()


def test_a_handshake_with_a_repeated_host_is_refused(open_node):
    assert handshake_status(open_node.port, Host=f"localhost:{open_node.port}") == 400  # and a second Host
    assert handshake_status(open_node.port) == 101  # the node goes on
