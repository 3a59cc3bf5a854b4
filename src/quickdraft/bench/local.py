"""Configurations run in this process: one engine holds the target and every drafter the bench needs, so
all configurations share the same loaded models. Every model's KV cache is emptied before each generation,
so no configuration reuses the prompt another one just read."""

from __future__ import annotations

from quickdraft import model_store
from quickdraft.bench.memory import PeakRSS
from quickdraft.bench.prompts import BenchPrompt
from quickdraft.bench.records import Config, Run
from quickdraft.drafters import Drafter, ModelDrafter, NgramDrafter, NoDrafter
from quickdraft.engine import AUTO_MAX_K, Engine, check_vocab, exact_max_k
from quickdraft.errors import QuickdraftError
from quickdraft.llama_model import LlamaModel
from quickdraft.target import LocalTarget


def build_engine(
    target: str, draft_models: list[str], *, n_ctx: int = 4096, threads: int | None = None,
    chat_template: str | None = None, exact: bool = True, max_k: int = AUTO_MAX_K,
) -> Engine:
    """An engine with the drafters none, ngram and one per draft model (named by the model's name). With
    `exact`, K is capped as Engine.load caps it (quickdraft.engine.exact_max_k), so the bench measures what
    users get; the cap is engine.target.max_k."""
    target_model = LlamaModel(model_store.resolve(target), n_ctx=n_ctx, threads=threads, name=target)
    drafters: dict[str, Drafter] = {"none": NoDrafter(), "ngram": NgramDrafter()}
    for name in draft_models:
        model = LlamaModel(model_store.resolve(name), n_ctx=n_ctx, threads=threads, name=name)
        check_vocab(target_model, model)
        drafters[name] = ModelDrafter(model)
    target_backend = LocalTarget(target_model)
    if exact:
        target_backend.max_k = exact_max_k(target_model, max(max_k, AUTO_MAX_K))
    return Engine(target_backend, target_model, drafters, draft="none", chat_template=chat_template)


def reset_caches(engine: Engine) -> None:
    """Empty the KV cache of every model the engine runs in this process."""
    for part in (engine.target, *engine.drafters.values()):
        model = getattr(part, "model", None)
        if isinstance(model, LlamaModel):
            model.reset()


class LocalBackend:
    def __init__(self, engine: Engine, *, temperature: float = 0.0, seed: int = 0):
        self.engine = engine
        self.temperature, self.seed = temperature, seed

    def run(self, config: Config, prompt: BenchPrompt, turn: int, messages: list[dict], max_tokens: int) -> Run:
        record = Run(config.name, prompt.id, prompt.category, turn)
        try:
            tokens = self.engine.chat_prompt(messages)
            reset_caches(self.engine)
            with PeakRSS() as peak:
                result = self.engine.generate(
                    tokens, max_tokens=max_tokens, draft=config.draft, k=config.k,
                    temperature=self.temperature, seed=self.seed,
                )
        except QuickdraftError as e:
            record.error = str(e)
            return record
        s = result.stats
        record.prompt_tokens = s.prompt_tokens
        record.completion_tokens = s.completion_tokens
        record.seconds = s.total_seconds
        record.ttft_seconds = s.ttft_seconds
        record.rounds, record.drafted, record.accepted = s.rounds, s.drafted, s.accepted
        record.choices = dict(s.choices)
        record.peak_rss_bytes = peak.bytes
        record.text = result.text
        record.tokens = list(result.tokens)
        record.finish_reason = result.finish_reason
        return record
