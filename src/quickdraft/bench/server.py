"""The same prompts through a running OpenAI-compatible endpoint, for `--server URL`.

Each generation is one streamed POST /v1/chat/completions with `stream_options: {include_usage: true}`:
the time to the first content chunk is the TTFT, the time to the end of the stream the run's seconds, and
the tokens are the `usage.completion_tokens` the server reports in its last chunk. Stream chunks are never
counted as tokens (a chunk may carry several tokens, or none); a server that reports no usage fails the
run, loudly.

A configuration other than "server" is asked for with quickdraft's request extension
`"quickdraft": {"draft": ..., "k": ...}`. Other servers ignore that field, so against them every
configuration measures the same setup: bench them with `--draft server` (their own configuration).
The server's memory is its own process's: not measured here (peak RSS is reported as 0).
"""

from __future__ import annotations

import json
import time

import httpx

from quickdraft.bench.prompts import BenchPrompt
from quickdraft.bench.records import Config, Run
from quickdraft.errors import QuickdraftError

SERVER_DRAFT = "server"  # the configuration that sends no extension: whatever the server does by default


class ServerBenchError(QuickdraftError):
    """The endpoint could not be used for a measurement."""


def request_body(config: Config, model: str, messages: list[dict], max_tokens: int, temperature: float,
                 seed: int) -> dict:
    body = {
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "seed": seed,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if config.draft != SERVER_DRAFT:
        body["quickdraft"] = {"draft": config.draft, **({"k": config.k} if config.k else {})}
    return body


def read_stream(lines, clock=time.perf_counter, start: float | None = None) -> dict:
    """Text, finish reason, usage and time to first content of a chat-completion event stream."""
    start = clock() if start is None else start
    parts: list[str] = []
    first = None
    usage = None
    finish = ""
    for line in lines:
        if not line.startswith("data:"):
            continue
        data = line[len("data:"):].strip()
        if data == "[DONE]":
            break
        chunk = json.loads(data)
        if chunk.get("error"):
            raise ServerBenchError(f"the server sent an error: {chunk['error']}")
        if chunk.get("usage"):
            usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            content = (choice.get("delta") or {}).get("content")
            if content:
                if first is None:
                    first = clock() - start
                parts.append(content)
            finish = choice.get("finish_reason") or finish
    return {"text": "".join(parts), "finish_reason": finish, "usage": usage, "ttft": first}


class ServerBackend:
    def __init__(self, url: str, *, model: str | None = None, api_key: str | None = None,
                 temperature: float = 0.0, seed: int = 0, timeout: float = 600.0,
                 transport: httpx.BaseTransport | None = None):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout,
                                   transport=transport)
        self.url = url
        self.temperature, self.seed = temperature, seed
        self.model = model or self.first_model()

    def first_model(self) -> str:
        try:
            r = self.client.get("/v1/models")
            r.raise_for_status()
            return r.json()["data"][0]["id"]
        except (httpx.HTTPError, KeyError, IndexError, ValueError) as e:
            raise ServerBenchError(f"could not list the models of {self.url} ({e}); name one with --model") from None

    def run(self, config: Config, prompt: BenchPrompt, turn: int, messages: list[dict], max_tokens: int) -> Run:
        record = Run(config.name, prompt.id, prompt.category, turn)
        body = request_body(config, self.model, messages, max_tokens, self.temperature, self.seed)
        start = time.perf_counter()
        try:
            with self.client.stream("POST", "/v1/chat/completions", json=body) as response:
                if response.status_code != 200:
                    response.read()
                    raise ServerBenchError(f"HTTP {response.status_code}: {response.text[:300]}")
                got = read_stream(response.iter_lines(), start=start)
        except (httpx.HTTPError, ServerBenchError, ValueError) as e:
            record.error = str(e)
            return record
        record.seconds = time.perf_counter() - start
        if not got["usage"]:
            record.error = "the server reported no usage; quickdraft never counts stream chunks as tokens"
            return record
        record.completion_tokens = int(got["usage"].get("completion_tokens", 0))
        record.prompt_tokens = int(got["usage"].get("prompt_tokens", 0))
        record.ttft_seconds = got["ttft"]
        if got["ttft"] is not None:
            record.decode_tokens = max(0, record.completion_tokens - 1)
            record.decode_seconds = record.seconds - got["ttft"]
        record.text = got["text"]
        record.finish_reason = got["finish_reason"]
        return record
