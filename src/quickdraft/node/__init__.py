"""Draft and target as separate processes (nodes), possibly on separate machines, that exchange token ids.

    quickdraft node --model gemma-3-270m-q8_0 --role target --port 8471     # where the memory is
    quickdraft node --model gemma-3-270m --role draft --port 8472           # on the small fast device
    Engine.load("node://10.0.0.2:8471", draft="node://127.0.0.1:8472")      # the coordinator

The pieces, one file each:
- protocol.py: the messages and their encoding (MessagePack over WebSocket);
- wire.py: WebSocket on a blocking socket, read by the thread that waits (no thread hand-offs);
- service.py / server.py: the node: sessions over one model / the WebSocket server and `quickdraft node`;
- client.py: a checked connection to a node with deadlines;
- auth.py: the node key, proven with HMAC challenge-response at connect;
- readiness.py: waiting, with backoff, for a target node or RPC workers (start in any order);
- remote.py: `RemoteTarget` and `RemoteDrafter`, the engine's Target and Drafter over the wire;
- pipeline.py: drafting round n+1 while the target verifies round n;
- fallback.py: a draft node that fails leaves the target alone, and is used again when it is back;
- vocab.py: the coordinator's tokenizer, the target's vocabulary loaded here without weights;
- rpc.py: llama.cpp rpc-server workers holding the target's layers, their version probe, `quickdraft rpc-worker`;
- launch.py: `quickdraft node` processes for tests and benchmarks (pinned to cores, in namespaces);
- linkemu.py / bench.py: a delayed, rate-limited link in a network namespace, and `quickdraft node-bench`;
- bytecount.py: bytes per token through llama.cpp RPC against the node protocol, counted on the sockets;
- cli.py: the `node`, `rpc-worker` and `node-bench` subcommands.

docs/nodes.md has the protocol, the fault behaviour and the measured figures.
"""

from __future__ import annotations

SCHEME = "node://"


def is_node_url(spec: object) -> bool:
    """True for "node://HOST:PORT..." (a light check: importing this package loads nothing else)."""
    return isinstance(spec, str) and spec.startswith(SCHEME)


def open_target(url: str):
    """(target, tokenizer) for node://HOST:PORT: fails now, clearly, if the node is down or incompatible."""
    from quickdraft.node.remote import RemoteTarget

    target = RemoteTarget(url)
    return target, target.tokenizer()


def open_drafter(url: str, *, vocab_fingerprint: str):
    """The drafter for a draft node: pipelined unless ?pipeline=0, and falling back to the target alone
    while the node is unavailable. A node that is up must share the target's vocabulary (else an error now);
    a node that is down now is not an error: the target runs alone and the node is tried again, with
    backoff, until it comes up (start in any order)."""
    import logging

    from quickdraft.errors import NodeUnavailableError
    from quickdraft.node.fallback import FallbackDrafter
    from quickdraft.node.pipeline import PipelinedDrafter
    from quickdraft.node.protocol import parse_node_url
    from quickdraft.node.remote import RemoteDrafter

    remote = RemoteDrafter(url, vocab_fingerprint=vocab_fingerprint)
    down = None
    try:
        remote.connect()
    except NodeUnavailableError as e:
        down = e
    pipelined = parse_node_url(url)[2].get("pipeline", "1").lower() not in ("0", "false", "off", "no")
    inner = PipelinedDrafter(remote) if pipelined else remote
    drafter = FallbackDrafter(inner, remote.url.split("?")[0])
    if down is not None:
        logging.getLogger("quickdraft.node").warning(
            "draft node %s is not up yet (%s): the target runs alone until it is", remote.url, down)
        drafter.mark_down(down)
    return drafter


__all__ = ["is_node_url", "open_drafter", "open_target"]
