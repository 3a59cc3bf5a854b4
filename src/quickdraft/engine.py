"""The library's front door: a target, its drafters and the request-level checks, behind one lock.

    engine = Engine.load(target="gemma-3-270m-q8_0", draft="gemma-3-270m", k=4)
    result = engine.generate("Hello", max_tokens=32)

One engine serves one request at a time (one KV sequence per model); the server queues requests in front.
"""

from __future__ import annotations

import threading
from functools import cached_property
from typing import Iterator, Mapping, Sequence

from quickdraft import model_store
from quickdraft.chat_template import ChatTemplate
from quickdraft.drafters import Drafter, ModelDrafter, NgramDrafter, NoDrafter
from quickdraft.errors import ContextLengthError, IncompatibleVocabError, InvalidRequestError
from quickdraft.generate import GenerationResponse, GenerationResult, collect, stream_generate
from quickdraft.llama_model import LlamaModel
from quickdraft.policy import FixedPolicy, Policy
from quickdraft.sampling import SamplingParams
from quickdraft.target import LocalTarget, Target

DRAFT_CHOICES = ("none", "ngram", "model")
DEFAULT_K = 4
MAX_K = 32


def check_vocab(target: LlamaModel, draft: LlamaModel) -> None:
    """Refuse a draft whose vocabulary is not the target's: its token ids would mean other strings."""
    if target.n_vocab != draft.n_vocab or target.vocab_fingerprint != draft.vocab_fingerprint:
        raise IncompatibleVocabError(
            f"draft model {draft.name} ({draft.n_vocab} tokens) does not share the vocabulary of target "
            f"model {target.name} ({target.n_vocab} tokens); pick a draft from the target's model family "
            "or use --draft ngram"
        )


def check_k(k: int) -> int:
    if not isinstance(k, int) or isinstance(k, bool) or k < 1 or k > MAX_K:
        raise InvalidRequestError(f"draft tokens per round (K) must be an integer in [1, {MAX_K}], got {k!r}")
    return k


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
        self.target = target
        self.chat_template_override = chat_template
        self.tokenizer = tokenizer
        self.drafters = drafters
        if draft not in drafters:
            raise InvalidRequestError(f"no drafter {draft!r}; this engine has {sorted(drafters)}")
        self.default_draft = draft
        self.default_k = check_k(k)
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls,
        target: str,
        draft: str | None = "ngram",
        *,
        k: int = DEFAULT_K,
        n_ctx: int = 4096,
        threads: int | None = None,
        ngram_max: int = 4,
        ngram_min: int = 2,
        chat_template: str | None = None,
    ) -> "Engine":
        """target: a model name or path. draft: "ngram", "none", or a draft model name or path."""
        check_k(k)
        target_model = LlamaModel(model_store.resolve(target), n_ctx=n_ctx, threads=threads, name=str(target))
        drafters: dict[str, Drafter] = {"none": NoDrafter(), "ngram": NgramDrafter(ngram_max, ngram_min)}
        draft = draft or "none"
        if draft not in ("none", "ngram"):
            draft_model = LlamaModel(model_store.resolve(draft), n_ctx=n_ctx, threads=threads, name=str(draft))
            check_vocab(target_model, draft_model)
            drafters["model"] = ModelDrafter(draft_model)
            draft = "model"
        return cls(
            LocalTarget(target_model), target_model, drafters, draft=draft, k=k, chat_template=chat_template
        )

    # ---- requests ---------------------------------------------------------------------------------------
    @cached_property
    def chat_template(self) -> ChatTemplate:
        return ChatTemplate.for_model(self.tokenizer, self.chat_template_override)

    def chat_prompt(self, messages: Sequence[Mapping]) -> list[int]:
        """Chat messages rendered with the model's template, as prompt tokens."""
        text = self.chat_template.render(messages, add_generation_prompt=True)
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
        name = draft or self.default_draft
        if name not in self.drafters:
            raise InvalidRequestError(f"no drafter {name!r}; this engine has {sorted(self.drafters)}")
        return FixedPolicy(self.drafters[name], check_k(k if k is not None else self.default_k))

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
        **sampling_kwargs,
    ) -> Iterator[GenerationResponse]:
        """Yield text pieces as tokens are accepted. Bad input raises here, before anything streams; the
        engine is held from the first step of the stream to its end."""
        return self._run(*self._prepare(prompt, max_tokens, sampling, draft, k, sampling_kwargs),
                         max_tokens=max_tokens, stop=stop, top_logprobs=top_logprobs)

    def generate(self, prompt: str | Sequence[int], **kwargs) -> GenerationResult:
        return collect(self.stream(prompt, **kwargs))

    def _prepare(self, prompt, max_tokens, sampling, draft, k, sampling_kwargs):
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise InvalidRequestError(f"max_tokens must be a positive integer, got {max_tokens!r}")
        sampling = sampling or SamplingParams.make(**sampling_kwargs)
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
            "n_ctx": self.target.n_ctx,
        }
