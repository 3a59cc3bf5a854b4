"""Bytes per generated token on the wire: llama.cpp RPC (the target's layers on an rpc-server) against the node
protocol (target and draft nodes exchanging token ids). Counted on the sockets, by a TCP relay in between
for RPC and by the node client's own byte counts for the node protocol.

    python -m quickdraft.node.bytecount --model smollm2-135m --tokens 32

Prints one JSON object. Loading the model over RPC (the weights sent to the worker) is counted apart from
generation. Everything runs on loopback with one thread per process.
"""

from __future__ import annotations

import argparse
import json
import socket
import threading

from quickdraft.node.linkemu import pump
from quickdraft.server.process import free_port

PROMPT = "Once upon a time, a lighthouse keeper named"


class CountingRelay:
    """127.0.0.1:PORT -> upstream, counting the bytes each way (`sent`: client to upstream)."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self.server = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"127.0.0.1:{self.server.getsockname()[1]}"
        self.sent = self.received = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def reset(self) -> None:
        with self._lock:
            self.sent = self.received = 0

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for src, dst, counter in ((client, upstream, "sent"), (upstream, client, "received")):
                threading.Thread(target=pump, args=(src, dst, self._counter(counter)), daemon=True).start()

    def _counter(self, name: str):
        def count(n: int) -> None:
            with self._lock:
                setattr(self, name, getattr(self, name) + n)

        return count

    def close(self) -> None:
        self.server.close()


def rpc_bytes(model: str, tokens: int, k: int) -> dict:
    """The target alone and speculative (n-gram drafts, K=k) with all layers on an rpc-server, counted."""
    import subprocess

    from quickdraft import Engine
    from quickdraft.node.rpc import start_worker, wait_for_port

    port = free_port()
    worker = start_worker("127.0.0.1", port, threads=1, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, worker)
        relay = CountingRelay(("127.0.0.1", port))
        engine = Engine.load(model, "ngram", k=k, threads=1, n_ctx=512, rpc_servers=[relay.endpoint])
        out = {"load_bytes": relay.sent + relay.received}
        for draft in ("none", "ngram"):
            relay.reset()
            result = engine.generate(PROMPT, max_tokens=tokens, draft=draft)
            n = len(result.tokens)
            out[draft] = {"tokens": n, "sent": relay.sent, "received": relay.received,
                          "bytes_per_token": round((relay.sent + relay.received) / n, 1)}
        engine.target.close()
        relay.close()
        return out
    finally:
        worker.terminate()
        worker.wait(timeout=15)


def node_bytes(model: str, tokens: int, k: int) -> dict:
    """Target and draft nodes (the same model), K=k, counted by the coordinator's node clients."""
    from quickdraft import Engine
    from quickdraft.node.launch import NodeProcess

    with NodeProcess(model, "target", ctx=512) as target, NodeProcess(model, "draft", ctx=512) as draft:
        engine = Engine.load(target.url, f"{draft.url}?pipeline=0", k=k)
        engine.generate(PROMPT, max_tokens=4)  # sessions opened, connections warm
        clients = [engine.target.client, engine.drafters["model"].inner.client]
        for c in clients:
            c.stats.clear()
        result = engine.generate(PROMPT, max_tokens=tokens)
        n = len(result.tokens)
        sent = sum(s.bytes_sent for c in clients for s in c.stats.values())
        received = sum(s.bytes_received for c in clients for s in c.stats.values())
        return {"tokens": n, "sent": sent, "received": received, "bytes_per_token": round((sent + received) / n, 1),
                "calls": {op: s.calls for c in clients for op, s in c.stats.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--k", type=int, default=4)
    args = parser.parse_args(argv)
    report = {"model": args.model, "k": args.k, "rpc": rpc_bytes(args.model, args.tokens, args.k),
              "node_protocol": node_bytes(args.model, args.tokens, args.k)}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
