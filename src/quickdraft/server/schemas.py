"""The request bodies the server accepts, as pydantic models parsed straight from the JSON bytes.

Types are strict (a string where a number belongs is a 400, not coerced); fields this server does not know
are ignored, as OpenAI-compatible clients send many (user, metadata, tools, ...). Every field may be null,
which means "not given". Fields the server knows but cannot honour (penalties, logit_bias, ...) are rejected
with a clear message by the endpoint, not here.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from quickdraft.server.errors import APIError, bad_request


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class StreamOptions(_Body):
    include_usage: bool | None = None


class QuickdraftOptions(_Body):
    """quickdraft's own extension: `"quickdraft": {"draft": "none", "k": 2}` picks the drafter (one of the
    engine's: none, ngram, model, ...) and the draft tokens per round for this request only; `regex` makes
    the output match a regular expression."""

    draft: str | None = None
    k: int | None = Field(None, ge=1, le=16)
    regex: str | None = None  # the output must match this regular expression (quickdraft.constraint)


# ---- structured outputs (quickdraft.constraint) -------------------------------------------------------------
class JSONSchemaSpec(_Body):
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")  # absent: any JSON object
    strict: bool | None = None  # the schema is always enforced


class ResponseFormat(_Body):
    """OpenAI's response_format: text (no constraint), json_object (any JSON object; llama-server also takes
    a `schema` here) or json_schema."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaSpec | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")

    @model_validator(mode="after")
    def _schema_given(self) -> "ResponseFormat":
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError('type "json_schema" needs a json_schema object: {"name": ..., "schema": {...}}')
        return self


# ---- end of structured outputs ------------------------------------------------------------------------------


class GenerationFields(_Body):
    """Fields shared by chat and text completions."""

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)  # 0: the most probable token only
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    n: int | None = Field(None, ge=1)  # choices per prompt (server.limits.max_choices caps prompts x n)
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    quickdraft: QuickdraftOptions | None = None
    response_format: ResponseFormat | None = None
    grammar: str | None = None  # llama-server's extension: a GBNF grammar the output must match
    json_schema: dict[str, Any] | None = None  # llama-server's extension: a JSON schema the output must match

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


# ---- tools (quickdraft.tool_calls) ------------------------------------------------------------------------
class FunctionCall(_Body):
    name: str
    arguments: str  # JSON text


class MessageToolCall(_Body):
    """A call the assistant made, as a client sends it back in the history."""

    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class FunctionDefinition(_Body):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema of the arguments object
    strict: bool | None = None


class Tool(_Body):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Body):
    name: str


class NamedToolChoice(_Body):
    type: Literal["function"]
    function: NamedFunction
# ---- end of tools ------------------------------------------------------------------------------------------


class ChatMessage(_Body):
    role: str
    content: str | list[ContentPart] | None = None
    tool_calls: list[MessageToolCall] | None = None  # an assistant's calls
    tool_call_id: str | None = None  # a tool message: which call it answers
    name: str | None = None

    def as_template_input(self) -> dict:
        content = self.content
        if isinstance(content, list):
            content = [part.model_dump() for part in content]
        out = {"role": self.role, "content": content}
        if self.tool_calls:
            out["tool_calls"] = [c.model_dump() for c in self.tool_calls]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        if self.name is not None:
            out["name"] = self.name
        return out


class ChatCompletionRequest(GenerationFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None


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
