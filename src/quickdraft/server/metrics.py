"""What the server has done: Prometheus metrics for /metrics and running totals for /v1/quickdraft/status.

Both are fed from the same two places: `record_request` (the HTTP middleware, once per request) and
`record_generation` (the engine worker, once per finished or cancelled generation). Each app has its own
Prometheus registry, so two apps in one process do not share counters.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from quickdraft.stats import GenerationStats


@dataclass
class Totals:
    generations: int = 0
    cancelled: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    draft_seconds: float = 0.0
    verify_seconds: float = 0.0
    generation_seconds: float = 0.0  # time the engine spent generating, queue time left out
    choices: dict[str, int] = field(default_factory=dict)  # rounds per drafter choice ("ngram:4", "none", ...)

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def mean_accepted_per_round(self) -> float:
        return self.accepted / self.rounds if self.rounds else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.completion_tokens / self.generation_seconds if self.generation_seconds > 0 else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["acceptance_rate"] = self.acceptance_rate
        d["mean_accepted_per_round"] = self.mean_accepted_per_round
        d["tokens_per_second"] = self.tokens_per_second
        return d


class ServerMetrics:
    def __init__(self, queue_waiting=lambda: 0, queue_running=lambda: 0):
        self.started = time.time()
        self.totals = Totals()
        self._lock = threading.Lock()
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "quickdraft_requests", "HTTP requests, by route and status code", ["route", "status"], registry=r
        )
        self.request_seconds = Histogram(
            "quickdraft_request_seconds", "time to answer a generation request (to the last byte)", ["route"],
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300), registry=r,
        )
        self.generations = Counter("quickdraft_generations", "generations run by the engine", registry=r)
        self.cancelled = Counter(
            "quickdraft_generations_cancelled", "generations stopped because the client went away", registry=r
        )
        self.prompt_tokens = Counter("quickdraft_prompt_tokens", "prompt tokens processed", registry=r)
        self.completion_tokens = Counter("quickdraft_completion_tokens", "tokens generated", registry=r)
        self.rounds = Counter("quickdraft_rounds", "speculative rounds (one target pass each)", registry=r)
        self.drafted = Counter("quickdraft_drafted_tokens", "draft tokens proposed", registry=r)
        self.accepted = Counter("quickdraft_accepted_tokens", "draft tokens the target accepted", registry=r)
        self.draft_seconds = Counter("quickdraft_draft_seconds", "time spent drafting", registry=r)
        self.verify_seconds = Counter("quickdraft_verify_seconds", "time spent in target passes", registry=r)
        Gauge(
            "quickdraft_acceptance_rate", "accepted / drafted draft tokens since start", registry=r
        ).set_function(lambda: self.totals.acceptance_rate)
        Gauge("quickdraft_queue_depth", "requests waiting for the engine", registry=r).set_function(queue_waiting)
        Gauge("quickdraft_requests_running", "requests the engine is generating for", registry=r).set_function(
            queue_running
        )

    def record_request(self, route: str, status: int, seconds: float, *, generation: bool) -> None:
        self.requests.labels(route, str(status)).inc()
        if generation:
            self.request_seconds.labels(route).observe(seconds)

    def record_generation(self, stats: GenerationStats, cancelled: bool) -> None:
        """Called from the engine's worker thread."""
        with self._lock:
            t = self.totals
            t.generations += 1
            t.cancelled += int(cancelled)
            t.prompt_tokens += stats.prompt_tokens
            t.completion_tokens += stats.completion_tokens
            t.rounds += stats.rounds
            t.drafted += stats.drafted
            t.accepted += stats.accepted
            t.draft_seconds += stats.draft_seconds
            t.verify_seconds += stats.verify_seconds
            t.generation_seconds += stats.total_seconds
            for choice, rounds in getattr(stats, "choices", {}).items():
                t.choices[choice] = t.choices.get(choice, 0) + rounds
        self.generations.inc()
        if cancelled:
            self.cancelled.inc()
        self.prompt_tokens.inc(stats.prompt_tokens)
        self.completion_tokens.inc(stats.completion_tokens)
        self.rounds.inc(stats.rounds)
        self.drafted.inc(stats.drafted)
        self.accepted.inc(stats.accepted)
        self.draft_seconds.inc(stats.draft_seconds)
        self.verify_seconds.inc(stats.verify_seconds)

    def snapshot(self) -> dict:
        with self._lock:
            totals = self.totals.to_dict()
        return {"uptime_seconds": time.time() - self.started, "totals": totals}

    def exposition(self) -> bytes:
        """This server's metrics, then the process-wide ones (the node clients' fault counters live in
        prometheus_client's default registry)."""
        from quickdraft.node import metrics as _node_metrics  # noqa: F401  (registers the node counters)

        return generate_latest(self.registry) + generate_latest(REGISTRY)
