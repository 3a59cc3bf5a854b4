"""Per-request statistics of the speculative loop (and sums of them: `add`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    draft_seconds: float = 0.0
    verify_seconds: float = 0.0
    ttft_seconds: float = 0.0  # request start to the first emitted token (includes the prompt's prefill)
    total_seconds: float = 0.0
    drafter_rounds: dict[str, int] = field(default_factory=dict)  # rounds per drafter name (k > 0)
    choices: dict[str, int] = field(default_factory=dict)  # rounds per choice: "drafter:k", or "none"

    def add(self, other: "GenerationStats") -> None:
        """Add another request's counts and times to these (a running total; its rates stay totals over
        totals)."""
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if isinstance(mine, dict):
                for key, n in theirs.items():
                    mine[key] = mine.get(key, 0) + n
            else:
                setattr(self, f.name, mine + theirs)

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def mean_accepted_per_round(self) -> float:
        return self.accepted / self.rounds if self.rounds else 0.0

    @property
    def tokens_per_round(self) -> float:
        return self.completion_tokens / self.rounds if self.rounds else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.completion_tokens / self.total_seconds if self.total_seconds > 0 else 0.0

    @property
    def decode_tokens_per_second(self) -> float:
        """Tokens after the first, over the time after the first (the prompt's prefill left out)."""
        t = self.total_seconds - self.ttft_seconds
        return (self.completion_tokens - 1) / t if t > 0 and self.completion_tokens > 1 else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        for name in (
            "acceptance_rate",
            "mean_accepted_per_round",
            "tokens_per_round",
            "tokens_per_second",
            "decode_tokens_per_second",
        ):
            d[name] = getattr(self, name)
        return d
