"""The bench loop: every configuration on a turn before the next turn, so drift of the machine (heat, other
processes) hits all configurations alike, A B C A B C, never all of A then all of B.

A multi-turn prompt is played as a conversation: turn 2 is asked after the target alone's own answer to
turn 1 (the first baseline's), so every configuration sees the same conversation whatever it answered.
Before measuring, each configuration generates a few tokens once (unrecorded) so none pays for cold caches.

With `repeat` > 1 each turn runs that many times per configuration (A B C A B C ...) and the fastest run is
kept: other processes only ever add time, so on a shared machine the fastest is the best estimate of each
configuration's own speed. Every repeat's seconds stay in `Run.repeat_seconds`.
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence

from quickdraft.bench.prompts import BenchPrompt
from quickdraft.bench.records import Config, Run

WARMUP_TOKENS = 8


class Backend(Protocol):
    def run(self, config: Config, prompt: BenchPrompt, turn: int, messages: list[dict], max_tokens: int) -> Run:
        """Generate once and measure it."""


def generations(prompts: Sequence[BenchPrompt], configs: Sequence[Config], repeat: int = 1) -> int:
    return sum(len(p.turns) for p in prompts) * len(configs) * repeat


def reference_config(configs: Sequence[Config]) -> Config:
    """Whose answers continue a conversation: the first target-alone configuration (else the first)."""
    return next((c for c in configs if c.is_baseline), configs[0])


def warm_up(prompts: Sequence[BenchPrompt], configs: Sequence[Config], backends: dict[str, Backend]) -> None:
    first = prompts[0]
    messages = [{"role": "user", "content": first.turns[0]}]
    for c in configs:
        backends[c.backend].run(c, first, 0, messages, WARMUP_TOKENS)


def run_bench(
    prompts: Sequence[BenchPrompt],
    configs: Sequence[Config],
    backends: dict[str, Backend],
    *,
    max_tokens: int,
    on_run: Callable[[Run], None] | None = None,
    warmup: bool = True,
    repeat: int = 1,
) -> list[Run]:
    if warmup:
        warm_up(prompts, configs, backends)
    reference = reference_config(configs)
    runs: list[Run] = []
    for prompt in prompts:
        history: list[dict] = []
        for turn, question in enumerate(prompt.turns):
            messages = history + [{"role": "user", "content": question}]
            tries: dict[str, list[Run]] = {c.name: [] for c in configs}
            for _ in range(repeat):
                for config in configs:
                    run = backends[config.backend].run(config, prompt, turn, messages, max_tokens)
                    tries[config.name].append(run)
                    if on_run:
                        on_run(run)
            kept = {name: fastest(attempts) for name, attempts in tries.items()}
            runs += kept.values()
            history = messages + [{"role": "assistant", "content": kept[reference.name].text}]
    return runs


def fastest(attempts: list[Run]) -> Run:
    """The fastest successful attempt (else the first), with every attempt's seconds."""
    ok = [r for r in attempts if r.error is None]
    best = min(ok, key=lambda r: r.seconds) if ok else attempts[0]
    best.repeat_seconds = [r.seconds for r in attempts]
    return best
