"""The ASGI app `quickdraft serve` runs: the OpenAI app (app.py) once its engine is loaded, and its lifecycle
around it: waiting for nodes and RPC workers at start, and swapping the target while the workers stay up.

    host = ServingHost(config)            # then: uvicorn.Server(uvicorn.Config(host, ...)).run()

- **Start in any order.** The server listens at once. A background thread waits for the target's node or RPC
  workers (quickdraft.node.readiness: backoff, up to `nodes.wait` seconds), then loads the engine. Until
  then `GET /health` answers 503 with what it waits for (where: node and worker addresses, only to callers
  with the key), and every other route a 503 OpenAI error with Retry-After. If they never come up, the server
  stops with the reason (`failed`).
- **A target over RPC workers** runs in a child node process (quickdraft.node.supervisor) unless
  `nodes.rpc_in_process`: llama.cpp aborts the process whose RPC worker dies, so the child takes that fall.
  The running request fails with a 503, then until the child is back (it is started again once every worker
  answers) /health and every request answer 503 naming what the server waits for (`recovering`).
- **Swap.** `POST /v1/quickdraft/admin/swap {"model": NAME}` (behind the admin key, else the API key; refused
  on a server with neither) loads another target the configuration names (the cluster's models, or back to the
  one it started with): new requests wait, running ones finish, the old engine is closed (freeing its memory on
  the RPC workers, whose processes stay up), the new one is loaded with the same workers, draft and settings.
  If the new one cannot be loaded, the old one is loaded again and the swap answers the error; a new target
  whose file is missing or damaged (its header is read first) is refused with a 400 before anything closes.
- **Freeing models.** A swap or a shutdown frees the old engine's models only once the engine's worker has
  left llama.cpp (a generation whose client left ends its current round first: `Scheduler.wait_closed`); if
  it has not within DRAIN_SECONDS the models are left in memory, never freed under it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from contextlib import AsyncExitStack
from typing import Callable

from starlette.responses import JSONResponse

from quickdraft.config import Config
from quickdraft.server.errors import APIError
from quickdraft.server.guard import GUARDED, RequestGuard, bearer_matches

log = logging.getLogger("quickdraft.server")

SWAP_PATH = "/v1/quickdraft/admin/swap"
OPEN_PATHS = ("/health", "/metrics")  # not counted as requests in flight
SWAP_WAIT_SECONDS = 600.0  # the most a request waits for a swap to finish
SWAP_BODY_BYTES = 64 * 1024  # {"model": NAME}: the most a swap request's body may hold
# the most a swap or shutdown waits for the engine's worker to finish its round (a long prompt's prefill is
# one llama.cpp call); past it the models are left in memory rather than freed under the worker
DRAIN_SECONDS = 120.0


def close_engine(engine) -> None:
    """Free the engine's models (and their memory on RPC workers) and its node connections."""
    for part in [engine.target, *engine.drafters.values()]:
        close = getattr(part, "close", None)
        if close is not None:
            try:
                close()
            except Exception as e:  # closing is best effort: the process may be on its way out
                log.warning("closing %s: %s", type(part).__name__, e)


