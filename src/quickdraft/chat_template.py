"""Chat messages -> prompt text, with the model's own template.

The template is the GGUF's `tokenizer.chat_template` (a Jinja2 template, rendered in a sandbox). A model
without one (Gemma 3 270M is a base model) gets a named fallback chosen from its architecture, or the one
the user names; never ChatML for everything.

Tools (OpenAI's `tools`, assistant `tool_calls`, `tool` messages) go to templates that know them as
Hugging Face's do (`tools=[...]`, calls with their arguments as objects); a template that knows none gets
them in the Hermes format instead (quickdraft.tool_calls.with_hermes_tools).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping, Sequence

from jinja2.sandbox import ImmutableSandboxedEnvironment

from quickdraft.errors import InvalidRequestError
from quickdraft.tool_calls import with_call_ids_of_length, with_hermes_tools

# Named templates for models whose GGUF carries none. Each is the format the model family was trained on.
NAMED_TEMPLATES: dict[str, str] = {
    "gemma": (
        "{{ bos_token }}"
        "{%- if messages and messages[0]['role'] == 'system' -%}"
        "{%- set system = messages[0]['content'] -%}{%- set messages = messages[1:] -%}"
        "{%- else -%}{%- set system = '' -%}{%- endif -%}"
        "{%- for m in messages -%}"
        "{%- set role = 'model' if m['role'] == 'assistant' else 'user' -%}"
        "<start_of_turn>{{ role }}\n"
        "{%- if loop.first and system %}{{ system }}\n\n{% endif -%}"
        "{{ m['content'] | trim }}<end_of_turn>\n"
        "{%- endfor -%}"
        "{%- if add_generation_prompt %}<start_of_turn>model\n{% endif -%}"
    ),
    "chatml": (
        "{%- for m in messages -%}"
        "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{%- endfor -%}"
        "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif -%}"
    ),
    "llama3": (
        "{{ bos_token }}"
        "{%- for m in messages -%}"
        "<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] | trim }}<|eot_id|>"
        "{%- endfor -%}"
        "{%- if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif -%}"
    ),
}
ARCHITECTURE_TEMPLATES = {"gemma": "gemma", "gemma2": "gemma", "gemma3": "gemma", "gemma3n": "gemma"}
ROLES = {"system", "developer", "user", "assistant", "tool"}


@dataclass
class ChatTemplate:
    source: str
    name: str  # "gguf" for the model's own template, else the named fallback
    bos_token: str = ""
    eos_token: str = ""

    @classmethod
    def for_model(cls, model, override: str | None = None) -> "ChatTemplate":
        """The model's own template, or the named one (override or by architecture)."""
        bos = model.token_text(model.bos_token) if model.bos_token is not None else ""
        eos = model.token_text(model.eos_token) if model.eos_token is not None else ""
        if override:
            if override not in NAMED_TEMPLATES:
                raise InvalidRequestError(
                    f"unknown chat template {override!r}; named templates: {', '.join(sorted(NAMED_TEMPLATES))}"
                )
            return cls(NAMED_TEMPLATES[override], override, bos, eos)
        if model.chat_template:
            return cls(model.chat_template, "gguf", bos, eos)
        name = ARCHITECTURE_TEMPLATES.get(model.architecture)
        if name is None:
            raise InvalidRequestError(
                f"model {model.name} has no chat template and none is known for its architecture "
                f"{model.architecture!r}; set chat_template to one of {', '.join(sorted(NAMED_TEMPLATES))}"
            )
        return cls(NAMED_TEMPLATES[name], name, bos, eos)

    @property
    def call_id_length(self) -> int | None:
        """The length the template insists tool call ids have (Mistral's templates: 9), if it checks one."""
        m = re.search(r"(?:tool_call\.id|tool_call_id)\|length\s*!=\s*(\d+)", self.source)
        return int(m.group(1)) if m else None

    @property
    def supports_tools(self) -> bool:
        """Whether the template renders `tools` itself (else they go in as Hermes text)."""
        return "tools" in self.source

    def render(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
               tools: Sequence[Mapping] | None = None) -> str:
        """tools: OpenAI's function tools ({"type": "function", "function": {...}}) offered to the model."""
        msgs = normalize_messages(messages)
        extra = {}
        if self.supports_tools:
            if tools:
                extra["tools"] = [dict(t) for t in tools]
            if self.call_id_length:  # ids as this template wants them, whatever the client sends back
                msgs = with_call_ids_of_length(msgs, self.call_id_length)
        else:
            msgs = with_hermes_tools(msgs, tools)
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

        def raise_exception(message):
            raise InvalidRequestError(f"chat template: {message}")

        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        env.filters["tojson"] = template_tojson
        template = env.from_string(self.source)
        text = template.render(
            messages=msgs,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token,
            eos_token=self.eos_token,
            **extra,
        )
        return text

    def starts_with_bos(self, text: str) -> bool:
        return bool(self.bos_token) and text.startswith(self.bos_token)


def normalize_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict]:
    """Check roles and flatten OpenAI content parts ([{type: text, text: ...}]) into plain strings."""
    if not messages:
        raise InvalidRequestError("messages must be a non-empty list")
    out = []
    for i, m in enumerate(messages):
        role = m.get("role")
        if role not in ROLES:
            raise InvalidRequestError(f"messages[{i}].role must be one of {sorted(ROLES)}, got {role!r}")
        content = m.get("content")
        if content is None:
            content = ""
        if isinstance(content, list):
            parts = []
            for part in content:
                if not isinstance(part, Mapping) or part.get("type") != "text":
                    raise InvalidRequestError(f"messages[{i}].content: only text parts are supported")
                parts.append(str(part.get("text", "")))
            content = "".join(parts)
        if not isinstance(content, str):
            raise InvalidRequestError(f"messages[{i}].content must be a string or a list of text parts")
        message = {"role": "system" if role == "developer" else role, "content": content}
        # templates test whether these keys exist, so they are only set when given
        if m.get("tool_calls"):
            message["tool_calls"] = [template_tool_call(c) for c in m["tool_calls"]]
        for key in ("tool_call_id", "name"):
            if m.get(key) is not None:
                message[key] = m[key]
        out.append(message)
    return out


def template_tool_call(call: Mapping) -> dict:
    """An OpenAI tool call as templates expect it: the arguments as an object, not JSON text."""
    function = call.get("function") or {}
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            pass  # not JSON: the template gets the text
    out = {"type": "function", "function": {"name": function.get("name"), "arguments": arguments}}
    if call.get("id") is not None:
        out["id"] = call["id"]
    return out


def template_tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False, **_) -> str:
    """`tojson` as Hugging Face renders templates: plain JSON (Jinja's own escapes <, >, & and ' for HTML)."""
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii)
