"""Tool calls: what the model writes when it calls a function, read back into OpenAI's `tool_calls`; the
Hermes prompt for chat templates that know no tools; the grammar that forces a call.

Formats read (each family writes its own; the parse tries them in this order):

- Hermes / Qwen 2.5:  <tool_call>\n{"name": "f", "arguments": {...}}\n</tool_call>   (one or more, may
  follow some text)
- Mistral:            [TOOL_CALLS][{"name": "f", "arguments": {...}, "id": "..."}, ...]
- Llama 3.x:          {"name": "f", "parameters": {...}}   (the whole answer, optionally after <|python_tag|>)
- generic JSON:       the whole answer is a call object or a list of them ("arguments" or "parameters",
  or OpenAI's own {"type": "function", "function": {...}}), possibly in a ```json fence

Bare JSON (the last two) counts as a call only when it names one of the offered tools: otherwise it is
an ordinary JSON answer. The tagged formats are calls whatever they name.

An answer cut off by max_tokens in the middle of a call (`cut=True`) gives that call as far as it was written:
its name, and its arguments as the beginning of a JSON text (`partial_call`), as OpenAI's own cut calls come
back; the content never holds the call's markup.

All pure functions but `ToolCallStream`, which holds back streamed text while it may still be a call.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import string
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

HERMES_OPEN, HERMES_CLOSE = "<tool_call>", "</tool_call>"
MISTRAL_MARKER = "[TOOL_CALLS]"
PYTHON_TAG = "<|python_tag|>"
# how an answer that may be a call starts (after white space): held back while streaming until settled
CALL_OPENERS = (HERMES_OPEN, MISTRAL_MARKER, PYTHON_TAG, "{", "[", "```")
_ID_ALPHABET = string.ascii_letters + string.digits
_HERMES_BLOCK = re.compile(re.escape(HERMES_OPEN) + r"(.*?)(?:" + re.escape(HERMES_CLOSE) + r"|\Z)", re.DOTALL)
_FENCE = re.compile(r"\A```(?:json)?\s*(.*?)\s*```\Z", re.DOTALL)
_FENCE_OPENING = re.compile(r"\A```(?:json)?\s*")
_WHITE = " \t\n\r"


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # JSON text, as OpenAI sends it
    id: str = field(default_factory=lambda: new_call_id())

    def as_openai(self) -> dict:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(frozen=True)
class ParsedAnswer:
    content: str | None  # the text that is not a call (None when there is none)
    calls: list[ToolCall]
    partial: bool = False  # the last call was cut off: its arguments may be incomplete JSON


def new_call_id() -> str:
    return "call_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))


# ---- parsing ----------------------------------------------------------------------------------------------
def parse_answer(text: str, tool_names: Iterable[str] = (), *, cut: bool = False) -> ParsedAnswer:
    """Split a model's answer into content and tool calls (no calls: the text is all content). cut: the
    answer was cut off (max_tokens), so a call it ends in may be incomplete."""
    names = set(tool_names)
    if cut:
        text = _without_cut_tag(text)
    for parse in (_parse_hermes, _parse_mistral, lambda t, c: _parse_bare_json(t, names, c)):
        parsed = parse(text, cut)
        if parsed is not None:
            return parsed
    return ParsedAnswer(text, [])


def _without_cut_tag(text: str) -> str:
    """The text without the beginning of a <tool_call> tag it was cut in ("<tool_")."""
    return text[:len(text) - _partial_suffix(text, HERMES_OPEN)]


def _parse_hermes(text: str, cut: bool = False) -> ParsedAnswer | None:
    if HERMES_OPEN not in text:
        return None
    calls, partial = [], False
    for block in _HERMES_BLOCK.finditer(text):
        call = _call_from_text(block.group(1))
        if call is None and cut and block.end() == len(text) and not block.group(0).endswith(HERMES_CLOSE):
            call = partial_call(block.group(1))  # the block the answer was cut in
            partial = call is not None
        if call is None:
            return None  # a malformed block: leave the answer as text rather than drop part of it
        calls.append(call)
    return ParsedAnswer(_rest(_HERMES_BLOCK.sub("", text)), calls, partial)


def _parse_mistral(text: str, cut: bool = False) -> ParsedAnswer | None:
    before, marker, after = text.partition(MISTRAL_MARKER)
    if not marker:
        return None
    calls = _calls_from_value(_whole_json(after))
    if calls is not None:
        return ParsedAnswer(_rest(before), calls)
    if not cut:
        return None
    # cut in the list of calls, or right after the marker (a call with no name yet)
    calls = _partial_call_list(after) if after.strip() else [ToolCall("", "")]
    return None if calls is None else ParsedAnswer(_rest(before), calls, partial=True)


def _parse_bare_json(text: str, names: set[str], cut: bool = False) -> ParsedAnswer | None:
    body = text.strip()
    tagged = body.startswith(PYTHON_TAG)
    if tagged:
        body = body[len(PYTHON_TAG):]
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1)
    calls = _calls_from_value(_whole_json(body))
    if calls and all(c.name in names for c in calls):
        return ParsedAnswer(None, calls)
    if not cut:
        return None
    # cut off: a call as far as it goes, if it already names an offered tool (or follows <|python_tag|>)
    body = _FENCE_OPENING.sub("", body, count=1)
    calls = _partial_call_list(body) if body.startswith("[") else _one(partial_call(body))
    if not calls or not (tagged or calls[0].name in names):
        return None
    return ParsedAnswer(None, calls, partial=True)


def _whole_json(text: str) -> Any:
    """The JSON value `text` holds (surrounding white space allowed), else None."""
    try:
        return json.loads(text)
    except ValueError:
        return None


def _call_from_text(text: str) -> ToolCall | None:
    """The call in one Hermes block: a JSON object, ignoring anything after it."""
    try:
        value, _ = json.JSONDecoder().raw_decode(text.strip())
    except ValueError:
        return None
    return call_from_json(value)


def _calls_from_value(value: Any) -> list[ToolCall] | None:
    items = value if isinstance(value, list) else [value]
    calls = [call_from_json(item) for item in items]
    return calls if calls and all(calls) else None


def call_from_json(value: Any) -> ToolCall | None:
    """{"name", "arguments"|"parameters"} or {"type": "function", "function": {...}} -> a ToolCall."""
    if not isinstance(value, Mapping):
        return None
    if isinstance(value.get("function"), Mapping):
        value = value["function"]
    name = value.get("name")
    args = value.get("arguments", value.get("parameters", {}))
    if not isinstance(name, str) or not name:
        return None
    if isinstance(args, str):  # some models write the arguments as a JSON string, as OpenAI sends them
        parsed = _whole_json(args)
        args = parsed if isinstance(parsed, Mapping) else None
    if not isinstance(args, Mapping):
        return None
    return ToolCall(name, json.dumps(args, ensure_ascii=False))


# ---- calls cut off by max_tokens ------------------------------------------------------------------------------
def partial_call(text: str) -> ToolCall | None:
    """The call a cut-off call object had begun ('{"name": "f", "arguments": {"city": "Pa'): its name as far
    as written ("" before it), its arguments as the JSON text written so far ("" before it; a complete
    object is normalised as in a whole call). None when `text` does not begin a call object."""
    members = _object_prefix(text)
    if members is None:
        return None
    name, name_done = members.get("name", ("", False))
    if not name_done:
        name = _string_prefix(name)
    args, args_done = members.get("arguments", members.get("parameters", ("", False)))
    if not isinstance(name, str):
        return None
    if args_done:
        if isinstance(args, str):  # the arguments written as a JSON string, whole
            parsed = _whole_json(args)
            args = parsed if isinstance(parsed, Mapping) else args
        if isinstance(args, Mapping):
            args = json.dumps(args, ensure_ascii=False)
        elif not isinstance(args, str):
            return None
    elif args.startswith('"'):  # a JSON string of the arguments, cut: its text so far
        args = _string_prefix(args)
    return ToolCall(name, args)


def _partial_call_list(text: str) -> list[ToolCall] | None:
    """A cut-off list of call objects ('[{...}, {"name": "g", "argu'): the whole calls and the cut one."""
    i = _skip_white(text, 0)
    if not text.startswith("[", i):
        return None
    decoder, calls = json.JSONDecoder(), []
    i += 1
    while True:
        i = _skip_white(text, i)
        try:
            value, end = decoder.raw_decode(text, i)
        except ValueError:  # the object the text was cut in (or nothing yet: a call with no name so far)
            call = partial_call(text[i:])
            return None if call is None else calls + [call]
        call = call_from_json(value)
        if call is None:
            return None
        calls.append(call)
        i = _skip_white(text, end)
        if not text.startswith(",", i):
            return None  # the list is closed (not cut in a call) or not a list of calls
        i += 1


def _object_prefix(text: str) -> dict[str, tuple[Any, bool]] | None:
    """The members of a JSON object cut off before its end: key -> (value, True) for the values written
    whole, (the value's text so far, False) for the one it was cut in. None when `text` cannot be the
    beginning of an object."""
    decoder, members = json.JSONDecoder(), {}
    i = _skip_white(text, 0)
    if i == len(text):
        return members
    if text[i] != "{":
        return None
    i += 1
    while True:
        i = _skip_white(text, i)
        if i == len(text) or text[i] == "}":
            return members
        if text[i] != '"':
            return None
        try:
            key, i = json.decoder.scanstring(text, i + 1)
        except ValueError:
            return members  # cut in a key
        i = _skip_white(text, i)
        if i == len(text):
            return members
        if text[i] != ":":
            return None
        i = _skip_white(text, i + 1)
        try:
            value, end = decoder.raw_decode(text, i)
        except ValueError:
            members[key] = (text[i:], False)
            return members
        if end == len(text) and isinstance(value, (int, float)) and not isinstance(value, bool):
            members[key] = (text[i:], False)  # a number at the cut may go on
            return members
        members[key] = (value, True)
        i = _skip_white(text, end)
        if i == len(text) or text[i] == "}":
            return members
        if text[i] != ",":
            return None
        i += 1


def _string_prefix(text: str) -> str:
    """The characters of a JSON string cut off before its closing quote ('"get_wea' -> 'get_wea'); a
    cut escape sequence at the end is left out."""
    if not text.startswith('"'):
        return ""
    for drop in range(min(6, len(text))):  # an escape is at most 6 characters (\uXXXX)
        try:
            value = json.loads(text[:len(text) - drop] + '"')
        except ValueError:
            continue
        return value if isinstance(value, str) else ""
    return ""


def _skip_white(text: str, i: int) -> int:
    while i < len(text) and text[i] in _WHITE:
        i += 1
    return i


def _one(call: ToolCall | None) -> list[ToolCall] | None:
    return None if call is None else [call]


def _rest(text: str) -> str | None:
    text = text.strip()
    return text or None


# ---- streaming ----------------------------------------------------------------------------------------------
class ToolCallStream:
    """Streams a choice's text as content while it cannot be a tool call, and holds it back while it may be.

    feed(text) returns the content that can go out now; finish() parses what was held back and returns
    the rest of the content and the calls. An answer that starts like a call (white space, then a prefix
    of a CALL_OPENERS) is held whole; an answer that started as prose is streamed, but from a Hermes
    <tool_call> tag on (or a prefix of one, at the end) it is held.
    """

    def __init__(self, tool_names: Iterable[str]):
        self.names = set(tool_names)
        self.held = ""
        self.streaming = False  # the answer began as prose
        self.content_sent = False

    def feed(self, text: str) -> str:
        self.held += text
        if not self.streaming:
            start = self.held.lstrip()
            if not start or any(o.startswith(start) or start.startswith(o) for o in CALL_OPENERS):
                return ""
            self.streaming = True
        tag = self.held.find(HERMES_OPEN)
        if tag >= 0:
            out, self.held = self.held[:tag], self.held[tag:]
            self.streaming = False  # from here on, held to the end
            return self._sent(out)
        keep = _partial_suffix(self.held, HERMES_OPEN)
        out, self.held = self.held[:len(self.held) - keep], self.held[len(self.held) - keep:]
        return self._sent(out)

    def finish(self, cut: bool = False) -> ParsedAnswer:
        """The held text: calls (and the content around them), or all content. cut: the answer was cut off
        (max_tokens), so its last call may be incomplete (`parse_answer`)."""
        held, self.held = self.held, ""
        if self.streaming:
            return ParsedAnswer((_without_cut_tag(held) if cut else held) or None, [])
        parsed = parse_answer(held, self.names, cut=cut)
        if not parsed.calls:
            return ParsedAnswer(parsed.content or None, [])
        content = parsed.content
        if content and self.content_sent:
            content = "\n" + content
        return ParsedAnswer(content, parsed.calls, parsed.partial)

    def _sent(self, out: str) -> str:
        self.content_sent = self.content_sent or bool(out)
        return out


def _partial_suffix(text: str, tag: str) -> int:
    """The length of the longest end of `text` that is a proper beginning of `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


# ---- prompting: the Hermes format, for templates that know no tools ----------------------------------------
def hermes_tool_prompt(tools: Sequence[Mapping]) -> str:
    """The system-prompt section that offers `tools` (OpenAI's {"type": "function", "function": {...}})."""
    listed = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    return (
        "# Tools\n\n"
        "You may call one or more functions to answer the user. The functions are described as JSON within "
        f"<tools></tools>:\n<tools>\n{listed}\n</tools>\n\n"
        "To call a function, answer with a JSON object holding its name and arguments within "
        "<tool_call></tool_call> tags:\n"
        f'{HERMES_OPEN}\n{{"name": <function-name>, "arguments": <arguments-json-object>}}\n{HERMES_CLOSE}'
    )


def hermes_call_text(name: str, arguments: Any) -> str:
    if isinstance(arguments, str):
        parsed = _whole_json(arguments)
        arguments = parsed if parsed is not None else arguments
    body = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"{HERMES_OPEN}\n{body}\n{HERMES_CLOSE}"


def with_call_ids_of_length(messages: Sequence[Mapping], length: int) -> list[dict]:
    """The messages with every tool call id (an assistant's `tool_calls[].id`, a tool message's
    `tool_call_id`) replaced by `length` alphanumeric characters derived from it: templates that insist on
    such ids (Mistral's: 9) then take the ids clients send back, ours ("call_" + 24) or anyone's. The same id
    always maps to the same short one, so a call and its result stay paired."""
    def short(call_id: object) -> object:
        if not isinstance(call_id, str) or (len(call_id) == length and call_id.isalnum()):
            return call_id
        n = int.from_bytes(hashlib.sha256(call_id.encode()).digest(), "big")
        out = []
        for _ in range(length):
            n, r = divmod(n, len(_ID_ALPHABET))
            out.append(_ID_ALPHABET[r])
        return "".join(out)

    out = []
    for m in messages:
        m = dict(m)
        if m.get("tool_calls"):
            m["tool_calls"] = [{**c, "id": short(c.get("id"))} if isinstance(c, Mapping) else c
                               for c in m["tool_calls"]]
        if "tool_call_id" in m:
            m["tool_call_id"] = short(m["tool_call_id"])
        out.append(m)
    return out


def with_hermes_tools(messages: Sequence[Mapping], tools: Sequence[Mapping] | None) -> list[dict]:
    """Messages for a template that knows no tools: the tools offered in the system message, earlier calls
    as <tool_call> text in the assistant's content, tool results as user messages in <tool_response> tags."""
    out = []
    for m in messages:
        m = dict(m)
        calls = m.pop("tool_calls", None)
        if calls:
            texts = [hermes_call_text(c["function"]["name"], c["function"]["arguments"]) for c in calls]
            m["content"] = "\n".join(([m["content"]] if m.get("content") else []) + texts)
        if m["role"] == "tool":
            m = {"role": "user", "content": f"<tool_response>\n{m.get('content') or ''}\n</tool_response>"}
        m.pop("tool_call_id", None)
        m.pop("name", None)
        out.append(m)
    if tools:
        prompt = hermes_tool_prompt(tools)
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{prompt}" if out[0]["content"] else prompt}
        else:
            out.insert(0, {"role": "system", "content": prompt})
    return out


# ---- forcing a call: tool_choice required / named ---------------------------------------------------------
def call_schema(tool: Mapping) -> dict:
    """The JSON schema of one call of `tool`: {"name": its name, "arguments": its parameters}."""
    function = tool["function"]
    parameters = function.get("parameters") or {"type": "object", "properties": {}}
    return {
        "type": "object",
        "properties": {"name": {"const": function["name"]}, "arguments": parameters},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def forced_call_grammar(tools: Sequence[Mapping], name: str | None = None, *, several: bool = False) -> str:
    """A lark grammar (llguidance's, with %json) for one Hermes call of `name`, or of any of the tools when
    name is None (several: one or more such calls, a line apart); its arguments match the function's
    parameters schema."""
    chosen = [t for t in tools if name is None or t["function"]["name"] == name]
    if not chosen:
        raise ValueError(f"no tool named {name!r}")
    schemas = [call_schema(t) for t in chosen]
    schema = schemas[0] if len(schemas) == 1 else {"anyOf": schemas}
    open_tag, close_tag = json.dumps(HERMES_OPEN + "\n"), json.dumps("\n" + HERMES_CLOSE)
    start = 'start: tool_call ("\\n" tool_call)*' if several else "start: tool_call"
    return f"{start}\ntool_call: {open_tag} call {close_tag}\ncall: %json {json.dumps(schema)}\n"