class ServingHost:
    def __init__(self, config: Config, *, models: dict[str, dict] | None = None,
                 on_fatal: Callable[[], None] = lambda: None):
        """models: swappable targets by name -> {"path": ..., "ctx": ...} (the cluster's models)."""
        self.config = config
        self.models = models or {}
        self.on_fatal = on_fatal  # called when the engine cannot be started: the server should stop
        self.state = "starting"  # starting -> ready <-> swapping; or failed
        self.waiting: dict[str, str] = {}
        self.error: str | None = None
        self.engine = None
        self.supervised = None  # the target's node process, for a target over RPC workers (node.supervisor)
        self.app = None
        self.in_flight = 0
        self._lifespans = AsyncExitStack()
        self._ready: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._swap_lock: asyncio.Lock | None = None
        self.drain_seconds = DRAIN_SECONDS
        self._home = config.models  # the target it started with: swappable back to, as are `models`
        self._guard = RequestGuard(self, config.server)  # what browsers may not send (server.guard)

    # ---- ASGI -------------------------------------------------------------------------------------------
    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            return await self._lifespan(receive, send)
        if scope["type"] != "http":
            return
        if not scope.get(GUARDED):  # Origin, Host, Content-Type: before any route, the swap's included
            return await self._guard(scope, receive, send)
        path = scope.get("path", "")
        if path == SWAP_PATH and scope.get("method") == "POST":
            return await self._swap_route(scope, receive, send)
        if self.state == "swapping" and path not in OPEN_PATHS:
            try:
                await asyncio.wait_for(self._ready.wait(), SWAP_WAIT_SECONDS)
            except asyncio.TimeoutError:
                pass
        if self.state != "ready" or (self.waiting and path != "/metrics"):  # starting, or the target recovering
            return await self._not_ready(path, scope)(scope, receive, send)
        if path in OPEN_PATHS:
            return await self.app(scope, receive, send)
        self.in_flight += 1
        self._idle.clear()
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()

    async def _lifespan(self, receive, send):
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._ready, self._idle, self._swap_lock = asyncio.Event(), asyncio.Event(), asyncio.Lock()
                self._idle.set()
                asyncio.get_running_loop().create_task(self._start())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                drained = await self._unmount()
                await asyncio.to_thread(self._close, drained)
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _not_ready(self, path: str, scope) -> JSONResponse:
        """The 503 while there is no target to serve, saying what the server waits for. Where (node and worker
        addresses, their errors) only to callers with the key: /health is open to anyone."""
        detailed = self._has_key(scope)
        waiting_for = self.waiting if detailed else public_waiting(self.waiting)
        if detailed:
            waiting = "; ".join(f"{name} ({reason})" for name, reason in waiting_for.items())
        else:
            waiting = ", ".join(waiting_for)
        if self.state == "failed":
            why, status = f"the server could not start: {self.error if detailed else 'see its log'}", "failed"
        elif self.state == "swapping":
            why, status = "the target is being swapped", "swapping"
        elif self.state == "ready":
            why, status = f"the target is not available: waiting for {waiting}", "recovering"
        else:
            why, status = (f"the server is starting: waiting for {waiting}" if waiting
                           else "the server is starting: loading the models"), "starting"
        if path == "/health":
            return JSONResponse({"status": status, "waiting_for": waiting_for, "message": why}, status_code=503,
                                headers={"Retry-After": "2"})
        return APIError(503, why, type="server_error", code=f"server_{status}",
                        headers={"Retry-After": "2"}).response()

    # ---- start: wait for the backends, load the engine --------------------------------------------------
    async def _start(self) -> None:
        try:
            await asyncio.to_thread(self._wait_and_load, self.config)
            await self._mount(self.config)
        except Exception as e:
            self.state, self.error = "failed", f"{type(e).__name__}: {e}"
            log.error("cannot serve: %s", e)
            self.on_fatal()

    def _wait_and_load(self, config: Config) -> None:
        from quickdraft.node import is_node_url
        from quickdraft.node.readiness import needed_backends, wait_until_ready

        models, nodes = config.models, config.nodes
        if nodes.rpc and not nodes.rpc_in_process and not is_node_url(models.target):
            return self._load_over_supervised_node(config)
        backends = needed_backends(nodes.keyed(models.target), nodes.rpc)
        wait_until_ready(backends, nodes.wait, on_change=self._set_waiting)
        log.info("loading target %s, draft %s", models.target, models.draft)
        self.engine = models.load_engine(nodes, config.placement)

    def _load_over_supervised_node(self, config: Config) -> None:
        """The target over RPC workers in a child node process this server restarts (node.supervisor)."""
        from quickdraft.node.supervisor import SupervisedTarget

        models, placed = config.models, config.placement.target
        if models.target == "auto":  # the child needs a model: the planner's choice, made here
            from quickdraft.planner import auto_models

            target, _, reasons = auto_models(models.ctx)
            log.info("target auto: %s", "; ".join(reasons))
            models = models.model_copy(update={"target": target})
        self.supervised = SupervisedTarget(
            models.target, config.nodes.rpc, ctx=models.ctx, threads=placed.threads or models.threads,
            gpu_layers=None if placed.gpu_layers == "auto" else placed.gpu_layers, main_gpu=placed.main_gpu,
            on_change=self._set_waiting).start(config.nodes.wait)  # not kept if it never starts
        log.info("loading the draft %s; the target %s runs in node process %d", models.draft, models.target,
                 self.supervised.node.proc.pid)
        try:
            self.engine = models.load_engine(config.nodes, config.placement, target_node=self.supervised.url)
        except BaseException:
            self.supervised.stop()
            self.supervised = None
            raise

    async def _unmount(self) -> bool:
        """Stop the app: its scheduler cancels the running request (it stops at the end of its round) and
        refuses the others; then wait, at most `drain_seconds`, until its worker has left the engine.
        False if it has not: the engine's models must then not be freed (the worker may be inside
        llama_decode, and freeing its memory would crash the process)."""
        app = self.app
        await self._lifespans.aclose()  # the app's lifespan closes its scheduler
        self._lifespans = AsyncExitStack()
        scheduler = getattr(getattr(app, "state", None), "scheduler", None)
        if scheduler is None:  # never mounted
            return True
        if not scheduler.closed:
            scheduler.close()
        return await asyncio.to_thread(scheduler.wait_closed, self.drain_seconds)

    def _close(self, drained: bool = True) -> None:
        """Close the engine and stop the target's node process, if the server runs one. drained: no
        generation is inside the engine (`_unmount`); if one still is, its models are left in memory."""
        if self.engine is not None:
            if drained:
                close_engine(self.engine)
            else:
                log.error("a generation is still inside the engine after %.0f s: its models are left in memory "
                          "rather than freed under it", self.drain_seconds)
            self.engine = None
        if self.supervised is not None:
            self.supervised.stop()
            self.supervised = None

    def _status_extra(self) -> dict:
        return {"target_process": self.supervised.describe()} if self.supervised is not None else {}

    def _set_waiting(self, waiting: dict[str, str]) -> None:
        self.waiting = waiting

    async def _mount(self, config: Config) -> None:
        from quickdraft.server.app import create_app

        app = create_app(self.engine, config, status_extra=self._status_extra)
        await self._lifespans.enter_async_context(app.router.lifespan_context(app))
        self.app, self.config, self.state = app, config, "ready"
        self._ready.set()
        engine = self.engine
        log.info("serving %s (drafter %s, k=%d, context %d)", config.models.served_name(engine.target.name), engine.default_draft,
                 engine.default_k, engine.target.n_ctx)

    # ---- swap -------------------------------------------------------------------------------------------
    async def _swap_route(self, scope, receive, send):
        from starlette.requests import Request

        request = Request(scope, receive)
        try:
            self._check_admin_key(request)
            try:
                body = json.loads(await read_small_body(request, SWAP_BODY_BYTES) or b"{}")
            except ValueError:
                raise APIError(400, "the body must be JSON: {\"model\": NAME}") from None
            name = body.get("model") if isinstance(body, dict) else None
            if not isinstance(name, str) or not name:
                raise APIError(400, "name the model to swap to: {\"model\": NAME}", param="model")
            if not self._swappable(name):
                raise APIError(400, f"cannot swap to {name[:200]!r}: not a model of this server's configuration "
                               f"(one of: {', '.join(sorted(self._swappable_names()))})", param="model",
                               code="model_not_allowed")
            if self.state not in ("ready", "swapping"):
                raise APIError(503, "the server is not serving yet", type="server_error", code="server_starting")
            response = JSONResponse(await self.swap(name))
        except APIError as e:
            response = e.response()
        await response(scope, receive, send)

    def _check_admin_key(self, request) -> None:
        """A swap changes what every client gets: it needs the admin key (else the API key). A server with
        neither refuses it, since any web page could otherwise ask for one."""
        server = self.config.server
        key = server.admin_key or server.api_key
        if not key:
            raise APIError(403, "the admin endpoints are off on a server without a key: give it server.admin_key "
                           "(or an API key: --api-key, QUICKDRAFT_API_KEY)", code="admin_disabled")
        if not bearer_matches(request.headers, key):
            raise APIError(401, "missing or incorrect admin key (server.admin_key, else the API key): send the "
                           "header 'Authorization: Bearer <key>'", code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})

    def _has_key(self, scope) -> bool:
        """Whether the caller may see where the server waits: it sends the API or admin key, or the server has
        no API key (then every caller may use it; server.guard keeps web pages out)."""
        from starlette.datastructures import Headers

        server = self.config.server
        if not server.api_key:
            return True
        headers = Headers(scope=scope)
        return any(bearer_matches(headers, key) for key in (server.api_key, server.admin_key) if key)

    def _swappable_names(self) -> set[str]:
        return {*self.models, self._home.target, self._home.served_name()}

    def _swappable(self, name: str) -> bool:
        """Only targets the configuration names (the cluster's models, the one it started with): a swap request
        must not make the server load an arbitrary file or send its prompts to an arbitrary node://."""
        return name in self._swappable_names()

    def _swapped_config(self, name: str) -> Config:
        model = self.models.get(name)
        data = self.config.model_dump()
        if model is not None:
            data["models"].update(target=model["path"], name=name, ctx=model.get("ctx") or data["models"]["ctx"])
        else:  # back to the target it started with (_swappable allows nothing else)
            data["models"] = self._home.model_dump()
        return Config.model_validate(data)

    async def _check_target(self, name: str, config: Config) -> None:
        """A 400 for a new target whose file is missing, unreadable or damaged (its header is read, not its
        weights), while the running target still serves: finding it out by loading would first close the
        running one, and loading that again could fail too (its file deleted since it was loaded)."""
        from quickdraft.errors import QuickdraftError
        from quickdraft.loading import check_model_file

        try:
            await asyncio.to_thread(check_model_file, config.models.target)
        except QuickdraftError as e:
            raise APIError(400, f"cannot swap to {name!r}: {type(e).__name__}: {e}", param="model",
                           code="swap_failed") from None

    async def swap(self, name: str) -> dict:
        """Load another target: new requests wait, running ones finish first. {"model", "previous"}."""
        async with self._swap_lock:
            old_config, new_config = self.config, self._swapped_config(name)
            await self._check_target(name, new_config)  # before anything is closed: the old one serves on
            self.state = "swapping"
            self._ready.clear()
            log.info("swap to %s: waiting for %d running request(s)", name, self.in_flight)
            await self._idle.wait()  # a client that disconnected is out, but its generation may still run:
            drained = await self._unmount()  # ... so wait for the engine's worker too
            await asyncio.to_thread(self._close, drained)
            try:
                await asyncio.to_thread(self._wait_and_load, new_config)
            except Exception as e:
                log.error("swap to %s failed (%s); loading %s again", name, e, old_config.models.served_name())
                try:
                    await asyncio.to_thread(self._wait_and_load, old_config)
                except Exception as again:  # neither loads: nothing left to serve
                    self.state, self.error = "failed", f"swap failed and the previous target did not load: {again}"
                    self._ready.set()
                    self.on_fatal()
                    raise APIError(500, self.error, type="server_error", code="swap_failed") from None
                await self._mount(old_config)
                raise APIError(400, f"cannot swap to {name!r}: {type(e).__name__}: {e}", param="model",
                               code="swap_failed") from None
            await self._mount(new_config)
            return {"object": "quickdraft.swap", "model": new_config.models.served_name(),
                    "previous": old_config.models.served_name()}


