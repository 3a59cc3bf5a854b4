"""A swap or a shutdown never frees the models under a running generation.

A client that disconnects only cancels its job: the engine's worker stops at the end of its current round,
which can take seconds (a long prompt's prefill is one llama.cpp call), while the request handler is gone at
once. Freeing the models then would free memory llama.cpp is using: a crash. Here a real SmolLM2 target
served in process (serve's ServingHost, its ASGI lifespan driven as uvicorn drives it) is held inside a
round by a hook the test releases: the models must be freed after that round has returned, or, when the
worker does not come out in time, not at all. The same hook keeps the server busy to check that the queue
counts generations (prompts x n), and refuses a request that does not fit before preparing it.
"""

from __future__ import annotations

import asyncio
import threading
import time

import httpx

from quickdraft.config import Config
from quickdraft.server.scheduler import Job
from quickdraft.server.startup import ServingHost, close_engine

MODEL = "smollm2-135m"
PROMPT = "List the planets of the solar system in order from the Sun:"


def config(queue_size: int = 16) -> Config:
    """Inexact: no exactness probe at load, which these tests do not need."""
    return Config.model_validate({"models": {"target": MODEL, "draft": "ngram", "threads": 1, "ctx": 512,
                                             "exact": False},
                                  "server": {"limits": {"queue_size": queue_size}}})


async def until(condition, what: str, timeout: float = 180.0) -> None:
    """Wait for a condition (a guard against hanging, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


class Lifespan:
    """The host's ASGI lifespan, driven as uvicorn drives it."""

    def __init__(self, host: ServingHost):
        self.host, self.inbox, self.task = host, asyncio.Queue(), None

    async def start(self) -> None:
        async def send(message):
            pass

        self.task = asyncio.create_task(self.host({"type": "lifespan"}, self.inbox.get, send))
        await self.inbox.put({"type": "lifespan.startup"})
        await until(lambda: self.host.state != "starting", "the engine to load")
        assert self.host.state == "ready", self.host.error

    async def shutdown(self) -> None:
        await self.inbox.put({"type": "lifespan.shutdown"})
        await self.task


class HeldRound:
    """Holds the target's next round (its verify call) until `release`, and records the order in which that
    round returned and the target was freed."""

    def __init__(self, target):
        self.events: list[str] = []
        self.inside, self.release = threading.Event(), threading.Event()
        verify, close = target.verify, target.close

        def held_verify(*args, **kwargs):
            first = not self.inside.is_set()
            if first:
                self.inside.set()
                self.release.wait(300)
            verdict = verify(*args, **kwargs)
            if first:
                self.events.append("round returned")
            return verdict

        def recorded_close():
            self.events.append("freed")
            close()

        target.verify, target.close = held_verify, recorded_close


async def hold_a_disconnected_generation(host: ServingHost, disconnect: bool = True) -> tuple[HeldRound, object]:
    """A generation held inside its first round whose client has gone (its job cancelled, as the server's
    handler does on a disconnect): nothing counts it as in flight any more. Returns (hook, its scheduler)."""
    held = HeldRound(host.engine.target)
    scheduler = host.app.state.scheduler
    job = Job([host.engine.stream(PROMPT, max_tokens=8)], asyncio.get_running_loop())
    scheduler.submit(job)
    assert await asyncio.to_thread(held.inside.wait, 120)
    if disconnect:
        scheduler.cancel(job)
    assert host.in_flight == 0
    return held, scheduler


def test_a_swap_frees_the_old_models_only_after_the_running_round():
    async def main():
        host = ServingHost(config())
        life = Lifespan(host)
        await life.start()
        old = host.engine
        reference = old.generate(PROMPT, max_tokens=4).text
        held, scheduler = await hold_a_disconnected_generation(host)
        try:
            swap = asyncio.create_task(host.swap(MODEL))
            await until(lambda: scheduler.closed, "the swap to stop the old app")
            assert "freed" not in held.events  # the worker is still inside its round
        finally:
            held.release.set()
        assert (await swap)["model"] == MODEL
        assert held.events == ["round returned", "freed"]
        assert host.state == "ready" and host.engine is not old
        assert host.engine.generate(PROMPT, max_tokens=4).text == reference  # the new engine serves
        await life.shutdown()

    asyncio.run(main())


def test_a_swap_leaves_the_models_of_a_generation_that_does_not_come_out():
    async def main():
        host = ServingHost(config())
        host.drain_seconds = 0.5  # the worker stays inside its round longer than that
        life = Lifespan(host)
        await life.start()
        old = host.engine
        held, scheduler = await hold_a_disconnected_generation(host)
        try:
            assert (await host.swap(MODEL))["model"] == MODEL  # done while the old round is still held
            assert "freed" not in held.events  # left in memory, not freed under the worker
            assert host.state == "ready" and host.engine is not old
        finally:
            held.release.set()
        assert await asyncio.to_thread(scheduler.wait_closed, 120)
        assert held.events == ["round returned"]  # its round ran on models still there
        close_engine(old)  # ours to free now
        await life.shutdown()

    asyncio.run(main())


def test_shutdown_frees_the_models_only_after_the_running_round():
    async def main():
        host = ServingHost(config())
        life = Lifespan(host)
        await life.start()
        held, scheduler = await hold_a_disconnected_generation(host)
        try:
            await life.inbox.put({"type": "lifespan.shutdown"})
            await until(lambda: scheduler.closed, "the shutdown to stop the app")
            assert "freed" not in held.events and not life.task.done()
        finally:
            held.release.set()
        await life.task
        assert held.events == ["round returned", "freed"]
        assert host.engine is None

    asyncio.run(main())


def test_a_busy_server_counts_each_prompt_and_refuses_before_preparing():
    async def main():
        host = ServingHost(config(queue_size=2))  # two generations may wait behind the running one
        life = Lifespan(host)
        await life.start()
        held, _ = await hold_a_disconnected_generation(host, disconnect=False)  # the running generation
        tokenized = []
        tokenize = host.engine.tokenize
        host.engine.tokenize = lambda prompt, **kw: tokenized.append(prompt) or tokenize(prompt, **kw)
        transport = httpx.ASGITransport(app=host.app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
                three = {"prompt": ["a", "b", "c"], "max_tokens": 2}  # one request, three generations
                r = await asyncio.wait_for(client.post("/v1/completions", json=three), 60)  # (a hang guard)
                assert r.status_code == 429, r.text
                assert r.json()["error"]["code"] == "queue_full" and "asks for 3" in r.json()["error"]["message"]
                assert tokenized == []  # refused before its prompts were tokenized
        finally:
            held.release.set()
        await life.shutdown()

    asyncio.run(main())
