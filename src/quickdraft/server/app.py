"""The HTTP layer: an OpenAI-compatible API over one Engine.

    app = create_app(engine, config)      # then: uvicorn.run(app, host=..., port=...)

A request's path: what a browser page may not send is refused (guard.py: a foreign Origin or Host, a body
that is not JSON), the API key is checked (when one is set), the body is read (at most max_body_bytes) and
parsed (schemas.py), `prepare.py` turns it into engine streams off the event loop (every 400 comes from
there), the scheduler queues it (429 when full) and its worker runs it, and `formatting.py` turns the
engine's steps into OpenAI's JSON, whole or as server-sent events.

Routes: POST /v1/chat/completions, POST /v1/completions, GET /v1/models[/{id}], GET /v1/quickdraft/status
(all behind the key; the first three also without `/v1`, as llama-server and LM Studio answer them), GET
/health and GET /metrics (open: they tell nothing about prompts or answers).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from contextlib import asynccontextmanager
from typing import Callable

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from quickdraft import __version__
from quickdraft.config import Config
from quickdraft.engine import Engine
from quickdraft.llama_model import system_info
from quickdraft.server.errors import APIError, server_error, status_error
from quickdraft.server.formatting import ChatFormatter, Choice, CompletionFormatter, Formatter, TokenText
from quickdraft.server.guard import RequestGuard, bearer_matches
from quickdraft.server.llama_routes import llama_server_router
from quickdraft.server.metrics import ServerMetrics
from quickdraft.server.prepare import PreparedRequest, choices_per_prompt, prepare_chat, prepare_completion
from quickdraft.server.jobs import JobRunner
from quickdraft.server.scheduler import Scheduler
from quickdraft.server.schemas import ChatCompletionRequest, CompletionRequest, parse_body

log = logging.getLogger("quickdraft.server")

GENERATION_ROUTES = ("/v1/chat/completions", "/v1/completions", "/chat/completions", "/completions", "/completion",
                     "/infill")


def create_app(engine: Engine, config: Config, status_extra: Callable[[], dict] = dict) -> FastAPI:
    """status_extra: more of /v1/quickdraft/status (serve's own: its target's node process, RPC workers)."""
    model_id = config.models.served_name(engine.target.name)
    limits = config.server.limits
    metrics = ServerMetrics(queue_waiting=lambda: scheduler.waiting, queue_running=lambda: scheduler.running)
    scheduler = Scheduler(limits.queue_size, on_generation_end=metrics.record_generation)
    jobs = JobRunner(scheduler)
    token_text = TokenText(engine.tokenizer)
    fingerprint = system_fingerprint(engine, config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        scheduler.close()

    app = FastAPI(title="quickdraft", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)
    app.add_middleware(RequestGuard, server=config.server)  # browsers: Origin, Host, Content-Type (guard.py)
    app.state.scheduler = scheduler  # serve's host waits for its worker before freeing the engine (startup.py)

    # ---- errors: always OpenAI's shape -----------------------------------------------------------------
    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError):
        return e.response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        error = status_error(e.status_code, str(e.detail))
        error.headers = e.headers  # 405 names the allowed methods (Allow)
        return error.response()

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, e: Exception):
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return server_error(f"internal error: {type(e).__name__}: {e}").response()

    # ---- request checks ----------------------------------------------------------------------------------
    def require_api_key(request: Request) -> None:
        key = config.server.api_key
        if not key:
            return
        if not bearer_matches(request.headers, key):
            raise APIError(
                401,
                "missing or incorrect API key: send the header 'Authorization: Bearer <key>'",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )

    async def read_body(request: Request) -> bytes:
        limit = limits.max_body_bytes
        too_large = APIError(413, f"the request body is larger than {limit} bytes (server.limits.max_body_bytes)",
                             code="request_too_large")
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise too_large
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise too_large
        return bytes(body)

    def check_model(name: str | None) -> None:
        """One model is served: any name gets it (as llama-server does), unless server.strict_model_name."""
        if name and name != model_id and config.server.strict_model_name:
            raise APIError(404, f"the model {name!r} does not exist; this server serves {model_id!r}",
                           param="model", code="model_not_found")

    # ---- running a request (jobs.py: the queue, disconnects, server-sent events) ---------------------------
    async def generate(request: Request, prepared: PreparedRequest, formatter: Formatter) -> Response:
        job = jobs.submit(prepared.streams)
        if prepared.stream:
            closing = (lambda: [formatter.usage_chunk()]) if prepared.include_usage else tuple
            return StreamingResponse(
                jobs.sse(job, formatter.chunks, opening=formatter.opening_chunks(), closing=closing, done="[DONE]"),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        choices = [Choice() for _ in prepared.streams]
        if not await jobs.collect(request, job, lambda index, step: choices[index].add(step)):
            return Response(status_code=499)  # the client left; nobody reads this
        return JSONResponse(formatter.response(choices))

    # ---- routes ----------------------------------------------------------------------------------------
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])

    @v1.post("/chat/completions")
    async def chat_completions(request: Request):
        req = parse_body(ChatCompletionRequest, await read_body(request))
        check_model(req.model)
        jobs.check_room(streams_asked(config, req))
        prepared = await asyncio.to_thread(prepare_chat, engine, config, req)
        formatter = ChatFormatter(model_id, token_text, logprobs=prepared.top_logprobs is not None,
                                  include_usage=prepared.include_usage, echo=prepared.echo,
                                  fingerprint=fingerprint, tool_names=prepared.tool_names,
                                  choices_per_prompt=prepared.n)
        return await generate(request, prepared, formatter)

    @v1.post("/completions")
    async def completions(request: Request):
        req = parse_body(CompletionRequest, await read_body(request))
        check_model(req.model)
        jobs.check_room(streams_asked(config, req))
        prepared = await asyncio.to_thread(prepare_completion, engine, config, req)
        formatter = CompletionFormatter(model_id, token_text, logprobs=prepared.top_logprobs is not None,
                                        include_usage=prepared.include_usage, echo=prepared.echo,
                                        fingerprint=fingerprint, choices_per_prompt=prepared.n)
        return await generate(request, prepared, formatter)

    def model_card() -> dict:
        return {"id": model_id, "object": "model", "created": int(metrics.started), "owned_by": "quickdraft"}

    @v1.get("/models")
    async def list_models():
        return {"object": "list", "data": [model_card()]}

    @v1.get("/models/{name:path}")
    async def get_model(name: str):
        check_model(name)
        return model_card()

    @v1.get("/quickdraft/status")
    async def status():
        return {
            "object": "quickdraft.status",
            "version": __version__,
            "model": model_id,
            "engine": {**engine.describe(), "chat_template": chat_template_name(engine)},
            "draft": {"configured": config.models.draft, "default": engine.default_draft},
            "queue": {"running": scheduler.running, "waiting": scheduler.waiting, "queue_size": limits.queue_size},
            "config": config.public_dict(),
            **metrics.snapshot(),
            **status_extra(),
        }

    app.include_router(v1)
    unversioned = APIRouter(dependencies=[Depends(require_api_key)])  # clients written for llama-server
    unversioned.add_api_route("/chat/completions", chat_completions, methods=["POST"])
    unversioned.add_api_route("/completions", completions, methods=["POST"])
    unversioned.add_api_route("/models", list_models, methods=["GET"])
    app.include_router(unversioned)
    app.include_router(llama_server_router(engine, config, jobs, model_id=model_id, read_body=read_body),
                       dependencies=[Depends(require_api_key)])  # llama-server's own routes (llama_routes.py)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_id}

    @app.get("/metrics")
    async def prometheus_metrics():
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return app


def streams_asked(config: Config, req: ChatCompletionRequest | CompletionRequest) -> int:
    """The generations a request asks for (prompts x n), each a place in the queue; more than
    server.limits.max_choices is a 400 (before the queue is asked: a 429 would invite a retry)."""
    prompt = getattr(req, "prompt", None)
    prompts = len(prompt) if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int) else 1
    return prompts * choices_per_prompt(config, req, prompts)


def system_fingerprint(engine: Engine, config: Config) -> str:
    """What determines the answers besides the request: the target, the llama.cpp build and the exactness
    setting. Stable across restarts of the same setup, different when any of them changes."""
    setup = {"target": engine.target.name, "llama_cpp": system_info(), "exact": config.models.exact,
             "chat_template": config.models.chat_template, "quickdraft": __version__}
    return "fp_" + hashlib.sha256(json.dumps(setup, sort_keys=True).encode()).hexdigest()[:12]


def chat_template_name(engine: Engine) -> str | None:
    try:
        return engine.chat_template.name
    except Exception:  # a model with no template and no known fallback: chat requests say why
        return None


class RequestMetricsMiddleware:
    """Counts every HTTP request by route and status, and times the generation routes (to the last byte).

    Plain ASGI rather than Starlette's BaseHTTPMiddleware, which would sit between a streaming response and
    the client's disconnect."""

    def __init__(self, app, metrics: ServerMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = 500

        async def send_and_note_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.record_request(route, status, time.perf_counter() - start,
                                        generation=route in GENERATION_ROUTES)