async def read_small_body(request, limit: int) -> bytes:
    """The body, refused (413) past `limit` bytes as it arrives."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise APIError(413, f"the request body is larger than {limit} bytes", code="request_too_large")
    return bytes(body)


def public_waiting(waiting: dict[str, str]) -> dict[str, str]:
    """What the server waits for, without where: {"target node node://10.0.0.2:8471": "Connection refused",
    "RPC worker 10.0.0.3:50052": ..., "RPC worker 10.0.0.4:50052": ...} -> {"target node": "not available yet",
    "RPC worker 1": ..., "RPC worker 2": ...} (the names come from node.readiness and node.supervisor)."""
    kinds = [_backend_kind(name) for name in waiting]
    seen: dict[str, int] = {}
    out = {}
    for kind in kinds:
        seen[kind] = seen.get(kind, 0) + 1
        out[kind if kinds.count(kind) == 1 else f"{kind} {seen[kind]}"] = "not available yet"
    return out


def _backend_kind(name: str) -> str:
    for word in (" node", " worker"):
        head, found, _ = name.partition(word)
        if found:
            return head + found
    return "backend"


def serve(config: Config, *, models: dict[str, dict] | None = None) -> int:
    """Run the server until it is stopped; 1 if the engine could not be started."""
    import uvicorn

    server_config = config.server
    host = ServingHost(config, models=models)
    server = uvicorn.Server(uvicorn.Config(host, host=server_config.host, port=server_config.port,
                                           log_level=server_config.log_level, timeout_graceful_shutdown=5))

    def stop() -> None:
        server.should_exit = True

    host.on_fatal = stop
    log.info("listening on http://%s:%d (loading in the background; /health answers 503 until ready)",
             server_config.host, server_config.port)
    server.run()
    return 1 if host.state == "failed" else 0

