"""From a parsed request to what the engine will run: prompt tokens, token limit, sampling, one engine
stream per choice. Every problem with the request surfaces here, as a 400, before anything is queued.

Choices: n per prompt (completions take a list of prompts), ordered as OpenAI orders them, prompt-major:
choice index = prompt_i * n + j. Choice j of a prompt samples with its own seed (`choice_seed`); greedy
choices are all the same answer. A request may ask for at most server.limits.max_choices choices in all,
checked before any prompt is tokenized.

This runs off the event loop (rendering a chat template and tokenizing a long prompt take a while) and
while the engine worker may be decoding: it only uses the tokenizer, which llama.cpp allows concurrently
with decoding (llama.cpp's own server tokenizes in its HTTP threads too).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterator, Sequence

import jinja2

from quickdraft.config import Config
from quickdraft.constraint import GrammarError, GrammarSpec
from quickdraft.engine import Engine
from quickdraft.errors import InvalidRequestError
from quickdraft.generate import GenerationResponse
from quickdraft.server.errors import bad_request, from_engine_error
from quickdraft.server.schemas import ChatCompletionRequest, CompletionRequest, GenerationFields
from quickdraft.tool_calls import forced_call_grammar

MAX_STOP_STRINGS = 16
SEED_MASK = (1 << 64) - 1  # OpenAI seeds are signed 64-bit; numpy's seed sequences take non-negative ints


@dataclass
class PreparedRequest:
    streams: list[Iterator[GenerationResponse]]  # one per choice, not started: the engine is not held yet
    echo: list[str]  # text each choice starts with (completions with echo: the prompt), else ""
    top_logprobs: int | None  # None: no log-probabilities; n: each token's and its n best alternatives
    stream: bool
    include_usage: bool
    tool_names: frozenset[str] | None = None  # the tools offered: answers are parsed for calls to them
    n: int = 1  # choices per prompt: streams[i * n + j] is choice j of prompt i


@dataclass
class ToolUse:
    """What a chat request's tools and tool_choice mean here: the tools the template offers the model,
    the names its answer is parsed for, and the grammar that forces a call (required or named)."""

    offered: list[dict] | None = None
    names: frozenset[str] | None = None
    grammar: GrammarSpec | None = None


def prepare_chat(engine: Engine, config: Config, req: ChatCompletionRequest) -> PreparedRequest:
    check_supported(req)
    n = choices_per_prompt(config, req, n_prompts=1)
    if req.top_logprobs is not None and not req.logprobs:
        raise bad_request("top_logprobs needs logprobs: true", param="top_logprobs")
    tools = tool_use(req)
    try:
        prompt = engine.chat_prompt([m.as_template_input() for m in req.messages], tools.offered)
    except InvalidRequestError as e:
        raise from_engine_error(e, "messages") from None
    except (jinja2.TemplateError, TypeError, ValueError) as e:  # the template choked on these messages
        raise bad_request(f"the model's chat template cannot render these messages: {e}",
                          param="messages") from None
    top = (req.top_logprobs or 0) if req.logprobs else None
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    grammar, grammar_param = (tools.grammar, "tools") if tools.grammar else response_grammar(req)
    streams = [open_stream(engine, config, req, prompt, max_tokens, top, choice=j,
                           grammar=grammar, grammar_param=grammar_param) for j in range(n)]
    return PreparedRequest(streams, [""] * n, top, bool(req.stream), req.include_usage, tools.names, n=n)


def tool_use(req: ChatCompletionRequest) -> ToolUse:
    """tool_choice none: no tools offered; auto (the default): offered, the answer parsed for calls;
    required: offered, and a grammar makes the answer one call (one or more with parallel_tool_calls true);
    a named function: one call of it."""
    tools = [t.model_dump(exclude_none=True) for t in req.tools or []]
    choice = req.tool_choice
    if not tools:
        if choice not in (None, "none", "auto"):
            raise bad_request("tool_choice requires tools", param="tool_choice")
        return ToolUse()
    names = [t["function"]["name"] for t in tools]
    if len(set(names)) != len(names):
        raise bad_request("tools: function names must be unique", param="tools")
    if choice == "none":
        return ToolUse()
    if choice in (None, "auto"):
        return ToolUse(tools, frozenset(names))
    name = None if choice == "required" else choice.function.name
    if name is not None and name not in names:
        raise bad_request(f"tool_choice names {name!r}, which is not among the tools", param="tool_choice")
    # several calls only when asked for: a grammar that allows another call lets a small model go on calling
    # until max_tokens cuts it off mid-call (seen with SmolLM2)
    several = name is None and req.parallel_tool_calls is True
    return ToolUse(tools, frozenset(names), GrammarSpec("lark", forced_call_grammar(tools, name, several=several)))


def prepare_completion(engine: Engine, config: Config, req: CompletionRequest) -> PreparedRequest:
    check_supported(req)
    if req.suffix:
        raise bad_request("suffix is not supported", param="suffix")
    if req.best_of not in (None, 1):
        raise bad_request("best_of must be 1", param="best_of")
    if req.echo and req.logprobs is not None:
        raise bad_request("echo with logprobs is not supported (prompt log-probabilities are not computed)",
                          param="echo")
    grammar, grammar_param = response_grammar(req)
    prompts = split_prompts(req.prompt)
    n = choices_per_prompt(config, req, n_prompts=len(prompts))
    streams, echo = [], []
    for i, prompt in enumerate(prompts):
        param = "prompt" if len(prompts) == 1 else f"prompt[{i}]"
        try:
            tokens = engine.tokenize(prompt)
        except InvalidRequestError as e:
            raise from_engine_error(e, param) from None
        streams += [open_stream(engine, config, req, tokens, req.max_tokens, req.logprobs, choice=j,
                                grammar=grammar, grammar_param=grammar_param) for j in range(n)]
        if req.echo:
            echo += [prompt if isinstance(prompt, str) else engine.tokenizer.detokenize(prompt)] * n
        else:
            echo += [""] * n
    return PreparedRequest(streams, echo, req.logprobs, bool(req.stream), req.include_usage, n=n)


def split_prompts(prompt) -> list[str | list[int]]:
    """OpenAI's prompt forms: "text", ["text", ...], [token ids], [[token ids], ...]; one choice each."""
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise bad_request("prompt is empty", param="prompt")
    if all(isinstance(p, int) for p in prompt):
        return [list(prompt)]
    return list(prompt)


