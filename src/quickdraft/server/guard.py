"""What a web page may not do to a quickdraft server or node: the checks made on every request before anything
else (the OpenAI server: app.py and startup.py; a node's WebSocket handshake: node/server.py).

A server on 127.0.0.1 is in reach of every page the user's browser opens. A page may send "simple" cross-origin
requests (a POST whose body is text/plain, or has no type at all: no preflight, no CORS check before it runs),
open WebSockets (never checked by CORS), and with DNS rebinding point a name of its own at 127.0.0.1, so that
the browser takes the server for the page's own origin. So:

- **Origin.** A browser names the page's origin on every cross-origin request and WebSocket. Unless it is in
  the allow-list (`server.cors_origins`, empty by default, as Ollama's OLLAMA_ORIGINS; a node allows none) the
  request is refused (403). Requests without an Origin (curl, SDKs, other servers) pass.
- **Host.** On a listener bound to a loopback address, the Host header must name a loopback host (`localhost`,
  `127.x.x.x`, `[::1]`, any port) or one of `server.allowed_hosts`: a rebound page sends its own name (403). A
  listener on 0.0.0.0 or a real address is reached by many names: no Host check there (the API key, required
  off loopback, does the work).
- **Content-Type.** A body must come as `application/json` (parameters such as `; charset=utf-8` allowed),
  else 415: the types a page may send without a preflight (text/plain, form encodings, none) never pass.

`RequestRules.check` is the rule, written once; `RequestGuard` applies it to an ASGI app and answers CORS
preflights for the allowed origins (Starlette's CORSMiddleware).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from quickdraft.config import ServerConfig

log = logging.getLogger("quickdraft.server")

GUARDED = "quickdraft.guarded"  # set in an ASGI scope once checked, so that nested guards check it once
BODY_METHODS = ("POST", "PUT", "PATCH", "DELETE")
JSON = "application/json"


class Headers(Protocol):
    """Starlette's and websockets' Headers: get() ignores the name's case."""

    def get(self, key: str, default: str | None = None) -> str | None: ...


@dataclass(frozen=True)
class Refusal:
    status: int  # 403 or 415
    code: str  # origin_not_allowed, host_not_allowed, unsupported_media_type
    message: str


@dataclass(frozen=True)
class RequestRules:
    """Who may talk to one listener. `loopback`: it is bound to a loopback address (then Host is checked).
    `settings`: where its allow-lists are configured, for the refusals' messages (None: a node, which has none)."""

    loopback: bool
    allowed_hosts: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    settings: tuple[str, str] | None = ("server.cors_origins", "server.allowed_hosts")

    @classmethod
    def for_node(cls, host: str) -> "RequestRules":
        """A node serves coordinators, never web pages: no origin is allowed."""
        return cls(is_loopback(host), settings=None)

    @classmethod
    def for_server(cls, server: "ServerConfig") -> "RequestRules":
        return cls(is_loopback(server.host),
                   tuple(h.strip().lower().rstrip(".") for h in server.allowed_hosts if h.strip()),
                   tuple(normal_origin(o) for o in server.cors_origins if o.strip()))

    def check(self, method: str, headers: Headers, *, network: bool = True) -> Refusal | None:
        """None when the request may go on, else why not. network: False for a connection that is not TCP/IP
        (an in-process test client, a Unix socket), which no browser can open: its Host is not checked."""
        return (self.check_origin(headers.get("origin"))
                or (self.check_host(headers.get("host")) if network else None)
                or check_content_type(method, headers))

    def check_origin(self, origin: str | None) -> Refusal | None:
        if origin is None or self.origin_allowed(origin):
            return None
        return Refusal(403, "origin_not_allowed",
                       f"requests from the web page at {origin[:200]!r} are refused: a browser page may not drive "
                       f"this {self._what}" + self._hint(0, "To allow that page, add its origin to"))

    def origin_allowed(self, origin: str) -> bool:
        pattern = origins_pattern(self.allowed_origins)
        return pattern is not None and pattern.fullmatch(normal_origin(origin)) is not None

    def check_host(self, host: str | None) -> Refusal | None:
        """DNS rebinding: on a loopback listener, a Host that is not a loopback name (nor an allowed one)."""
        if not self.loopback or host is None:
            return None
        name = host_name(host)
        if name == "localhost" or _is_loopback_ip(name) or "*" in self.allowed_hosts or name in self.allowed_hosts:
            return None
        return Refusal(403, "host_not_allowed",
                       f"the Host {host[:200]!r} is not this {self._what}'s: on a loopback address it answers "
                       "localhost, 127.0.0.1 and [::1] only (a web page may have pointed a name of its own here)"
                       + self._hint(1, "To reach it by another name, add the name to"))

    @property
    def _what(self) -> str:
        return "server" if self.settings else "node"

    def _hint(self, setting: int, text: str) -> str:
        return f". {text} {self.settings[setting]}" if self.settings else ""


