"""What the bench runs (`Config`) and what one generation measured (`Run`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Config:
    """One configuration. `backend` says where it runs ("local", "llama.cpp", "server"); each backend has
    one baseline (draft "none"), which the others of that backend are compared with."""

    name: str
    draft: str  # "none", "ngram", "auto", or a draft model name
    k: int | None = None
    backend: str = "local"

    @property
    def is_baseline(self) -> bool:
        return self.draft == "none"


@dataclass
class Run:
    """One generation: one configuration on one turn of one prompt."""

    config: str
    prompt_id: str
    category: str
    turn: int
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0  # request start to its last token (the prompt's prefill included)
    ttft_seconds: float | None = None  # request start to the first token (None: not measured)
    decode_tokens: int | None = None  # tokens after the first (None: not measured) ...
    decode_seconds: float | None = None  # ... and the time they took: decoding alone, the prompt's prefill left out
    rounds: int | None = None  # target passes (None: not reported by this backend)
    drafted: int | None = None
    accepted: int | None = None
    choices: dict[str, int] = field(default_factory=dict)  # auto's decisions: rounds per "drafter:k"
    peak_rss_bytes: int = 0
    text: str = ""
    tokens: list[int] | None = None  # the output token ids, where the backend gives them
    finish_reason: str = ""
    error: str | None = None
    repeat_seconds: list[float] = field(default_factory=list)  # every repeat's seconds (this run is the fastest)
    learnt_costs: dict | None = None  # auto: the engine's learnt costs after this run (MachineCosts.describe)

    @property
    def tokens_per_second(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return asdict(self)