def choices_per_prompt(config: Config, req: GenerationFields, n_prompts: int) -> int:
    """The request's n (default 1), refused when prompts x n exceeds server.limits.max_choices: every choice
    is a generation the queue runs, and each is tokenized and given a compiled grammar before it queues."""
    n = req.n or 1
    limit = config.server.limits.max_choices
    if n_prompts * n > limit:
        asked = f"{n_prompts} prompts x n = {n}" if n_prompts > 1 else f"n = {n}"
        raise bad_request(f"this request asks for {n_prompts * n} choices ({asked}); this server generates at "
                          f"most {limit} per request (server.limits.max_choices)",
                          param="n" if n > 1 else "prompt")
    return n


def choice_seed(seed: int | None, choice: int) -> int | None:
    """The seed choice j (counted within its prompt) samples with. None without a request seed: the engine
    then draws a seed per stream, as for a single choice. Choice 0 takes the request's seed (a 64-bit
    two's complement, OpenAI's seeds being signed), so it is the answer n = 1 gives; choice j > 0 takes the
    first 8 bytes, big-endian, of SHA-256("<that seed>:<j>"), so choices differ and each is reproducible."""
    if seed is None:
        return None
    seed &= SEED_MASK
    if choice == 0:
        return seed
    return int.from_bytes(hashlib.sha256(f"{seed}:{choice}".encode()).digest()[:8], "big")


def check_supported(req: GenerationFields) -> None:
    """Reject what this server cannot honour, rather than silently answer something else."""
    for name in ("frequency_penalty", "presence_penalty"):
        if getattr(req, name):
            raise bad_request(f"{name} is not supported (it would change the model's distribution)", param=name)
    if req.logit_bias:
        raise bad_request("logit_bias is not supported", param="logit_bias")
    if len(req.stop_strings()) > MAX_STOP_STRINGS:
        raise bad_request(f"at most {MAX_STOP_STRINGS} stop strings", param="stop")


def open_stream(
    engine: Engine,
    config: Config,
    req: GenerationFields,
    prompt: Sequence[int],
    max_tokens: int | None,
    top_logprobs: int | None,
    grammar: GrammarSpec | None = None,
    grammar_param: str | None = None,
    choice: int = 0,
) -> Iterator[GenerationResponse]:
    """The engine stream for one choice of a prompt (choice: its number within the prompt, which picks its
    seed). max_tokens: the request's, else the configured default; capped by the configured limit and by the
    room the prompt leaves in the context."""
    defaults = config.sampling
    room = engine.target.n_ctx - len(prompt)
    limit = min(max_tokens or defaults.max_tokens, config.server.limits.max_tokens, room)
    options = req.quickdraft
    pick = lambda value, default: default if value is None else value  # noqa: E731
    try:
        return engine.stream(
            prompt,
            max_tokens=max(1, limit),
            stop=req.stop_strings(),
            top_logprobs=top_logprobs,
            draft=options.draft if options else None,
            k=options.k if options else None,
            temperature=pick(req.temperature, defaults.temperature),
            top_p=pick(req.top_p, defaults.top_p),
            top_k=pick(req.top_k, defaults.top_k),
            min_p=pick(req.min_p, defaults.min_p),
            seed=choice_seed(req.seed, choice),
            grammar=grammar,
        )
    except GrammarError as e:  # a schema, grammar or regex that does not compile
        raise from_engine_error(e, grammar_param) from None
    except InvalidRequestError as e:  # a sampling value or drafter the engine refuses
        raise from_engine_error(e) from None


def response_grammar(req: GenerationFields) -> tuple[GrammarSpec | None, str | None]:
    """What the output must match and the field that asked: response_format (json_object, json_schema),
    llama-server's `grammar` (GBNF) or `json_schema`, or `quickdraft.regex`. At most one may be given."""
    asked: list[tuple[str, GrammarSpec]] = []
    fmt = req.response_format
    if fmt is not None and fmt.type == "json_object":
        spec = GrammarSpec("json_schema", fmt.schema_) if fmt.schema_ is not None else GrammarSpec("json_object")
        asked.append(("response_format", spec))
    if fmt is not None and fmt.type == "json_schema":
        schema = fmt.json_schema.schema_
        spec = GrammarSpec("json_schema", schema) if schema is not None else GrammarSpec("json_object")
        asked.append(("response_format", spec))
    if req.grammar is not None:
        asked.append(("grammar", GrammarSpec("gbnf", req.grammar)))
    if req.json_schema is not None:
        asked.append(("json_schema", GrammarSpec("json_schema", req.json_schema)))
    if req.quickdraft is not None and req.quickdraft.regex is not None:
        asked.append(("quickdraft.regex", GrammarSpec("regex", req.quickdraft.regex)))
    if len(asked) > 1:
        names = ", ".join(name for name, _ in asked)
        raise bad_request(f"give one way to constrain the output, not several ({names})", param=asked[1][0])
    return (asked[0][1], asked[0][0]) if asked else (None, None)
