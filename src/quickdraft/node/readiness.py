"""Start in any order: wait, with backoff and a deadline, for the nodes and RPC workers a coordinator needs.

`serve` (and `quickdraft cluster up`) may start before the processes it uses: a target node still loading its
model, an rpc-server not started yet. `wait_until_ready` probes each needed backend until all answer, trying
again after 0.25 s, doubling up to 5 s, and gives up after `wait` seconds with the last reason. What cannot
get better by waiting (a wrong node key, another protocol or llama.cpp version) fails at once.

Only the target's backends are waited for. A draft node that is down at start is no reason to wait: the
engine starts with the target alone and the draft is tried again in the background (quickdraft.node.fallback).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from quickdraft.errors import NodeUnavailableError, QuickdraftError
from quickdraft.node import is_node_url

log = logging.getLogger("quickdraft.node")

FIRST_RETRY, MAX_RETRY = 0.25, 5.0
LOG_EVERY = 60.0  # seconds between "waiting for" lines while nothing changes


class BackendsNotReady(QuickdraftError):
    """A needed node or RPC worker did not come up within the wait."""


class NotYet(Exception):
    """A backend that is not up yet, but may be soon (nothing listens there yet)."""


@dataclass
class Backend:
    name: str  # "target node node://HOST:PORT", "RPC worker HOST:PORT"
    probe: Callable[[], None]  # raises NotYet (try again later) or any other error (give up)


def node_backend(url: str, role: str = "target") -> Backend:
    from quickdraft.node.auth import public_url
    from quickdraft.node.client import NodeClient

    def probe() -> None:
        client = NodeClient(url, role=role, connect_timeout=2.0)
        try:
            client.connect()  # the node protocol's checks at connect: key, protocol version, role
        except NodeUnavailableError as e:
            raise NotYet(str(e)) from None
        finally:
            client.close()

    return Backend(f"{role} node {public_url(url)}", probe)


def worker_backend(endpoint: str) -> Backend:
    from quickdraft.node.rpc import RpcWorkerUnreachable, check_workers

    def probe() -> None:
        try:
            check_workers([endpoint])  # its RPC protocol version, before llama.cpp connects
        except RpcWorkerUnreachable as e:
            raise NotYet(str(e)) from None

    return Backend(f"RPC worker {endpoint}", probe)


def needed_backends(target: str, rpc_servers: Sequence[str] = ()) -> list[Backend]:
    """What a target spec needs up before it can load: its node, or its RPC workers."""
    if is_node_url(target):
        return [node_backend(target, "target")]
    return [worker_backend(e) for e in rpc_servers]


def wait_until_ready(backends: Sequence[Backend], wait: float,
                     on_change: Callable[[dict[str, str]], None] = lambda waiting: None) -> None:
    """Probe until every backend answers. `on_change` gets {name: why not yet} whenever that changes (the
    server's /health shows it). BackendsNotReady after `wait` seconds; other errors at once."""
    deadline = time.monotonic() + wait
    waiting = {b.name: "not probed yet" for b in backends}
    on_change(dict(waiting))
    delay = FIRST_RETRY
    logged: tuple[set[str], float] = (set(), 0.0)  # what the last "waiting for" line named, and when
    while True:
        for backend in backends:
            if backend.name not in waiting:
                continue
            try:
                backend.probe()
            except NotYet as e:
                waiting[backend.name] = str(e)
            else:
                del waiting[backend.name]
                log.info("%s is up", backend.name)
        on_change(dict(waiting))
        if not waiting:
            return
        left = deadline - time.monotonic()
        if left <= 0:
            raise BackendsNotReady(
                f"gave up after waiting {wait:g} s for " + "; ".join(f"{n}: {why}" for n, why in waiting.items())
                + " (start them, or wait longer with --wait SECONDS / nodes.wait)"
            )
        if set(waiting) != logged[0] or time.monotonic() - logged[1] >= LOG_EVERY:  # not every retry
            log.info("waiting for %s (%.0f s left)", ", ".join(waiting), left)
            logged = (set(waiting), time.monotonic())
        time.sleep(min(delay, left))
        delay = min(delay * 2, MAX_RETRY)
