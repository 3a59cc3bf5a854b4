"""Per category and overall figures of each configuration, from its runs.

Rates are totals over totals (all tokens over all seconds), never means of per-prompt rates, so a long
generation weighs as much as its time. A turn counts only where every configuration of the backend ran it
without error, so each configuration is measured on exactly the prompts its baseline was.
Speedup = tokens/s over the target alone's tokens/s on the same backend, prompts and category. Each rate
comes twice: end to end (the prompt's prefill included, what a user waits for) and decode-only (tokens after
the first over the time after the first: what speculation changes).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

from quickdraft.bench.records import Config, Run

OVERALL = "overall"


@dataclass
class Figures:
    runs: int = 0
    tokens: int = 0
    seconds: float = 0.0
    tokens_per_second: float = 0.0
    speedup: float | None = None  # None for the baseline itself, or without one
    decode_tokens_per_second: float | None = None  # None: some run did not measure it
    decode_speedup: float | None = None
    acceptance_rate: float | None = None  # accepted / drafted (None: nothing drafted or not reported)
    tokens_per_round: float | None = None  # tokens emitted per target pass, the target's own included
    accepted_per_round: float | None = None  # draft tokens accepted per target pass
    ttft_seconds: float | None = None  # mean
    peak_rss_bytes: int = 0
    choices: dict[str, int] = field(default_factory=dict)
    vs_llamacpp: float | None = None  # our tokens/s over llama.cpp's, same drafter and K
    decode_vs_llamacpp: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def figures(runs: Sequence[Run]) -> Figures:
    f = Figures(runs=len(runs))
    if not runs:
        return f
    f.tokens = sum(r.completion_tokens for r in runs)
    f.seconds = sum(r.seconds for r in runs)
    f.tokens_per_second = f.tokens / f.seconds if f.seconds > 0 else 0.0
    if all(r.decode_seconds is not None for r in runs):
        seconds = sum(r.decode_seconds for r in runs)
        f.decode_tokens_per_second = sum(r.decode_tokens or 0 for r in runs) / seconds if seconds > 0 else None
    if all(r.drafted is not None for r in runs):
        drafted = sum(r.drafted for r in runs)
        accepted = sum(r.accepted or 0 for r in runs)
        f.acceptance_rate = accepted / drafted if drafted else None
        if all(r.rounds is not None for r in runs):
            rounds = sum(r.rounds for r in runs)
            f.tokens_per_round = f.tokens / rounds if rounds else None
            f.accepted_per_round = accepted / rounds if rounds else None
    ttfts = [r.ttft_seconds for r in runs if r.ttft_seconds is not None]
    f.ttft_seconds = sum(ttfts) / len(ttfts) if ttfts else None
    f.peak_rss_bytes = max(r.peak_rss_bytes for r in runs)
    for r in runs:
        for key, n in r.choices.items():
            f.choices[key] = f.choices.get(key, 0) + n
    return f


def complete_turns(runs: Iterable[Run], names: set[str]) -> set[tuple[str, int]]:
    """(prompt, turn) pairs that every configuration in `names` ran without error."""
    ok: dict[tuple[str, int], set[str]] = defaultdict(set)
    for r in runs:
        if r.error is None and r.config in names:
            ok[(r.prompt_id, r.turn)].add(r.config)
    return {key for key, done in ok.items() if done >= names}


def summarize(runs: Sequence[Run], configs: Sequence[Config]) -> dict[str, dict[str, Figures]]:
    """{config: {category or "overall": Figures}}, categories in the order the prompts came."""
    categories = list(dict.fromkeys(r.category for r in runs))
    out: dict[str, dict[str, Figures]] = {}
    for backend in dict.fromkeys(c.backend for c in configs):
        members = [c for c in configs if c.backend == backend]
        keep = complete_turns(runs, {c.name for c in members})
        for c in members:
            mine = [r for r in runs if r.config == c.name and (r.prompt_id, r.turn) in keep]
            table = {cat: figures([r for r in mine if r.category == cat]) for cat in categories}
            table[OVERALL] = figures(mine)
            out[c.name] = table
        add_speedups(out, members)
    add_vs_llamacpp(out, configs)
    return out


def add_speedups(out: dict[str, dict[str, Figures]], members: Sequence[Config]) -> None:
    baseline = next((c for c in members if c.is_baseline), None)
    if baseline is None:
        return
    for c in members:
        if c is baseline:
            continue
        for cat, f in out[c.name].items():
            base = out[baseline.name][cat]
            if f.runs:
                f.speedup = ratio(f.tokens_per_second, base.tokens_per_second)
                f.decode_speedup = ratio(f.decode_tokens_per_second, base.decode_tokens_per_second)


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def add_vs_llamacpp(out: dict[str, dict[str, Figures]], configs: Sequence[Config]) -> None:
    """Ours over llama.cpp's tokens/s for the configurations both ran (same drafter and K)."""
    theirs = {(c.draft, c.k if c.draft != "none" else None): c for c in configs if c.backend == "llama.cpp"}
    for c in configs:
        if c.backend != "local":
            continue
        twin = theirs.get((c.draft, c.k if c.draft != "none" else None))
        if twin is None:
            continue
        for cat, f in out[c.name].items():
            other = out[twin.name].get(cat)
            if other and f.runs:
                f.vs_llamacpp = ratio(f.tokens_per_second, other.tokens_per_second)
                f.decode_vs_llamacpp = ratio(f.decode_tokens_per_second, other.decode_tokens_per_second)
