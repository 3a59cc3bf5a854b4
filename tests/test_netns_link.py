"""The target across a real link: its node in a network namespace of its own, joined to this one by a veth
pair shaped to 2 ms and 1 Gbit (quickdraft.node.linkemu), the draft node on loopback beside the
coordinator. Output must be the target-alone output (throughput against loopback is `quickdraft node-bench`'s
figure, not a test).

Skipped, with the reason printed, only where network namespaces cannot be created.
"""

from __future__ import annotations

import pytest

from conftest import DRAFT, TARGET
from quickdraft import Engine
from quickdraft.node.bench import ping_ms
from quickdraft.node.launch import NodeProcess
from quickdraft.node.linkemu import Link, LinkUnavailable

PROMPTS = ["Describe a sunrise over the ocean.", "Write a limerick about a cat who codes."]
MAX_TOKENS = 32


@pytest.fixture(scope="module")
def link():
    link = Link(delay_ms=2.0, rate="1gbit")
    try:
        link.up()
    except LinkUnavailable as e:
        print(f"SKIP: {e}")
        pytest.skip(f"network namespaces cannot be created here: {e}")
    try:
        yield link
    finally:
        link.down()


@pytest.fixture(scope="module")
def nodes(link):
    key = "netns-link-test-key"  # a node listening off loopback needs one (quickdraft.node.auth)
    far = NodeProcess(TARGET, "target", host="0.0.0.0", netns=link.namespace, cpus="0",
                      env={"QUICKDRAFT_NODE_KEY": key})
    near = NodeProcess(TARGET, "target", cpus="0")
    draft = NodeProcess(DRAFT, "draft", cpus="1")
    try:
        for node in (far, near, draft):
            node.start()
        host, port = link.expose(far.port)
        yield f"node://{host}:{port}?key={key}", near.url, draft.url
    finally:
        for node in (far, near, draft):
            node.stop()


def test_the_link_is_a_link(link, nodes):
    far, near, _ = nodes
    assert far.startswith(f"node://{link.ns_ip}:")
    rtt_far, rtt_near = ping_ms(far, "target", 50), ping_ms(near, "target", 50)
    print(f"\nlink: {link.shaping}; ping {rtt_far:.2f} ms across it, {rtt_near:.3f} ms on loopback")
    assert 2.0 <= rtt_far < 20 and rtt_near < 2.0


def test_across_the_link_output_is_exact(nodes):
    """Greedy output over the link equals the target alone's. (Throughput over the link against loopback is a
    benchmark figure, not a test: `quickdraft node-bench` measures it.)"""
    far, near, draft = nodes
    local = Engine.load(TARGET, "none", threads=1)
    prompts = [local.chat_prompt([{"role": "user", "content": t}]) for t in PROMPTS]
    expected = [local.generate(p, max_tokens=MAX_TOKENS).tokens for p in prompts]
    for url in (far, near):
        engine = Engine.load(url, draft=draft, k=4)
        results = [engine.generate(p, max_tokens=MAX_TOKENS) for p in prompts]
        assert [r.tokens for r in results] == expected
        assert all(r.stats.drafted > 0 for r in results)
