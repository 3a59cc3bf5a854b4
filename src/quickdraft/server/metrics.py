"""What the server has done: Prometheus metrics for /metrics and running totals for /v1/quickdraft/status.

Both are fed from the same two places: `record_request` (the HTTP middleware, once per request) and
`record_generation` (the engine worker, once per finished or cancelled generation). Each app has its own
Prometheus registry, so two apps in one process do not share counters.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from quickdraft.stats import GenerationStats


@dataclass
class Totals:
    """Every generation since start: how many, how many were cancelled, and their statistics summed."""

    generations: int = 0
    cancelled: int = 0
    stats: GenerationStats = field(default_factory=GenerationStats)  # total_seconds: time spent generating

    def to_dict(self) -> dict:
        return {"generations": self.generations, "cancelled": self.cancelled, **self.stats.to_dict()}


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
        ).set_function(lambda: self.totals.stats.acceptance_rate)
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
            self.totals.generations += 1
            self.totals.cancelled += int(cancelled)
            self.totals.stats.add(stats)
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
