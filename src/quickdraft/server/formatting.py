"""Engine output in OpenAI's response shapes: chat completions and (legacy) text completions, whole or as
stream chunks.

A formatter is made per request. Streaming: `opening_chunks()` once, `chunks(index, step)` for each engine
step, `usage_chunk()` at the end when the client asked for usage. Whole: `Choice.add(step)` collects the
steps of each choice and `response(choices)` builds the body.

Several choices (n, or a list of prompts) are numbered prompt-major: index = prompt_i * n + j. Usage counts
each prompt once, as OpenAI does (the choices of a prompt share it), and the completion tokens of every choice.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field

from quickdraft.generate import GenerationResponse
from quickdraft.target import TokenLogprob
from quickdraft.tool_calls import ParsedAnswer, ToolCallStream, parse_answer


class TokenText:
    """Token ids -> the text and bytes they render as (what logprobs report), skipping end-of-generation
    tokens, which render as nothing and are not part of the content."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def visible(self, logprobs: list[TokenLogprob] | None) -> list[TokenLogprob]:
        return [lp for lp in logprobs or [] if not self.tokenizer.is_eog(lp.token)]

    def bytes(self, token: int) -> bytes:
        return self.tokenizer.token_bytes(token)

    def text(self, token: int) -> str:
        return self.tokenizer.token_bytes(token).decode("utf-8", errors="replace")


@dataclass
class Choice:
    """One choice of a whole (non-streamed) answer, collected step by step."""

    texts: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, step: GenerationResponse) -> None:
        self.texts.append(step.text)
        self.logprobs.extend(step.logprobs or [])
        if step.finish_reason is not None:
            self.finish_reason = step.finish_reason
            self.prompt_tokens = step.stats.prompt_tokens
            self.completion_tokens = step.stats.completion_tokens

    @property
    def text(self) -> str:
        return "".join(self.texts)


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


class Formatter:
    """One request's answer in OpenAI's shape. Subclasses give `opening_chunks()`, `chunks(index, step)` and
    `response(choices)`; the id and `created` time are fixed at construction and shared by every chunk."""

    id_prefix = ""  # of the response id
    chunk_object = ""  # the `object` of stream chunks

    def __init__(self, model: str, tokens: TokenText, *, logprobs: bool, include_usage: bool, echo: list[str],
                 fingerprint: str | None = None, choices_per_prompt: int = 1):
        """echo: one text per choice (see CompletionFormatter); choices_per_prompt: the request's n."""
        self.id = self.id_prefix + secrets.token_hex(12)
        self.n = choices_per_prompt
        self.fingerprint = fingerprint  # system_fingerprint: the setup that produced the answer
        self.created = int(time.time())
        self.model = model
        self.tokens = tokens
        self.logprobs = logprobs
        self.include_usage = include_usage
        self.echo = echo
        # running usage of a stream: final counts of each finished choice
        self._prompt_tokens = 0
        self._completion_tokens = 0

    def _envelope(self, object_name: str, choices: list[dict]) -> dict:
        return {"id": self.id, "object": object_name, "created": self.created, "model": self.model,
                "system_fingerprint": self.fingerprint, "choices": choices}

    def _chunk_envelope(self, choices: list[dict]) -> dict:
        """A stream chunk; with include_usage every chunk has `usage: null` but the last, which has usage."""
        chunk = self._envelope(self.chunk_object, choices)
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def _count(self, index: int, step: GenerationResponse) -> None:
        if step.finish_reason is not None:
            if index % self.n == 0:  # the first choice of its prompt
                self._prompt_tokens += step.stats.prompt_tokens
            self._completion_tokens += step.stats.completion_tokens

    def _usage(self, choices: list[Choice]) -> dict:
        """A whole answer's usage: each prompt once, every choice's completion."""
        return usage(sum(c.prompt_tokens for c in choices[::self.n]), sum(c.completion_tokens for c in choices))

    def usage_chunk(self) -> dict:
        chunk = self._envelope(self.chunk_object, [])
        chunk["usage"] = usage(self._prompt_tokens, self._completion_tokens)
        return chunk


