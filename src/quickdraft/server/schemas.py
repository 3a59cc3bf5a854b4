"""The request bodies the server accepts, as pydantic models parsed straight from the JSON bytes.

Types are strict (a string where a number belongs is a 400, not coerced); fields this server does not know
are ignored, as OpenAI-compatible clients send many (user, metadata, tools, ...). Every field may be null,
which means "not given". Fields the server knows but cannot honour (n > 1, penalties, ...) are rejected
with a clear message by the endpoint, not here.
"""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from quickdraft.server.errors import APIError, bad_request


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class StreamOptions(_Body):
    include_usage: bool | None = None


class QuickdraftOptions(_Body):
    """quickdraft's own extension: `"quickdraft": {"draft": "none", "k": 2}` picks the drafter (one of the
    engine's: none, ngram, model, ...) and the draft tokens per round for this request only."""

    draft: str | None = None
    k: int | None = Field(None, ge=1, le=16)


class GenerationFields(_Body):
    """Fields shared by chat and text completions."""

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    n: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    quickdraft: QuickdraftOptions | None = None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def stop_strings(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ContentPart(_Body):
    type: str
    text: str | None = None


class ChatMessage(_Body):
    role: str
    content: str | list[ContentPart] | None = None

    def as_template_input(self) -> dict:
        content = self.content
        if isinstance(content, list):
            content = [part.model_dump() for part in content]
        return {"role": self.role, "content": content}


class ChatCompletionRequest(GenerationFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)


class CompletionRequest(GenerationFields):
    # a string, several strings (one choice each), or the same as token ids
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool | None = None
    suffix: str | None = None
    best_of: int | None = None


Request = TypeVar("Request", bound=_Body)


def parse_body(model: type[Request], body: bytes) -> Request:
    """Parse and type-check a request body, or raise a 400 naming the first bad field."""
    try:
        return model.model_validate_json(body)
    except ValidationError as e:
        raise validation_error(e) from None


def validation_error(e: ValidationError) -> APIError:
    errors = e.errors(include_url=False)
    first = errors[0]
    if first["type"] == "json_invalid":
        return bad_request(f"the request body is not valid JSON: {first['msg']}", code="invalid_json")
    if not first["loc"] and first["type"] in ("model_type", "model_attributes_type"):
        return bad_request("the request body must be a JSON object")
    # a union field reports one error per alternative; show the field once, with what it accepts
    seen: dict[str, str] = {}
    for err in errors:
        path = field_path(err["loc"])
        seen.setdefault(path, err["msg"])
    message = "; ".join(f"{path}: {msg}" for path, msg in list(seen.items())[:3])
    return bad_request(f"invalid request: {message}", param=field_path(first["loc"]), code=error_code(first["type"]))


def error_code(pydantic_type: str) -> str:
    if pydantic_type == "missing":
        return "missing_required_parameter"
    if pydantic_type.endswith(("_type", "_parsing")):
        return "invalid_type"
    return "invalid_value"


_UNION_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


def field_path(loc: tuple) -> str:
    """("messages", 0, "content", "str") -> "messages[0].content" (pydantic's union tags dropped)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif "[" in part or part in _UNION_TAGS:
            continue
        else:
            out += f".{part}" if out else part
    return out
