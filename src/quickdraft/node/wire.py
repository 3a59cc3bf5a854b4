"""WebSocket over a blocking socket, read and written by the thread that uses it.

websockets' threaded client and server hand every incoming message from a reader thread to the thread that
waits for it: two thread wake-ups per message on each side. On a busy CPU each wake-up can cost a good part
of a millisecond, more than everything else a round trip does. So the framing and the handshakes come from
the same library's Sans-I/O protocol objects (`websockets.client.ClientProtocol`,
`websockets.server.ServerProtocol`), and the thread that sends a message reads the reply from the socket
itself. A standard WebSocket either way: any WebSocket client can talk to a node.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Callable

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

READ_BYTES = 1 << 16

log = logging.getLogger("quickdraft.node")


class WebSocket:
    """One open WebSocket connection; `send` and `recv` whole binary messages."""

    def __init__(self, sock: socket.socket, protocol: ClientProtocol | ServerProtocol, events: list):
        self.sock, self.protocol = sock, protocol
        self._events = list(events)  # frames already parsed, not yet returned
        self._send_lock = threading.Lock()

    def send(self, data: bytes) -> None:
        with self._send_lock:
            self.protocol.send_binary(data)
            self._flush()

    def recv(self, timeout: float | None = None) -> bytes:
        """The next whole message. TimeoutError after `timeout` seconds; ConnectionError if the peer closes."""
        deadline = None if timeout is None else time.monotonic() + timeout
        parts: list[bytes] = []
        while True:
            while self._events:
                frame = self._events.pop(0)
                if not isinstance(frame, Frame):
                    continue
                if frame.opcode in (Opcode.BINARY, Opcode.TEXT, Opcode.CONT):
                    parts.append(bytes(frame.data))
                    if frame.fin:
                        return b"".join(parts)
                elif frame.opcode is Opcode.CLOSE:
                    raise ConnectionError("the peer closed the WebSocket")
                # PING is answered by the protocol object (flushed below); PONG needs nothing
            self._read(deadline)

    def _read(self, deadline: float | None) -> None:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no reply in time")
            self.sock.settimeout(remaining)
        else:
            self.sock.settimeout(None)
        try:
            data = self.sock.recv(READ_BYTES)
        except socket.timeout:
            raise TimeoutError("no reply in time") from None
        if not data:
            self.protocol.receive_eof()
            raise ConnectionError("the peer closed the connection")
        self.protocol.receive_data(data)
        if self.protocol.parser_exc is not None:
            raise ConnectionError(f"bad WebSocket data: {self.protocol.parser_exc}")
        with self._send_lock:
            self._flush()  # pongs, close replies
        self._events.extend(self.protocol.events_received())

    def _flush(self) -> None:
        for chunk in self.protocol.data_to_send():
            if chunk:
                self.sock.sendall(chunk)

    def close(self) -> None:
        try:
            with self._send_lock:
                self.protocol.send_close()
                self._flush()
        except Exception:
            pass
        finally:
            try:
                self.sock.close()
            except OSError:
                pass


def _set_options(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # small messages go out at once


def _handshake(sock: socket.socket, protocol, deadline: float) -> tuple[object, list]:
    """Read until the peer's handshake message arrives; (that message, frames that came after it)."""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("WebSocket handshake timed out")
        sock.settimeout(remaining)
        try:
            data = sock.recv(READ_BYTES)
        except socket.timeout:
            raise TimeoutError("WebSocket handshake timed out") from None
        if not data:
            raise ConnectionError("the connection closed during the WebSocket handshake")
        protocol.receive_data(data)
        events = protocol.events_received()
        if events:
            return events[0], events[1:]


def connect(host: str, port: int, *, timeout: float, max_size: int) -> WebSocket:
    """Open a WebSocket to ws://host:port/ within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        _set_options(sock)
        host_part = f"[{host}]" if ":" in host else host
        protocol = ClientProtocol(parse_uri(f"ws://{host_part}:{port}/"), max_size=max_size)
        protocol.send_request(protocol.connect())
        for chunk in protocol.data_to_send():
            sock.sendall(chunk)
        response, rest = _handshake(sock, protocol, deadline)
        if not isinstance(response, Response) or protocol.handshake_exc is not None:
            raise ConnectionError(f"WebSocket handshake refused: {protocol.handshake_exc}")
        return WebSocket(sock, protocol, rest)
    except BaseException:
        sock.close()
        raise


def accept(sock: socket.socket, *, max_size: int, timeout: float = 10.0,
           check: Callable[[Request], tuple[int, str] | None] | None = None) -> WebSocket:
    """Answer a client's WebSocket handshake on an accepted socket. check(request): None, or the (status, text)
    to refuse it with."""
    _set_options(sock)
    protocol = ServerProtocol(max_size=max_size)
    request, rest = _handshake(sock, protocol, time.monotonic() + timeout)
    if not isinstance(request, Request):
        raise ConnectionError("expected a WebSocket handshake request")
    refusal = check(request) if check is not None else None
    response = protocol.accept(request) if refusal is None else protocol.reject(*refusal)
    protocol.send_response(response)
    for chunk in protocol.data_to_send():
        if chunk:
            sock.sendall(chunk)
    if protocol.handshake_exc is not None:
        raise ConnectionError(f"bad WebSocket handshake: {protocol.handshake_exc}")
    if refusal is not None:
        raise ConnectionError(f"WebSocket handshake refused: {refusal[1]}")
    return WebSocket(sock, protocol, rest)


class Server:
    """Accept connections on host:port; each one gets a thread running handler(websocket). Past
    `max_connections` at once, a new connection is closed at once; `check`: as accept's."""

    def __init__(self, handler: Callable[[WebSocket], None], host: str, port: int, *, max_size: int,
                 max_connections: int | None = None, check: Callable[[Request], tuple[int, str] | None] | None = None):
        self.handler, self.max_size = handler, max_size
        self.max_connections, self.check = max_connections, check
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.create_server((host, port), family=family, backlog=64)
        self._closed = threading.Event()
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()

    def serve_forever(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self.socket.accept()
            except OSError:
                if self._closed.is_set():
                    return
                raise
            with self._lock:
                full = self.max_connections is not None and len(self._connections) >= self.max_connections
                if not full:
                    self._connections.add(conn)
            if full:
                log.warning("refused a connection: %d are open already, the most this node serves at once",
                            self.max_connections)
                conn.close()
                continue
            threading.Thread(target=self._serve, args=(conn,), name="node-connection", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            ws = accept(conn, max_size=self.max_size, check=self.check)
            self.handler(ws)
        except (ConnectionError, TimeoutError, OSError):
            pass
        finally:
            with self._lock:
                self._connections.discard(conn)
            try:
                conn.close()
            except OSError:
                pass

    def shutdown(self) -> None:
        self._closed.set()
        try:
            self.socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.socket.close()
        with self._lock:
            for conn in list(self._connections):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
