"""The library's front door: a target, its drafters and the request-level checks, behind one lock.

    engine = Engine.load(target="gemma-3-270m-q8_0", draft="gemma-3-270m", k=4)
    result = engine.generate("Hello", max_tokens=32)

One engine serves one request at a time (one KV sequence per model); the server queues requests in front.
"""

from __future__ import annotations

import logging
import secrets
import threading
from functools import cached_property
from typing import Iterator, Mapping, Sequence

from quickdraft.chat_template import ChatTemplate
from quickdraft.constraint import Constraint, GrammarSpec
from quickdraft.controller import AdaptiveController, MachineModel
from quickdraft.drafters import Drafter
from quickdraft.errors import ContextLengthError, InvalidRequestError
from quickdraft.generate import GenerationResponse, GenerationResult, collect, stream_generate
from quickdraft.hardware import pick_draft
from quickdraft.llama_model import LlamaModel
from quickdraft.loading import load_drafter, load_target, standard_drafters
from quickdraft.node import is_node_url
from quickdraft.placement import Placement, resolve as resolve_placement
from quickdraft.planner import auto_models
from quickdraft.policy import AUTO_MAX_K, DEFAULT_K, FixedPolicy, Policy, cap_k, check_k
from quickdraft.sampling import SamplingParams
from quickdraft.target import Target

log = logging.getLogger("quickdraft")


