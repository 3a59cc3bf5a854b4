"""The library's front door: a target, its drafters and the request-level checks, behind one lock.

    engine = Engine.load(target="gemma-3-270m-q8_0", draft="gemma-3-270m", k=4)
    result = engine.generate("Hello", max_tokens=32)

One engine serves one request at a time (one KV sequence per model); the server queues requests in front.
"""

from __future__ import annotations

import logging
import os
import threading
from functools import cached_property
from typing import Iterator, Mapping, Sequence

from quickdraft import model_store
from quickdraft.chat_template import ChatTemplate
from quickdraft.controller import DEFAULT_MAX_K as AUTO_MAX_K
from quickdraft.controller import AdaptiveController, MachineModel
from quickdraft.drafters import Drafter, ModelDrafter, NgramDrafter, NoDrafter
from quickdraft.errors import ContextLengthError, IncompatibleVocabError, InvalidRequestError
from quickdraft.generate import GenerationResponse, GenerationResult, collect, stream_generate
from quickdraft.llama_model import LlamaModel
from quickdraft.node import is_node_url
from quickdraft.policy import FixedPolicy, Policy
from quickdraft.sampling import SamplingParams
from quickdraft.target import LocalTarget, Target

DRAFT_CHOICES = ("auto", "none", "ngram", "model")  # auto: the adaptive controller picks among the others
DEFAULT_K = 4
log = logging.getLogger("quickdraft")
MAX_K = 32


def check_vocab(target: LlamaModel, draft: LlamaModel) -> None:
    """Refuse a draft whose vocabulary is not the target's: its token ids would mean other strings."""
    if target.n_vocab != draft.n_vocab or target.vocab_fingerprint != draft.vocab_fingerprint:
        raise IncompatibleVocabError(
            f"draft model {draft.name} ({draft.n_vocab} tokens) does not share the vocabulary of target "
            f"model {target.name} ({target.n_vocab} tokens); pick a draft from the target's model family "
            "or use --draft ngram"
        )


def exact_max_k(model: LlamaModel, k: int) -> int:
    """The largest K whose verification batch (K + 1 tokens) reproduces one-by-one decoding bit for bit on
    this machine (LlamaModel.max_exact_batch), remembered per model file and llama.cpp build."""
    import json
    from importlib.metadata import version

    st = model.path.stat()
    key = f"{model.path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{version('llama-cpp-python')}|{k + 1}"
    cache = model_store.cache_dir() / "exact-batch.json"
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        known[key] = model.max_exact_batch(k + 1)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, indent=1))
        os.replace(tmp, cache)
    exact_k = known[key] - 1
    if exact_k < k:
        log.warning(
            "%s: llama.cpp's kernels here verify at most %d tokens per batch bit-exactly; K is capped at %d so "
            "the output stays the target's own (Engine.load(exact=False) lifts the cap)", model.name, exact_k + 1, exact_k
        )
    return exact_k


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
        ngram_min: int = 2,
        chat_template: str | None = None,
        exact: bool = True,
    ) -> "Engine":
        """target: a model name or path. draft: "auto" (adaptive, over n-gram and the draft model
        quickdraft.hardware picks for the target, if any), "ngram", "none", or a draft model name or path.
        Either may be node://HOST:PORT, a `quickdraft node` (quickdraft.node): the same interfaces, remote.
        exact: cap K to the batch size this machine's kernels verify bit-exactly (exact_max_k); False lifts
        the cap (faster on some quantizations, but greedy output may then differ from the target alone's)."""
        check_k(k)
        if is_node_url(target):  # verified on the node; tokenized here with its vocabulary
            from quickdraft.node import open_target

            target_backend, target_model = open_target(target)
            if exact and target_backend.max_exact_k is not None:
                target_backend.max_k = target_backend.max_exact_k
        else:
            target_model = LlamaModel(model_store.resolve(target), n_ctx=n_ctx, threads=threads, name=str(target))
            target_backend = LocalTarget(target_model)
            if exact:
                probed = max(k, AUTO_MAX_K)
                target_backend.max_k = exact_max_k(target_model, probed)
                # A model whose kernels round a batch differently from one token also gives a different first
                # token after a cached prefix than after a fresh prefill: it gets no prompt cache either.
                target_backend.fresh_prefill = target_backend.max_k < probed
        drafters: dict[str, Drafter] = {"none": NoDrafter(), "ngram": NgramDrafter(ngram_max, ngram_min)}
        draft = draft or "none"
        draft_model_name = draft if draft not in ("auto", "none", "ngram") else None
        if draft == "auto" and not is_node_url(target):
            from quickdraft.hardware import pick_draft

            draft_model_name = pick_draft(str(target))
        if is_node_url(draft_model_name):
            from quickdraft.node import open_drafter

            drafters["model"] = open_drafter(draft_model_name, vocab_fingerprint=target_model.vocab_fingerprint)
            draft = "model"
        elif draft_model_name:
            draft_model = LlamaModel(
                model_store.resolve(draft_model_name), n_ctx=n_ctx, threads=threads, name=str(draft_model_name)
            )
            check_vocab(target_model, draft_model)
            drafters["model"] = ModelDrafter(draft_model)
            if draft != "auto":
                draft = "model"
        return cls(
            target_backend, target_model, drafters, draft=draft, k=k, chat_template=chat_template
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
        """The drafter and k for one request. For auto, k (if given) caps the k it may choose. Either way
        k never exceeds what the target verifies exactly (see exact_max_k)."""
        name = draft or self.default_draft
        if name != "auto" and name not in self.drafters:
            raise InvalidRequestError(f"no drafter {name!r}; this engine has {sorted(self.drafters)}")
        if name == "auto":
            k = check_k(k) if k else AUTO_MAX_K
        else:
            k = check_k(k if k is not None else self.default_k)
        exact_k = getattr(self.target, "max_k", MAX_K)
        none = self.drafters.get("none") or NoDrafter()
        if exact_k < 1:  # no batch verifies exactly here: speculation would change the output
            return FixedPolicy(none, 1)
        if name == "auto":
            speculative = [d for n, d in self.drafters.items() if n != "none"]
            return AdaptiveController(speculative, none, self.machine, max_k=min(k, exact_k))
        return FixedPolicy(self.drafters[name], min(k, exact_k))

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
            if getattr(self.target, "fresh_prefill", False):
                self.target.model.reset()
            yield from stream_generate(self.target, self.tokenizer, policy, tokens, sampling, **kwargs)

    def describe(self) -> dict:
        return {
            "target": self.target.name,
            "drafters": sorted(self.drafters),
            "draft": self.default_draft,
            "k": self.default_k,
            "max_exact_k": getattr(self.target, "max_k", None),
            "auto": self.machine.costs.describe(),
            "n_ctx": self.target.n_ctx,
        }
