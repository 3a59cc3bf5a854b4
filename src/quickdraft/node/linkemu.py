"""A real network link on one machine: a network namespace joined to this one by a veth pair, shaped to a
given delay and rate. The target node runs inside it; the coordinator reaches it over the veth pair.

    with Link(delay_ms=2, rate="1gbit") as link:
        node = NodeProcess(..., host="0.0.0.0", netns=link.namespace).start()
        host, port = link.expose(node.port)     # the address the coordinator dials

Shaping: `tc qdisc ... netem delay 2ms rate 1gbit` on the namespace's end of the pair when the kernel has
netem. Kernels without it (sch_netem not built, as in some VMs) get the rate from `tbf` on both ends, and the
delay from a relay process inside the namespace that holds every chunk coming back from the node for the
delay before passing it on: the same 2 ms added to each round trip, added in user space. `Link.shaping` says
which one is in force.

Needs root and iproute2. The namespace, the veth pair and the relay are removed on exit, also after errors.
Addresses: 10.213.N.1 (this side) and 10.213.N.2 (the namespace), /30, N from the process id; nothing else
is touched.
"""

from __future__ import annotations

import argparse
import heapq
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from typing import Callable


class LinkUnavailable(Exception):
    """Namespaces cannot be made here (not root, no iproute2, or a sandbox that forbids them)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


class Link:
    def __init__(self, delay_ms: float = 2.0, rate: str = "1gbit"):
        self.delay_ms, self.rate = delay_ms, rate
        n = os.getpid() % 250 + 1
        self.namespace = f"qdlink{os.getpid()}"
        self.host_if, self.ns_if = f"qdh{os.getpid()}"[:15], f"qdn{os.getpid()}"[:15]
        self.host_ip, self.ns_ip = f"10.213.{n}.1", f"10.213.{n}.2"
        self.shaping = ""
        self._relays: list[subprocess.Popen] = []
        self._up = False

    # ---- life -------------------------------------------------------------------------------------------
    def __enter__(self) -> "Link":
        self.up()
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    def up(self) -> None:
        if os.geteuid() != 0:
            raise LinkUnavailable("network namespaces need root")
        if not shutil.which("ip") or not shutil.which("tc"):
            raise LinkUnavailable("iproute2 (ip, tc) is not installed: apt-get install iproute2")
        try:
            _ip("netns", "add", self.namespace)
        except subprocess.CalledProcessError as e:
            raise LinkUnavailable(f"cannot create a network namespace: {e.stderr.strip()}") from None
        self._up = True
        try:
            _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
            _ip("link", "set", self.ns_if, "netns", self.namespace)
            _ip("addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
            _ip("link", "set", self.host_if, "up")
            _ip("-n", self.namespace, "addr", "add", f"{self.ns_ip}/30", "dev", self.ns_if)
            _ip("-n", self.namespace, "link", "set", self.ns_if, "up")
            _ip("-n", self.namespace, "link", "set", "lo", "up")
            self._shape()
        except BaseException:
            self.down()
            raise

    def _shape(self) -> None:
        tc_ns = ["tc", "-n", self.namespace, "qdisc", "add", "dev", self.ns_if, "root"]
        netem = subprocess.run(tc_ns + ["netem", "delay", f"{self.delay_ms}ms", "rate", self.rate],
                               capture_output=True, text=True)
        if netem.returncode == 0:
            self.shaping = f"tc netem delay {self.delay_ms}ms rate {self.rate}"
            return
        for cmd in (tc_ns, ["tc", "qdisc", "add", "dev", self.host_if, "root"]):
            subprocess.run(cmd + ["tbf", "rate", self.rate, "burst", "256kb", "latency", "50ms"],
                           check=True, capture_output=True, text=True)
        self.shaping = (f"tbf rate {self.rate} on both ends; the kernel has no netem "
                        f"({netem.stderr.strip() or 'unknown qdisc'}), so a relay in the namespace adds "
                        f"{self.delay_ms} ms to every reply")

    def down(self) -> None:
        for relay in self._relays:
            if relay.poll() is None:
                relay.kill()
                relay.wait(timeout=10)
        self._relays.clear()
        if self._up:
            _ip("link", "del", self.host_if, check=False)  # removes both ends
            _ip("netns", "del", self.namespace, check=False)
            self._up = False

    # ---- use --------------------------------------------------------------------------------------------
    @property
    def uses_relay(self) -> bool:
        return self.shaping.startswith("tbf")

    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.namespace]

    def expose(self, port: int, timeout: float = 30.0) -> tuple[str, int]:
        """The address this side dials for a server listening on `port` inside the namespace."""
        if not self.uses_relay:
            return self.ns_ip, port
        cmd = self.exec_prefix() + [sys.executable, "-m", "quickdraft.node.linkemu", "--listen",
                                    f"{self.ns_ip}:0", "--to", f"127.0.0.1:{port}", "--delay-ms", str(self.delay_ms)]
        relay = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        self._relays.append(relay)
        line = _read_line(relay, timeout)
        if not line.startswith("relaying "):
            raise RuntimeError(f"the delay relay did not start: {line!r}")
        host, _, relay_port = line.split()[1].rpartition(":")
        return host, int(relay_port)


def _read_line(proc: subprocess.Popen, timeout: float) -> str:
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return out[0].strip() if out else ""


# ---- the delay relay (runs inside the namespace) ----------------------------------------------------------
def pump(src: socket.socket, dst: socket.socket, on_chunk: Callable[[int], None] | None = None) -> None:
    """Forward src -> dst until either side closes, then shut both down. on_chunk(n) sees each chunk's size."""
    try:
        while data := src.recv(1 << 16):
            if on_chunk is not None:
                on_chunk(len(data))
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _delayed_pump(src: socket.socket, dst: socket.socket, delay: float) -> None:
    """Forward src -> dst, each chunk `delay` seconds after it arrived (order kept, chunks not serialised
    behind each other's delay: what a link's propagation delay does)."""
    queue: list[tuple[float, int, bytes]] = []
    ready = threading.Condition()
    seq = 0
    done = False

    def send() -> None:
        while True:
            with ready:
                while not queue and not done:
                    ready.wait()
                if not queue:
                    return
                due, _, data = queue[0]
                wait = due - time.monotonic()
                if wait > 0:
                    ready.wait(wait)
                    continue
                heapq.heappop(queue)
            try:
                dst.sendall(data)
            except OSError:
                return

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        while data := src.recv(1 << 16):
            with ready:
                seq += 1
                heapq.heappush(queue, (time.monotonic() + delay, seq, data))
                ready.notify()
    except OSError:
        pass
    with ready:
        done = True
        ready.notify()
    sender.join(timeout=5)
    for s in (src, dst):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def relay(listen: str, to: str, delay_ms: float) -> None:
    host, _, port = listen.rpartition(":")
    server = socket.create_server((host, int(port)))
    to_host, _, to_port = to.rpartition(":")
    print(f"relaying {host}:{server.getsockname()[1]} -> {to} (+{delay_ms} ms on replies)", flush=True)
    while True:
        client, _ = server.accept()
        upstream = socket.create_connection((to_host, int(to_port)))
        for s in (client, upstream):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=pump, args=(client, upstream), daemon=True).start()
        threading.Thread(target=_delayed_pump, args=(upstream, client, delay_ms / 1000), daemon=True).start()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="TCP relay adding a fixed delay to the replies")
    ap.add_argument("--listen", required=True)
    ap.add_argument("--to", required=True)
    ap.add_argument("--delay-ms", type=float, default=2.0)
    a = ap.parse_args()
    relay(a.listen, a.to, a.delay_ms)
