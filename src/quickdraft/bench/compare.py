"""The output check: every output must equal the target-alone output of its backend (greedy; and for our
own engine also sampled, since every configuration draws each position's token from the same seed).

In this process the comparison is token for token (ours has the token ids). Through a server or llama.cpp
only text is there, and llama.cpp's programs may run a few tokens past max_tokens, so text outputs are
compared over their common length. A difference is never hidden or explained away here: it is listed with
its first differing position (see docs/exactness.md for why llama.cpp's CPU kernels can make a
batched verification round differently from one-token decoding on some weight types).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

from quickdraft.bench.records import Config, Run

EXCERPT = 40


@dataclass
class Mismatch:
    config: str
    baseline: str
    prompt_id: str
    category: str
    turn: int
    unit: str  # "token" or "char"
    position: int  # the first position where the outputs differ
    baseline_length: int
    output_length: int
    baseline_excerpt: str  # the text from the first differing character on
    output_excerpt: str

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        return (
            f"{self.config} on prompt {self.prompt_id} ({self.category}, turn {self.turn + 1}): first "
            f"difference at {self.unit} {self.position} of {self.baseline_length}: "
            f"{self.baseline} {self.baseline_excerpt!r} vs {self.output_excerpt!r}"
        )


def first_difference(expected: Sequence, got: Sequence) -> int | None:
    """The first index where two sequences differ (the shorter length if one extends the other), or None."""
    for i, (a, b) in enumerate(zip(expected, got)):
        if a != b:
            return i
    return None if len(expected) == len(got) else min(len(expected), len(got))


def first_difference_in_common(expected: Sequence, got: Sequence) -> int | None:
    """Like first_difference, over the common length only (an output that runs on is not a difference)."""
    n = min(len(expected), len(got))
    return first_difference(expected[:n], got[:n])


def compare(run: Run, base: Run, baseline: str) -> Mismatch | None:
    if run.tokens is not None and base.tokens is not None:
        unit, position = "token", first_difference(base.tokens, run.tokens)
        lengths = len(base.tokens), len(run.tokens)
    else:
        unit, position = "char", first_difference_in_common(base.text, run.text)
        lengths = len(base.text), len(run.text)
    if position is None:
        return None
    at = first_difference(base.text, run.text) or 0
    return Mismatch(
        run.config, baseline, run.prompt_id, run.category, run.turn, unit, position, *lengths,
        base.text[at: at + EXCERPT], run.text[at: at + EXCERPT],
    )


def baselines_by_backend(configs: Sequence[Config]) -> dict[str, str]:
    return {c.backend: c.name for c in configs if c.is_baseline}


def find_mismatches(runs: Sequence[Run], configs: Sequence[Config]) -> list[Mismatch]:
    """Every successful run that differs from the successful target-alone run of its backend, prompt and turn."""
    by_name = {c.name: c for c in configs}
    baselines = baselines_by_backend(configs)
    reference = {(r.config, r.prompt_id, r.turn): r for r in runs if r.error is None}
    found = []
    for run in runs:
        config = by_name.get(run.config)  # runs of configurations not being checked are skipped
        if config is None or config.is_baseline or run.error is not None or config.backend not in baselines:
            continue
        base = reference.get((baselines[config.backend], run.prompt_id, run.turn))
        if base is None:
            continue
        mismatch = compare(run, base, baselines[config.backend])
        if mismatch:
            found.append(mismatch)
    return found