def check_content_type(method: str, headers: Headers) -> Refusal | None:
    """A request with a body must send it as JSON."""
    if method.upper() not in BODY_METHODS or not has_body(headers):
        return None
    content_type = headers.get("content-type")
    if content_type is not None and content_type.split(";")[0].strip().lower() == JSON:
        return None
    got = (content_type or "none")[:100]
    return Refusal(415, "unsupported_media_type", f"send the body as JSON with the header 'Content-Type: {JSON}' "
                   f"(got {got!r})")


def has_body(headers: Headers) -> bool:
    length = headers.get("content-length")
    return headers.get("transfer-encoding") is not None or (length is not None and length.strip() not in ("", "0"))


def bearer_matches(headers, key: str) -> bool:
    """`Authorization: Bearer <key>` with this key (compared in constant time)."""
    scheme, _, token = (headers.get("authorization") or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())


# ---- names ------------------------------------------------------------------------------------------------
def is_loopback(host: str) -> bool:
    """A listener's bind address: loopback or not (a host name other than localhost may resolve to anything)."""
    return host.lower() == "localhost" or _is_loopback_ip(host.strip("[]"))


def _is_loopback_ip(name: str) -> bool:
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _is_ip(address: str | None) -> bool:
    try:
        ipaddress.ip_address(address or "")
        return True
    except ValueError:
        return False


def host_name(host: str) -> str:
    """A Host header's name, without its port, brackets or final dot, in lower case: "[::1]:8088" -> "::1"."""
    host = host.strip().lower()
    if host.startswith("["):
        name = host[1:].partition("]")[0]
    else:
        name, colon, port = host.rpartition(":")
        if not colon or not port.isdigit() or ":" in name:
            name = host
    return name.rstrip(".")


def normal_origin(origin: str) -> str:
    return origin.strip().lower().rstrip("/")


@lru_cache(maxsize=16)
def origins_pattern(origins: tuple[str, ...]) -> re.Pattern | None:
    """The allow-list as one regular expression (Starlette's CORSMiddleware takes the same): an origin as
    written ("http://localhost:3000"), any port of one ("http://localhost:*"), or "*" for every origin."""
    if not origins:
        return None
    if "*" in origins:
        return re.compile(".*")
    parts = [re.escape(o[:-2]) + r"(:\d+)?" if o.endswith(":*") else re.escape(o) for o in origins]
    return re.compile("|".join(f"(?:{p})" for p in parts))


# ---- ASGI -------------------------------------------------------------------------------------------------
class RequestGuard:
    """ASGI middleware: refuse what `RequestRules` refuses, with an OpenAI-shaped error; for allowed origins,
    answer CORS preflights and add the CORS headers (Starlette's CORSMiddleware). Plain ASGI, like
    app.RequestMetricsMiddleware, so that streaming responses pass straight through."""

    def __init__(self, app, server: "ServerConfig"):
        self.app = app
        self.rules = RequestRules.for_server(server)
        self.inner = cors(app, self.rules.allowed_origins) if self.rules.allowed_origins else app

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket") or scope.get(GUARDED):
            return await self.app(scope, receive, send)
        scope[GUARDED] = True
        from starlette.datastructures import Headers as ScopeHeaders

        local_address = (scope.get("server") or (None,))[0]  # uvicorn: the IP the connection came in on
        refusal = self.rules.check(scope.get("method", "GET"), ScopeHeaders(scope=scope),
                                   network=_is_ip(local_address))
        if refusal is None:
            return await self.inner(scope, receive, send)
        client = (scope.get("client") or ("?",))[0]
        log.warning("refused %s %s from %s: %s", scope.get("method"), scope.get("path"), client, refusal.code)
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008})
        from quickdraft.server.errors import APIError

        await APIError(refusal.status, refusal.message, code=refusal.code).response()(scope, receive, send)


def cors(app, origins: tuple[str, ...]):
    from starlette.middleware.cors import CORSMiddleware

    if "*" in origins:
        return CORSMiddleware(app, allow_origins=["*"], allow_methods=["*"], allow_headers=["*"])
    return CORSMiddleware(app, allow_origin_regex=origins_pattern(origins).pattern, allow_methods=["*"],
                          allow_headers=["*"])
