"""Configurations run in this process: one engine holds the target and every drafter the bench needs, so
all configurations share the same loaded models. Every model's KV cache is emptied before each generation,
so no configuration reuses the prompt another one just read."""

from __future__ import annotations

from quickdraft.bench.memory import PeakRSS
from quickdraft.bench.prompts import BenchPrompt
from quickdraft.bench.records import Config, Run
from quickdraft.engine import Engine
from quickdraft.errors import QuickdraftError
from quickdraft.llama_model import LlamaModel
from quickdraft.loading import load_drafter, load_target, standard_drafters
from quickdraft.placement import Placement, resolve as resolve_placement


def build_engine(
    target: str, draft_models: list[str], *, n_ctx: int = 4096, threads: int | None = None,
    chat_template: str | None = None, exact: bool = True, placement: Placement | None = None,
) -> Engine:
    """An engine with the drafters none, ngram and one per draft model (named by the model's name), loaded
    as Engine.load loads them (quickdraft.loading), so the bench measures what users get: with `exact`, K
    is capped to engine.target.max_k. placement: as Engine.load's; every draft model gets the draft's."""
    on_target, on_draft = resolve_placement(placement, target=target, draft=next(iter(draft_models), None),
                                            n_ctx=n_ctx, threads=threads)
    target_backend, tokenizer = load_target(target, n_ctx=n_ctx, threads=on_target.threads, exact=exact,
                                            gpu_layers=on_target.gpu_layers, main_gpu=on_target.main_gpu)
    drafters = standard_drafters()
    for name in draft_models:
        drafters[name] = load_drafter(name, tokenizer, n_ctx=n_ctx, threads=on_draft.threads, exact=exact,
                                      gpu_layers=on_draft.gpu_layers, main_gpu=on_draft.main_gpu)
    return Engine(target_backend, tokenizer, drafters, draft="none", chat_template=chat_template)


def reset_caches(engine: Engine) -> None:
    """Empty the KV cache of every model the engine runs in this process."""
    for part in (engine.target, *engine.drafters.values()):
        model = getattr(part, "model", None)  # local targets and model drafters have one; others don't
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
        record.decode_tokens = max(0, s.completion_tokens - 1)
        record.decode_seconds = s.total_seconds - s.ttft_seconds
        record.rounds, record.drafted, record.accepted = s.rounds, s.drafted, s.accepted
        record.choices = dict(s.choices)
        if config.draft == "auto":  # why auto chose what it did
            record.learnt_costs = self.engine.machine.costs.describe()
        record.peak_rss_bytes = peak.bytes
        record.text = result.text
        record.tokens = list(result.tokens)
        record.finish_reason = result.finish_reason
        return record
