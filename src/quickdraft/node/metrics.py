"""Prometheus counters for remote nodes, in prometheus_client's default registry (the server's /metrics
exports them). Labelled by the node's address."""

from __future__ import annotations

from prometheus_client import Counter

DRAFT_FAILURES = Counter(
    "quickdraft_draft_failures_total",
    "Calls to a draft node that failed (down, timed out, refused); generation went on with the target alone",
    ["node"],
)
DRAFT_FALLBACK_ROUNDS = Counter(
    "quickdraft_draft_fallback_rounds_total",
    "Rounds run on the target alone because the draft node was unavailable",
    ["node"],
)
TARGET_FAILURES = Counter(
    "quickdraft_target_failures_total",
    "Requests failed because the target node was unreachable, dropped the connection or timed out",
    ["node"],
)
SESSIONS_RECREATED = Counter(
    "quickdraft_node_sessions_recreated_total",
    "Node sessions re-created from the coordinator's token history (after a node restart or expiry)",
    ["node", "role"],
)