class Engine:
    def __init__(
        self,
        target: Target,
        tokenizer: LlamaModel,
        drafters: dict[str, Drafter],
        *,
        draft: str = "ngram",
        k: int = DEFAULT_K,
        chat_template: str | None = None,
    ):
        """drafters: by name; "none" (the target alone) is always among them."""
        self.target = target
        self.chat_template_override = chat_template
        self.tokenizer = tokenizer
        self.drafters = drafters
        if draft not in drafters and draft != "auto":
            raise InvalidRequestError(f"no drafter {draft!r}; this engine has {sorted(drafters)}")
        self.default_draft = draft
        self.machine = MachineModel()  # what auto learns about this machine, shared by the requests
        self.default_k = check_k(k)
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls,
        target: str,
        draft: str | None = "auto",
        *,
        k: int = DEFAULT_K,
        n_ctx: int = 4096,
        threads: int | None = None,
        ngram_max: int = 4,
        ngram_min: int = 1,
        chat_template: str | None = None,
        exact: bool = True,
        rpc_servers: Sequence[str] = (),
        gpu_layers: int | None = None,
        placement: Placement | None = None,
        draft_for: str | None = None,
    ) -> "Engine":
        """target: a model name or path. draft: "auto" (adaptive, over n-gram and the draft model
        quickdraft.hardware picks for the target, if any), "ngram", "none", or a draft model name or path.
        Either may be node://HOST:PORT, a `quickdraft node` (quickdraft.node): the same interfaces, remote.
        exact (default): greedy output is llama.cpp's own one-token-at-a-time output, token for token (flash
        attention off, K capped to what this machine verifies bit-exactly); False: llama.cpp's faster
        defaults and no cap, equal to the target alone only up to rounding (docs/exactness.md).
        rpc_servers: llama.cpp rpc-server workers (HOST:PORT) for a local target's layers; gpu_layers: how many
        go there (default: all, with workers).
        placement: each model's GPU layers, GPU and threads (quickdraft.placement; default auto: the planner's
        GPU layers where llama.cpp has a GPU, none without one); threads is both models' unless theirs is set.
        draft_for: for a node target, the model it serves, whose draft model `auto` then adds (serve's target
        over RPC workers runs in a node of its own: quickdraft.node.supervisor)."""
        check_k(k)
        draft = draft or "none"
        model_spec = draft if draft not in ("auto", "none", "ngram") else None
        if target == "auto":  # no model named: the planner's choice among the models on this machine
            target, planned_draft, reasons = auto_models(n_ctx)
            log.info("target auto: %s", "; ".join(reasons))
            if draft == "auto":
                model_spec = planned_draft
        elif draft == "auto" and (draft_for or not is_node_url(target)):
            model_spec = pick_draft(str(draft_for or target))
        on_target, on_draft = resolve_placement(placement, target=target, draft=model_spec, n_ctx=n_ctx,
                                                threads=threads, rpc=bool(rpc_servers))
        target_backend, tokenizer = load_target(
            target, n_ctx=n_ctx, threads=on_target.threads, exact=exact, rpc_servers=rpc_servers,
            gpu_layers=on_target.gpu_layers if gpu_layers is None else gpu_layers, main_gpu=on_target.main_gpu)
        drafters = standard_drafters(ngram_max, ngram_min)
        if model_spec:
            drafters["model"] = load_drafter(model_spec, tokenizer, n_ctx=n_ctx, threads=on_draft.threads,
                                             exact=exact, gpu_layers=on_draft.gpu_layers, main_gpu=on_draft.main_gpu)
            if draft != "auto":
                draft = "model"
        return cls(target_backend, tokenizer, drafters, draft=draft, k=k, chat_template=chat_template)

    # ---- requests ---------------------------------------------------------------------------------------
    @cached_property
    def chat_template(self) -> ChatTemplate:
        return ChatTemplate.for_model(self.tokenizer, self.chat_template_override)

    def chat_prompt(self, messages: Sequence[Mapping], tools: list[dict] | None = None) -> list[int]:
        """Chat messages (and the tools offered, OpenAI's shape) rendered with the model's template, as tokens."""
        text = self.chat_template.render(messages, add_generation_prompt=True, tools=tools)
        return self.tokenize(text, add_bos=not self.chat_template.starts_with_bos(text))

    def tokenize(self, prompt: str | Sequence[int], *, add_bos: bool = True) -> list[int]:
        if isinstance(prompt, str):
            if not prompt:
                raise InvalidRequestError("prompt is empty")
            tokens = self.tokenizer.tokenize(prompt, add_special=add_bos, parse_special=True)
        else:
            tokens = [int(t) for t in prompt]
            bad = [t for t in tokens if not 0 <= t < self.tokenizer.n_vocab]
            if bad:
                raise InvalidRequestError(f"token ids out of range [0, {self.tokenizer.n_vocab}): {bad[:5]}")
        if not tokens:
            raise InvalidRequestError("prompt is empty")
        if len(tokens) >= self.target.n_ctx:
            raise ContextLengthError(
                f"the prompt is {len(tokens)} tokens; the context of {self.target.name} holds "
                f"{self.target.n_ctx}, and at least one token must be left to generate"
            )
        return tokens

    def policy(self, draft: str | None = None, k: int | None = None) -> Policy:
        """The drafter and K for one request. For auto, k (if given) caps the K it may choose. Either way K
        never exceeds what the target verifies exactly (Target.max_k; quickdraft.policy has every K limit)."""
        name = draft or self.default_draft
        if name != "auto" and name not in self.drafters:
            raise InvalidRequestError(f"no drafter {name!r}; this engine has {sorted(self.drafters)}")
        k = check_k(k) if k is not None else (AUTO_MAX_K if name == "auto" else self.default_k)
        k = cap_k(k, self.target.max_k)
        none = self.drafters["none"]
        if k == 0 or name == "none":  # the target alone (also where no batch verifies exactly)
            return FixedPolicy(none, 0)
        if name == "auto":
            speculative = [d for n, d in self.drafters.items() if n != "none"]
            return AdaptiveController(speculative, none, self.machine, max_k=k)
        return FixedPolicy(self.drafters[name], k)

    def stream(
        self,
        prompt: str | Sequence[int],
        *,
        max_tokens: int = 256,
        sampling: SamplingParams | None = None,
        stop: Sequence[str] = (),
        top_logprobs: int | None = None,
        draft: str | None = None,
        k: int | None = None,
        grammar: GrammarSpec | None = None,
        **sampling_kwargs,
    ) -> Iterator[GenerationResponse]:
        """Yield text pieces as tokens are accepted. Bad input raises here, before anything streams; the
        engine is held from the first step of the stream to its end. grammar: what the output must match
        (JSON, a JSON schema, a regex, a Lark or GBNF grammar; quickdraft.constraint)."""
        return self._run(*self._prepare(prompt, max_tokens, sampling, draft, k, sampling_kwargs),
                         max_tokens=max_tokens, stop=stop, top_logprobs=top_logprobs,
                         constraint=self.constraint(grammar))

    def generate(self, prompt: str | Sequence[int], **kwargs) -> GenerationResult:
        return collect(self.stream(prompt, **kwargs))

    def constraint(self, grammar: GrammarSpec | None) -> Constraint | None:
        """The grammar compiled for one request (GrammarError, an InvalidRequestError, if it does not)."""
        if grammar is None:
            return None
        if not self.target.supports_grammar:
            raise InvalidRequestError(
                f"the target {self.target.name} runs on a node that cannot apply a grammar (response_format, "
                "grammar, json_schema, regex): an older quickdraft there; update it, or serve a local target"
            )
        return Constraint.compile(grammar, self.tokenizer.grammar_tokenizer(), self.target.n_vocab)

    def _prepare(self, prompt, max_tokens, sampling, draft, k, sampling_kwargs):
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise InvalidRequestError(f"max_tokens must be a positive integer, got {max_tokens!r}")
        sampling = sampling or SamplingParams.make(**sampling_kwargs)
        if not sampling.greedy and sampling.seed is None:  # each position's draw is a function of the seed
            sampling = sampling.model_copy(update={"seed": secrets.randbits(63)})
        tokens = self.tokenize(prompt)
        return tokens, self.policy(draft, k), sampling

    def _run(self, tokens, policy, sampling, **kwargs) -> Iterator[GenerationResponse]:
        with self._lock:
            yield from stream_generate(self.target, self.tokenizer, policy, tokens, sampling, **kwargs)

    def describe(self) -> dict:
        return {
            "target": self.target.name,
            "drafters": sorted(self.drafters),
            "draft": self.default_draft,
            "k": self.default_k,
            "max_exact_k": self.target.max_k,
            "auto": self.machine.costs.describe(),
            "n_ctx": self.target.n_ctx,
            "placement": self.placement(),
        }

    def placement(self) -> dict[str, str]:
        """Where llama.cpp put each model run in this process: {"target": "31/31 layers on CPU (...)", ...}."""
        from quickdraft.loading import describe_placement

        parts = {"target": self.target, **{f"draft {name}": d for name, d in self.drafters.items()}}
        return {role: describe_placement(part.model) for role, part in parts.items()
                if isinstance(getattr(part, "model", None), LlamaModel)}
