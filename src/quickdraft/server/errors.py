"""Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` with a 4xx or 5xx status.

Clients (the openai package, LangChain, Open WebUI) read `error.message` and the status code; `code` names
the case for programs (`context_length_exceeded`, `model_not_found`, `invalid_api_key`, ...).
"""

from __future__ import annotations

from fastapi.responses import JSONResponse

from quickdraft.errors import ContextLengthError, InvalidRequestError, NodeUnavailableError


class APIError(Exception):
    """An error the server answers with; raise it anywhere in a request's handling."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def from_engine_error(e: InvalidRequestError, param: str | None = None) -> APIError:
    """The engine's request errors (empty prompt, prompt over the context, bad sampling value) are the
    client's fault: a 400 carrying the engine's message, which says what to change."""
    code = "context_length_exceeded" if isinstance(e, ContextLengthError) else None
    return bad_request(str(e), param=param, code=code)


def server_error(message: str) -> APIError:
    return APIError(500, message, type="server_error", code="internal_error")


def generation_error(e: Exception) -> APIError:
    """The engine failed mid-request: a remote target that went away is a 503 (retry later), anything
    else a 500."""
    if isinstance(e, NodeUnavailableError):
        return APIError(503, f"the target model is unavailable: {e}", type="server_error", code="node_unavailable")
    return server_error(f"generation failed: {type(e).__name__}: {e}")


def status_error(status: int, detail: str) -> APIError:
    """Starlette's own HTTP errors (404 unknown path, 405 wrong method) in the same shape."""
    codes = {404: "not_found", 405: "method_not_allowed"}
    return APIError(status, detail, code=codes.get(status))