class ChatFormatter(Formatter):
    """tool_names: the tools offered (None: none), whose calls are read out of the answer into `tool_calls`;
    a streamed answer is held back while it may be a call (quickdraft.tool_calls.ToolCallStream)."""

    id_prefix = "chatcmpl-"
    chunk_object = "chat.completion.chunk"

    def __init__(self, *args, tool_names: frozenset[str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.tool_names = tool_names
        self._tool_streams: dict[int, ToolCallStream] = {}
        self._held_logprobs: dict[int, list[TokenLogprob]] = {}

    def _logprobs(self, logprobs: list[TokenLogprob]) -> dict | None:
        if not self.logprobs:
            return None
        content = []
        for lp in self.tokens.visible(logprobs):
            entry = self._token(lp.token, lp.logprob)
            entry["top_logprobs"] = [self._token(t, v) for t, v in lp.top]
            content.append(entry)
        return {"content": content, "refusal": None}

    def _token(self, token: int, logprob: float) -> dict:
        return {"token": self.tokens.text(token), "logprob": logprob, "bytes": list(self.tokens.bytes(token))}

    def _chunk(self, index: int, delta: dict, logprobs: dict | None, finish_reason: str | None) -> dict:
        return self._chunk_envelope(
            [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}]
        )

    def opening_chunks(self) -> list[dict]:
        """Each choice's first chunk carries the role (OpenAI's clients rely on it)."""
        return [self._chunk(i, {"role": "assistant", "content": ""}, None, None) for i in range(len(self.echo))]

    def chunks(self, index: int, step: GenerationResponse) -> list[dict]:
        self._count(index, step)
        if self.tool_names is not None:
            return self._tool_chunks(index, step)
        out = []
        if step.text or (self.logprobs and self.tokens.visible(step.logprobs)):
            out.append(self._chunk(index, {"content": step.text}, self._logprobs(step.logprobs), None))
        if step.finish_reason is not None:
            out.append(self._chunk(index, {}, None, step.finish_reason))
        return out

    def _tool_chunks(self, index: int, step: GenerationResponse) -> list[dict]:
        """Content while the answer cannot be a call; at the end, the calls as OpenAI streams them: per call,
        one delta with its index, id, type and name, then its arguments. A call cut off by max_tokens comes as
        far as it was written, with finish_reason "length" (`call_finish_reason`)."""
        stream = self._tool_streams.setdefault(index, ToolCallStream(self.tool_names))
        held = self._held_logprobs.setdefault(index, [])
        held.extend(step.logprobs or [])
        out = []
        content = stream.feed(step.text)
        if content:
            out.append(self._chunk(index, {"content": content}, self._logprobs(held), None))
            held.clear()
        if step.finish_reason is None:
            return out
        parsed = stream.finish(cut=step.finish_reason == "length")
        if parsed.content:
            out.append(self._chunk(index, {"content": parsed.content}, self._logprobs(held), None))
        for i, call in enumerate(parsed.calls):
            head = {"index": i, "id": call.id, "type": "function", "function": {"name": call.name, "arguments": ""}}
            out.append(self._chunk(index, {"tool_calls": [head]}, None, None))
            out.append(self._chunk(index, {"tool_calls": [{"index": i, "function": {"arguments": call.arguments}}]},
                                   None, None))
        out.append(self._chunk(index, {}, None, call_finish_reason(parsed, step.finish_reason)))
        return out

    def _message(self, choice: Choice) -> tuple[dict, str | None]:
        """A whole answer's message and finish_reason: with tools offered, its calls in `tool_calls` (and
        content null when the answer is only calls)."""
        message = {"role": "assistant", "content": choice.text, "refusal": None, "annotations": []}
        if self.tool_names is None:
            return message, choice.finish_reason
        parsed = parse_answer(choice.text, self.tool_names, cut=choice.finish_reason == "length")
        message["content"] = parsed.content  # without the calls (and a <tool_call> tag the answer was cut in)
        if not parsed.calls:
            return message, choice.finish_reason
        message["tool_calls"] = [call.as_openai() for call in parsed.calls]
        return message, call_finish_reason(parsed, choice.finish_reason)

    def response(self, choices: list[Choice]) -> dict:
        answers = [self._message(c) for c in choices]
        body = self._envelope("chat.completion", [
            {
                "index": i,
                "message": message,
                "logprobs": self._logprobs(c.logprobs),
                "finish_reason": finish_reason,
            }
            for i, (c, (message, finish_reason)) in enumerate(zip(choices, answers))
        ])
        body["usage"] = self._usage(choices)
        return body


def call_finish_reason(parsed: ParsedAnswer, engine_reason: str | None) -> str | None:
    """An answer with calls finishes with "tool_calls", unless max_tokens cut its last call ("length", as
    OpenAI says of a cut call)."""
    if not parsed.calls:
        return engine_reason
    return "length" if parsed.partial else "tool_calls"


class CompletionFormatter(Formatter):
    id_prefix = "cmpl-"
    chunk_object = "text_completion"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._offsets = [len(e) for e in self.echo]  # text_offset: where each token starts in the choice's text

    def _logprobs(self, index: int, logprobs: list[TokenLogprob]) -> dict | None:
        if not self.logprobs:
            return None
        out: dict = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for lp in self.tokens.visible(logprobs):
            text = self.tokens.text(lp.token)
            out["tokens"].append(text)
            out["token_logprobs"].append(lp.logprob)
            out["top_logprobs"].append({self.tokens.text(t): v for t, v in lp.top})
            out["text_offset"].append(self._offsets[index])
            self._offsets[index] += len(text)
        return out

    def _choice(self, index: int, text: str, logprobs: dict | None, finish_reason: str | None) -> dict:
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}

    def opening_chunks(self) -> list[dict]:
        return [
            self._chunk_envelope([self._choice(i, text, None, None)])
            for i, text in enumerate(self.echo)
            if text
        ]

    def chunks(self, index: int, step: GenerationResponse) -> list[dict]:
        self._count(index, step)
        if not step.text and step.finish_reason is None and not (self.logprobs and self.tokens.visible(step.logprobs)):
            return []
        logprobs = self._logprobs(index, step.logprobs)
        return [self._chunk_envelope([self._choice(index, step.text, logprobs, step.finish_reason)])]

    def response(self, choices: list[Choice]) -> dict:
        body = self._envelope("text_completion", [
            self._choice(i, self.echo[i] + c.text, self._logprobs(i, c.logprobs), c.finish_reason)
            for i, c in enumerate(choices)
        ])
        body["usage"] = self._usage(choices)
        return body
