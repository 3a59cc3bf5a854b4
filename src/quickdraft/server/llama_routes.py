"""llama-server's own endpoints, for clients written for llama.cpp's server (llama.vscode and llama.vim's code
completion, llama.cpp's web UI and test suite, scripts): POST /completion, /infill, /tokenize, /detokenize,
/apply-template and GET /props, with llama-server's request and response shapes (its tools/server/README.md).

The same engine answers them as /v1: prepare.py's checks, limits and sampling defaults, the scheduler's queue,
so a greedy /completion is token for token the /v1/completions answer for the same prompt, and a seeded one
is the same draw. What differs is only the shape: llama-server's fields in, llama-server's JSON out (whole, or
as server-sent events ending with a chunk whose `stop` is true; no [DONE] on these routes, as llama-server).

    app.include_router(llama_server_router(engine, config, jobs, ...), dependencies=[...api key...])

llama-server's sampling knobs that would change the model's distribution and that the engine does not have
(repeat/DRY/XTC penalties, mirostat, typical_p, logit_bias, ...) are a 400, never silently ignored. Hints about
time and caching (cache_prompt, t_max_prompt_ms, t_max_predict_ms, n_indent, samplers, id_slot) are accepted
and not applied: the prompt prefix is always reused, and the answer is the model's own either way.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from dataclasses import dataclass, field, replace
from typing import Any, Awaitable, Callable, Iterator, Sequence

import jinja2
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from quickdraft import __version__
from quickdraft.config import Config
from quickdraft.engine import Engine
from quickdraft.errors import InvalidRequestError
from quickdraft.generate import GenerationResponse
from quickdraft.server.errors import APIError, bad_request, from_engine_error
from quickdraft.server.jobs import JobRunner
from quickdraft.server.prepare import check_supported, choices_per_prompt, open_stream, response_grammar, tool_use
from quickdraft.server.schemas import ChatCompletionRequest, GenerationFields, parse_body
from quickdraft.stats import GenerationStats
from quickdraft.target import TokenLogprob

MAX_N_PROBS = 20  # as /v1's top_logprobs
INFILL_BATCH = 2048  # llama-server's default --batch-size, which sizes the prefix and suffix /infill keeps
RANDOM_SEED = 0xFFFFFFFF  # llama-server's seed -1 (a fresh random seed) as it reports it
SAMPLERS = ["top_k", "top_p", "min_p", "temperature"]  # the engine's fixed order (quickdraft.sampling)


# ---- requests --------------------------------------------------------------------------------------------
class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class LlamaCompletionRequest(GenerationFields):
    """POST /completion. prompt: a string, token ids, ids and strings mixed ([12, "text", 34]) or a list of
    those (one result each). n_predict: -1 until the end (the configured max_tokens cap, the context), 0
    evaluates the prompt and generates nothing; max_tokens is its alias, as in llama-server."""

    prompt: str | list[int | str | list[int | str]]
    n_predict: int | None = Field(None, ge=-1)
    n_probs: int | None = Field(None, ge=0, le=MAX_N_PROBS)
    return_tokens: bool | None = None
    response_fields: list[str] | None = None
    logit_bias: dict[str, Any] | list[Any] | None = None  # llama-server also takes [[token, bias], ...]
    # llama-server's knobs this engine does not have: only their neutral values are accepted
    repeat_penalty: float | None = None
    typical_p: float | None = None
    mirostat: int | None = None
    dynatemp_range: float | None = None
    xtc_probability: float | None = None
    dry_multiplier: float | None = None
    top_n_sigma: float | None = None
    ignore_eos: bool | None = None
    post_sampling_probs: bool | None = None
    n_cmpl: int | None = None
    lora: list[Any] | None = None

    @model_validator(mode="after")
    def _random_seed(self) -> "LlamaCompletionRequest":
        if self.seed == -1:  # llama-server's "pick one"
            self.seed = None
        return self


class ExtraChunk(_Body):
    """Context from other files for /infill."""

    text: str
    filename: str = "tmp"  # llama-server's default


class InfillRequest(LlamaCompletionRequest):
    """POST /infill: the code before and after the cursor, prompt (text already typed at the cursor: it
    continues the prefix) and input_extra (other files' snippets), assembled with the model's FIM tokens."""

    prompt: str = ""
    input_prefix: str
    input_suffix: str
    input_extra: list[ExtraChunk] = Field(default_factory=list)


class TokenizeRequest(_Body):
    content: str | list[int | str]
    add_special: bool = False
    parse_special: bool = True
    with_pieces: bool = False


class DetokenizeRequest(_Body):
    tokens: list[int]


NEUTRAL = {  # field: (its neutral value, what it would do)
    "repeat_penalty": (1.0, "a repetition penalty"),
    "typical_p": (1.0, "locally typical sampling"),
    "mirostat": (0, "mirostat sampling"),
    "dynatemp_range": (0.0, "dynamic temperature"),
    "xtc_probability": (0.0, "XTC sampling"),
    "dry_multiplier": (0.0, "the DRY penalty"),
    "ignore_eos": (False, "ignoring the end of generation"),
    "post_sampling_probs": (False, "post-sampling probabilities (n_probs gives the model's own)"),
    "n_cmpl": (1, "several completions of one prompt"),
    "n": (1, "several choices of one prompt (/v1/completions has them)"),
}


def check_llama_supported(req: LlamaCompletionRequest) -> None:
    """prepare.check_supported's rules, and llama-server's knobs that would change the distribution."""
    check_supported(req)
    for name, (neutral, what) in NEUTRAL.items():
        value = getattr(req, name)
        if value is not None and value != neutral:
            raise bad_request(f"{name} is not supported ({what}); leave it out or send {json.dumps(neutral)}",
                              param=name)
    if req.top_n_sigma is not None and req.top_n_sigma > 0:
        raise bad_request("top_n_sigma is not supported; leave it out or send -1", param="top_n_sigma")
    if req.lora:
        raise bad_request("lora is not supported: this server runs no LoRA adapters", param="lora")


# ---- prompts ---------------------------------------------------------------------------------------------
def split_llama_prompts(prompt) -> list[str | list[int | str]]:
    """llama-server's prompt forms: a string, [ids], [ids and strings mixed] are one prompt; a list of those
    (["a", "b"], [[1, 2], "a"]) is several, one result each."""
    if isinstance(prompt, str) or (prompt and all(isinstance(p, (int, str)) for p in prompt)
                                   and any(isinstance(p, int) for p in prompt)):
        return [prompt]
    if not prompt:
        raise bad_request("prompt is empty", param="prompt")
    return list(prompt)


def tokenize_mixed(tokenizer, prompt: str | Sequence[int | str], *, add_special: bool = True,
                   parse_special: bool = True) -> list[int]:
    """A prompt of text and token ids, as llama-server reads it: strings are tokenized, ids kept, and special
    tokens (BOS) are added only where the prompt starts with text."""
    parts = [prompt] if isinstance(prompt, str) else list(prompt)
    tokens: list[int] = []
    for i, part in enumerate(parts):
        if isinstance(part, str):
            tokens += tokenizer.tokenize(part, add_special=add_special and i == 0, parse_special=parse_special)
        else:
            tokens.append(part)
    return tokens


def checked_prompt(engine: Engine, tokens: list[int], param: str) -> list[int]:
    """The engine's own checks of a prompt: not empty, ids in the vocabulary, room left in the context."""
    try:
        return engine.tokenize(tokens)
    except InvalidRequestError as e:
        raise from_engine_error(e, param) from None


@dataclass(frozen=True)
class FimTokens:
    pre: int
    suf: int
    mid: int
    rep: int | None = None  # repository name (Qwen2.5-Coder's repo-level pattern)
    sep: int | None = None  # file separator


def fim_tokens(found: dict[str, int]) -> FimTokens:
    """The model's FIM tokens, or llama-server's refusal (501, its message) when one of the three is missing."""
    missing = "".join(f"{what} token is missing. " for role, what in
                      (("pre", "prefix"), ("suf", "suffix"), ("mid", "middle")) if role not in found)
    if missing:
        raise APIError(501, f"Infill is not supported by this model: {missing}", type="not_supported_error",
                       code="not_supported")
    return FimTokens(found["pre"], found["suf"], found["mid"], found.get("rep"), found.get("sep"))


def infill_tokens(tokenize: Callable[[str], list[int]], fim: FimTokens, *, prefix: str, suffix: str,
                  prompt: list[int], extra: Sequence[ExtraChunk], bos: int | None, n_ctx: int, n_batch: int,
                  n_predict: int) -> list[int]:
    """llama-server's FIM prompt (format_prompt_infill):

        [extra] [BOS] FIM_PRE prefix prompt FIM_SUF suffix FIM_MID

    extra: with FIM_REP/FIM_SEP tokens the repo-level pattern (FIM_REP "myproject\\n", then per snippet
    FIM_SEP filename "\\n" text, then FIM_SEP "filename\\n"), else each snippet after a "--- snippet ---" line.
    The prefix keeps its last 3/4 of a batch of tokens, the suffix its first 1/4 (less the prompt), the extra
    context what the context leaves after a batch and twice n_predict (its end: the snippets nearest the
    cursor). tokenize: text -> ids, no BOS, special tokens as plain text."""
    extra_tokens: list[int] = []
    if fim.rep is not None:
        extra_tokens += [fim.rep, *tokenize("myproject\n")]
    for chunk in extra:
        if fim.sep is not None:
            extra_tokens += [fim.sep, *tokenize(chunk.filename + "\n")]
        else:
            extra_tokens += tokenize("\n\n--- snippet ---\n\n")
        extra_tokens += tokenize(chunk.text)
    if fim.sep is not None:
        extra_tokens += [fim.sep, *tokenize("filename\n")]

    prefix_tokens, suffix_tokens = tokenize(prefix), tokenize(suffix)
    n_prefix = min(len(prefix_tokens), 3 * (n_batch // 4))
    n_suffix = min(len(suffix_tokens), max(0, n_batch // 4 - (2 + len(prompt))))
    n_extra = min(max(0, n_ctx - n_batch - 2 * n_predict), len(extra_tokens))

    head = [bos] if bos is not None else []
    return [*extra_tokens[len(extra_tokens) - n_extra:], *head,
            fim.pre, *prefix_tokens[len(prefix_tokens) - n_prefix:], *prompt,
            fim.suf, *suffix_tokens[:n_suffix], fim.mid]


# ---- one request's answer ----------------------------------------------------------------------------------
@dataclass
class Generation:
    """One prompt's generation, collected step by step."""

    prompt: list[int]
    texts: list[str] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    stats: GenerationStats | None = None

    def add(self, step: GenerationResponse) -> None:
        self.texts.append(step.text)
        self.tokens += step.tokens
        self.logprobs += step.logprobs or []
        self.stats = step.stats
        if step.finish_reason is not None:
            self.finish_reason = step.finish_reason

    @property
    def content(self) -> str:
        return "".join(self.texts)


class LlamaFormatter:
    """Engine steps in llama-server's shapes: `chunks(index, step)` for a stream (each step's text and tokens,
    then the summary with stop: true), `add(index, step)` then `response()` for a whole answer (one object,
    or a list for several prompts)."""

    def __init__(self, engine: Engine, model: str, prompts: list[list[int]], settings: dict, *,
                 n_probs: int | None, return_tokens: bool, response_fields: list[str] | None,
                 stream: bool, stop: list[str]):
        self.tokenizer = engine.tokenizer
        self.n_ctx = engine.target.n_ctx
        self.model, self.settings = model, settings
        self.n_probs, self.return_tokens, self.fields = n_probs, return_tokens, response_fields
        self.stream, self.stop = stream, stop
        self.generations = [Generation(p) for p in prompts]

    # ---- pieces ----------------------------------------------------------------------------------------
    def _visible(self, tokens: list[int]) -> list[int]:
        return [t for t in tokens if not self.tokenizer.is_eog(t)]

    def _token(self, token: int, logprob: float) -> dict:
        data = self.tokenizer.token_bytes(token)
        return {"id": token, "token": data.decode("utf-8", errors="replace"), "bytes": list(data),
                "logprob": logprob}

    def _probabilities(self, logprobs: list[TokenLogprob] | None) -> list[dict]:
        out = []
        for lp in logprobs or []:
            if self.tokenizer.is_eog(lp.token):
                continue
            entry = self._token(lp.token, lp.logprob)
            entry["top_logprobs"] = [self._token(t, v) for t, v in lp.top]
            out.append(entry)
        return out

    def _stop_type(self, gen: Generation) -> tuple[str, str]:
        """llama-server's stop_type and stopping_word: eos, word (a stop string; which one is read off the
        tokens' text after the content) or limit (n_predict, the cap or the context)."""
        if gen.finish_reason == "length":
            return "limit", ""
        if gen.tokens and self.tokenizer.is_eog(gen.tokens[-1]):
            return "eos", ""
        rendered = b"".join(self.tokenizer.token_bytes(t) for t in gen.tokens).decode("utf-8", errors="replace")
        after = rendered[len(gen.content):]
        words = [s for s in self.stop if s and after.startswith(s)]
        return ("word", max(words, key=len)) if words else ("eos", "")

    # ---- whole answers and streams ---------------------------------------------------------------------
    def add(self, index: int, step: GenerationResponse) -> None:
        self.generations[index].add(step)

    def chunks(self, index: int, step: GenerationResponse) -> list[dict]:
        gen = self.generations[index]
        gen.add(step)
        out = []
        tokens = self._visible(step.tokens)
        if step.text or tokens:
            chunk = {"index": index, "content": step.text, "tokens": tokens, "stop": False, "id_slot": 0,
                     "tokens_predicted": len(gen.tokens), "tokens_evaluated": len(gen.prompt)}
            if self.n_probs:
                chunk["completion_probabilities"] = self._probabilities(step.logprobs)
            out.append(chunk)
        if step.finish_reason is not None:
            out.append(self.final(index))
        return out

    def final(self, index: int) -> dict:
        """The summary: in a stream its content was sent already (as llama-server, content "" here)."""
        gen = self.generations[index]
        stats = gen.stats or GenerationStats(prompt_tokens=len(gen.prompt))
        stop_type, stopping_word = self._stop_type(gen)
        content = "" if self.stream else gen.content
        body = {
            "index": index,
            "content": content,
            "tokens": self._visible(gen.tokens) if self.return_tokens and not self.stream else [],
            "id_slot": 0,
            "stop": True,
            "model": self.model,
            "tokens_predicted": stats.completion_tokens,
            "tokens_evaluated": len(gen.prompt),
            "generation_settings": self.settings,
            "prompt": render(self.tokenizer, gen.prompt),
            "has_new_line": "\n" in gen.content,
            "truncated": len(gen.prompt) + stats.completion_tokens >= self.n_ctx,
            "stop_type": stop_type,
            "stopping_word": stopping_word,
            "tokens_cached": len(gen.prompt) + stats.completion_tokens,
            "timings": timings(stats),
        }
        if self.n_probs and not self.stream:
            body["completion_probabilities"] = self._probabilities(gen.logprobs)
        return pick_fields(body, self.fields) if self.fields else body

    def response(self) -> dict | list[dict]:
        bodies = [self.final(i) for i in range(len(self.generations))]
        return bodies[0] if len(bodies) == 1 else bodies


def timings(stats: GenerationStats) -> dict:
    """llama-server's timings. The prompt's time runs to the first token (the prefill and its token), the
    prediction's from there; draft_n / draft_n_accepted: the speculative drafts, as llama-server reports."""
    prompt_ms = stats.ttft_seconds * 1000
    predicted_ms = max(stats.total_seconds - stats.ttft_seconds, 0.0) * 1000
    n_prompt, n = stats.prompt_tokens, stats.completion_tokens
    return {
        "cache_n": 0,
        "prompt_n": n_prompt,
        "prompt_ms": prompt_ms,
        "prompt_per_token_ms": prompt_ms / n_prompt if n_prompt else 0.0,
        "prompt_per_second": n_prompt * 1000 / prompt_ms if prompt_ms > 0 else 0.0,
        "predicted_n": n,
        "predicted_ms": predicted_ms,
        "predicted_per_token_ms": predicted_ms / n if n else 0.0,
        "predicted_per_second": n * 1000 / predicted_ms if predicted_ms > 0 else 0.0,
        "draft_n": stats.drafted,
        "draft_n_accepted": stats.accepted,
    }


def pick_fields(body: dict, fields: list[str]) -> dict:
    """llama-server's response_fields: only these, "a/b" naming body["a"]["b"] (kept under the key "a/b");
    a field that is not there is left out."""
    out = {}
    for name in fields:
        value: Any = body
        for part in name.split("/"):
            if not isinstance(value, dict) or part not in value:
                break
            value = value[part]
        else:
            out[name] = value
    return out


def piece(tokenizer, token: int) -> bytes:
    """A token's text with special tokens written out ("<s>", "<|im_start|>"), as llama-server renders
    them in /tokenize's pieces, /detokenize and a completion's `prompt`."""
    return tokenizer.token_bytes(token) or tokenizer.token_text(token).encode("utf-8")


def render(tokenizer, tokens: Sequence[int]) -> str:
    return b"".join(piece(tokenizer, t) for t in tokens).decode("utf-8", errors="replace")


def prefill_only(stream: Iterator[GenerationResponse]) -> Iterator[GenerationResponse]:
    """n_predict 0: llama-server evaluates the prompt into its cache and generates nothing (llama.vscode asks
    this to warm the cache for the next completion). The engine always takes a token: it is run, and dropped."""
    last = None
    try:
        for step in stream:
            last = step
    finally:
        stream.close()
    if last is not None:
        yield GenerationResponse("", [], None, "length", replace(last.stats, completion_tokens=0))


# ---- from a request to engine streams ------------------------------------------------------------------------
@dataclass
class PreparedLlama:
    streams: list[Iterator[GenerationResponse]]
    formatter: LlamaFormatter
    stream: bool


def generation_settings(engine: Engine, config: Config, req: LlamaCompletionRequest | None, n_predict: int,
                        seed: int | None) -> dict:
    """llama-server's generation_settings (and /props' default params): what a request runs with, the
    configured sampling defaults where it names no value (req None: a request that names none)."""
    sampling = config.sampling.model_dump()
    if req is not None:
        sampling.update({name: getattr(req, name) for name in ("temperature", "top_k", "top_p", "min_p")
                         if getattr(req, name) is not None})
    options = req.quickdraft if req is not None else None
    return {
        "n_ctx": engine.target.n_ctx,
        "n_predict": n_predict,
        "max_tokens": n_predict,
        "seed": RANDOM_SEED if seed is None else seed,
        **{name: sampling[name] for name in ("temperature", "top_k", "top_p", "min_p")},
        "typical_p": 1.0, "dynatemp_range": 0.0, "repeat_penalty": 1.0, "presence_penalty": 0.0,
        "frequency_penalty": 0.0, "dry_multiplier": 0.0, "xtc_probability": 0.0, "mirostat": 0,
        "stop": req.stop_strings() if req is not None else [],
        "n_probs": (req.n_probs or 0) if req is not None else 0,
        "stream": bool(req and req.stream),
        "grammar": (req.grammar or "") if req is not None else "",
        "ignore_eos": False,
        "n_keep": 0,
        "min_keep": 0,
        "samplers": SAMPLERS,
        "post_sampling_probs": False,
        "timings_per_token": False,
        "speculative": True,
        "speculative.draft": options.draft if options and options.draft else engine.default_draft,
        "speculative.n_max": options.k if options and options.k else engine.default_k,
    }


def n_predict_of(config: Config, req: LlamaCompletionRequest) -> int:
    """The token limit asked: n_predict (or max_tokens), -1 for the configured cap, else the default."""
    asked = req.n_predict if req.n_predict is not None else req.max_tokens
    cap = config.server.limits.max_tokens
    if asked is None:
        return min(config.sampling.max_tokens, cap)
    return cap if asked == -1 else min(asked, cap)


def prepare_llama(engine: Engine, config: Config, req: LlamaCompletionRequest, prompts: list[list[int]],
                  model: str) -> PreparedLlama:
    """Engine streams for prompts already tokenized and checked, through prepare.open_stream (sampling
    defaults, limits and every engine 400), and the formatter of their answer."""
    check_llama_supported(req)
    n_predict = n_predict_of(config, req)
    temperature = config.sampling.temperature if req.temperature is None else req.temperature
    if req.seed is None and temperature > 0:
        req.seed = secrets.randbits(32)  # the engine would pick one; picked here, it is reported and can redraw
    grammar, grammar_param = response_grammar(req)
    streams = []
    for tokens in prompts:
        stream = open_stream(engine, config, req, tokens, max(n_predict, 1), req.n_probs or None,
                             grammar=grammar, grammar_param=grammar_param)
        streams.append(prefill_only(stream) if n_predict == 0 else stream)
    settings = generation_settings(engine, config, req, n_predict, req.seed)
    formatter = LlamaFormatter(engine, model, prompts, settings, n_probs=req.n_probs,
                               return_tokens=bool(req.return_tokens), response_fields=req.response_fields,
                               stream=bool(req.stream), stop=req.stop_strings())
    return PreparedLlama(streams, formatter, bool(req.stream))


def prepare_llama_completion(engine: Engine, config: Config, req: LlamaCompletionRequest,
                             model: str) -> PreparedLlama:
    """POST /completion: each prompt tokenized as llama-server reads it, then checked as /v1's are."""
    prompts = split_llama_prompts(req.prompt)
    tokenized = []
    for i, prompt in enumerate(prompts):
        param = "prompt" if len(prompts) == 1 else f"prompt[{i}]"
        if not prompt:  # "" would still tokenize (to a lone BOS)
            raise bad_request("prompt is empty", param=param)
        tokenized.append(checked_prompt(engine, tokenize_mixed(engine.tokenizer, prompt), param))
    return prepare_llama(engine, config, req, tokenized, model)


def prepare_infill(engine: Engine, config: Config, req: InfillRequest, model: str) -> PreparedLlama:
    """POST /infill: the FIM prompt from the model's own FIM tokens (a 501 where it has none)."""
    tokenizer = engine.tokenizer
    fim = fim_tokens(tokenizer.fim_tokens)
    plain = lambda text: tokenizer.tokenize(text, add_special=False, parse_special=False)  # noqa: E731
    prompt = tokenizer.tokenize(req.prompt, add_special=False, parse_special=True) if req.prompt else []
    n_ctx = engine.target.n_ctx
    tokens = infill_tokens(plain, fim, prefix=req.input_prefix, suffix=req.input_suffix, prompt=prompt,
                           extra=req.input_extra, bos=tokenizer.bos_token if tokenizer.adds_bos else None,
                           n_ctx=n_ctx, n_batch=min(INFILL_BATCH, n_ctx), n_predict=n_predict_of(config, req))
    return prepare_llama(engine, config, req, [checked_prompt(engine, tokens, "input_prefix")], model)


def apply_template(engine: Engine, req: ChatCompletionRequest) -> str:
    """The chat prompt /v1/chat/completions would run, as text (tools offered as that route offers them)."""
    tools = tool_use(req)
    try:
        return engine.chat_template.render([m.as_template_input() for m in req.messages],
                                           add_generation_prompt=True, tools=tools.offered)
    except InvalidRequestError as e:
        raise from_engine_error(e, "messages") from None
    except (jinja2.TemplateError, TypeError, ValueError) as e:
        raise bad_request(f"the model's chat template cannot render these messages: {e}",
                          param="messages") from None


def tokenize(engine: Engine, req: TokenizeRequest) -> dict:
    tokenizer = engine.tokenizer
    bad = [t for t in ([] if isinstance(req.content, str) else req.content)
           if isinstance(t, int) and not 0 <= t < tokenizer.n_vocab]
    if bad:
        raise bad_request(f"token ids out of range [0, {tokenizer.n_vocab}): {bad[:5]}", param="content")
    tokens = tokenize_mixed(tokenizer, req.content, add_special=req.add_special, parse_special=req.parse_special)
    if not req.with_pieces:
        return {"tokens": tokens}
    out = []
    for t in tokens:
        data = piece(tokenizer, t)
        try:
            text: str | list[int] = data.decode("utf-8")
        except UnicodeDecodeError:  # part of a character: its bytes, as llama-server sends them
            text = list(data)
        out.append({"id": t, "piece": text})
    return {"tokens": out}


def detokenize(engine: Engine, req: DetokenizeRequest) -> dict:
    n_vocab = engine.tokenizer.n_vocab
    bad = [t for t in req.tokens if not 0 <= t < n_vocab]
    if bad:
        raise bad_request(f"token ids out of range [0, {n_vocab}): {bad[:5]}", param="tokens")
    return {"content": render(engine.tokenizer, req.tokens)}


def props(engine: Engine, config: Config, model: str, busy: bool) -> dict:
    """GET /props: what clients read of it (n_ctx, the chat template, total_slots, modalities)."""
    tokenizer = engine.tokenizer
    try:
        template = engine.chat_template.source
    except InvalidRequestError:  # a base model with no template and none known
        template = ""
    target_model = getattr(engine.target, "model", None)
    n_predict = min(config.sampling.max_tokens, config.server.limits.max_tokens)
    return {
        "default_generation_settings": {
            "id": 0, "id_task": -1, "n_ctx": engine.target.n_ctx, "speculative": True, "is_processing": busy,
            "params": generation_settings(engine, config, None, n_predict, None),
            "prompt": "",
            "next_token": {"has_next_token": True, "has_new_line": False, "n_remain": -1, "n_decoded": 0,
                           "stopping_word": ""},
        },
        "total_slots": 1,  # one request at a time (quickdraft.server.scheduler)
        "model_alias": model,
        "model_path": str(getattr(target_model, "path", engine.target.name)),
        "modalities": {"vision": False, "audio": False},
        "chat_template": template,
        "chat_template_caps": {},
        "bos_token": tokenizer.token_text(tokenizer.bos_token) if tokenizer.bos_token is not None else "",
        "eos_token": tokenizer.token_text(tokenizer.eos_token) if tokenizer.eos_token is not None else "",
        "build_info": f"quickdraft {__version__}",
        "is_sleeping": False,
        "infill": set(tokenizer.fim_tokens) >= {"pre", "suf", "mid"},  # quickdraft's: whether /infill works
    }


# ---- the routes ------------------------------------------------------------------------------------------
def llama_server_router(engine: Engine, config: Config, jobs: JobRunner, *, model_id: str,
                        read_body: Callable[[Request], Awaitable[bytes]]) -> APIRouter:
    """The routes; app.py includes them behind the API key. jobs: app.py's (its scheduler); read_body: app.py's
    (the body size limit)."""
    router = APIRouter()

    async def run(request: Request, prepared: PreparedLlama) -> Response:
        job = jobs.submit(prepared.streams)
        formatter = prepared.formatter
        if prepared.stream:
            return StreamingResponse(jobs.sse(job, formatter.chunks), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        if not await jobs.collect(request, job, formatter.add):
            return Response(status_code=499)  # the client left; nobody reads this
        return JSONResponse(formatter.response())

    @router.post("/completion")
    async def completion(request: Request):
        req = parse_body(LlamaCompletionRequest, await read_body(request))
        n_prompts = len(split_llama_prompts(req.prompt))
        choices_per_prompt(config, req, n_prompts)  # at most server.limits.max_choices prompts: a 400
        jobs.check_room(n_prompts)
        prepared = await asyncio.to_thread(prepare_llama_completion, engine, config, req, model_id)
        return await run(request, prepared)

    @router.post("/infill")
    async def infill(request: Request):
        req = parse_body(InfillRequest, await read_body(request))
        jobs.check_room(1)
        prepared = await asyncio.to_thread(prepare_infill, engine, config, req, model_id)
        return await run(request, prepared)

    @router.post("/tokenize")
    async def tokenize_route(request: Request):
        req = parse_body(TokenizeRequest, await read_body(request))
        return await asyncio.to_thread(tokenize, engine, req)

    @router.post("/detokenize")
    async def detokenize_route(request: Request):
        req = parse_body(DetokenizeRequest, await read_body(request))
        return await asyncio.to_thread(detokenize, engine, req)

    @router.post("/apply-template")
    async def apply_template_route(request: Request):
        req = parse_body(ChatCompletionRequest, await read_body(request))
        return {"prompt": await asyncio.to_thread(apply_template, engine, req)}

    @router.get("/props")
    async def props_route():
        return props(engine, config, model_id, busy=jobs.scheduler.running > 0)

    return router

