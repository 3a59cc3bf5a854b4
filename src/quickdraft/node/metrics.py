"""Prometheus counters for remote nodes, in prometheus_client's default registry (the server's /metrics
exports them). Labelled by node, but never by its address: /metrics is open to anyone who can reach the
server, and where its nodes are is none of their business. A node's label is `node-1`, `node-2`, ... in the
order this process first counted it; the log says once which address each label stands for.

Callers pass the node's address as the label (`DRAFT_FAILURES.labels(url).inc()`); `node_label` turns it into
the one exported.
"""

from __future__ import annotations

import logging
import threading

from prometheus_client import Counter

log = logging.getLogger("quickdraft.node")

_labels: dict[str, str] = {}
_labels_lock = threading.Lock()


def node_label(url: str) -> str:
    """The label /metrics shows for the node at `url` (node-N), the same for the same address."""
    from quickdraft.node.auth import public_url

    address = public_url(url)
    with _labels_lock:
        label = _labels.get(address)
        if label is None:
            label = _labels[address] = f"node-{len(_labels) + 1}"
            log.info("%s is %s in /metrics", address, label)
    return label


class _ByNode:
    """A Counter labelled by node (then any other labels), whose `labels(address, ...)` exports node_label."""

    def __init__(self, counter: Counter):
        self.counter = counter

    def labels(self, node: str, *more: str):
        return self.counter.labels(node_label(node), *more)


DRAFT_FAILURES = _ByNode(Counter(
    "quickdraft_draft_failures_total",
    "Calls to a draft node that failed (down, timed out, refused); generation went on with the target alone",
    ["node"],
))
DRAFT_FALLBACK_ROUNDS = _ByNode(Counter(
    "quickdraft_draft_fallback_rounds_total",
    "Rounds run on the target alone because the draft node was unavailable",
    ["node"],
))
TARGET_FAILURES = _ByNode(Counter(
    "quickdraft_target_failures_total",
    "Requests failed because the target node was unreachable, dropped the connection or timed out",
    ["node"],
))
SESSIONS_RECREATED = _ByNode(Counter(
    "quickdraft_node_sessions_recreated_total",
    "Node sessions re-created from the coordinator's token history (after a node restart or expiry)",
    ["node", "role"],
))
