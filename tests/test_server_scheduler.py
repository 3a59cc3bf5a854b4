"""The queue in front of the engine, on its own: order, room, cancellation, failures.

The jobs here are plain generators standing in for engine streams (the scheduler only iterates and closes
them); the end-to-end tests in test_server.py run the same paths with the real models.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from quickdraft.generate import GenerationResponse
from quickdraft.server.scheduler import Job, QueueFull, Scheduler, ShuttingDown
from quickdraft.stats import GenerationStats


def steps(name: str, n: int, log: list, gate: threading.Event | None = None):
    """A stream of n one-token steps that records what happens to it."""
    stats = GenerationStats(prompt_tokens=1)
    log.append(f"{name} start")
    try:
        for i in range(n):
            if gate is not None:
                assert gate.wait(10)
            stats.completion_tokens += 1
            yield GenerationResponse(f"{name}{i} ", [i], None, "length" if i == n - 1 else None, stats)
        log.append(f"{name} end")
    finally:
        log.append(f"{name} closed")


async def text_of(job: Job) -> str:
    return "".join([step.text async for _, step in job.events()])


async def started(scheduler: Scheduler) -> None:
    while scheduler.running == 0:
        await asyncio.sleep(0.01)


def run(coro):
    return asyncio.run(coro)


def test_jobs_run_one_at_a_time_in_order():
    async def main():
        log: list[str] = []
        finished: list[tuple[int, bool]] = []
        scheduler = Scheduler(4, on_generation_end=lambda s, cancelled: finished.append((s.completion_tokens, cancelled)))
        loop = asyncio.get_running_loop()
        jobs = [Job([steps(name, 3, log)], loop) for name in "abc"]
        for job in jobs:
            scheduler.submit(job)
        texts = await asyncio.gather(*(text_of(j) for j in jobs))
        scheduler.close()
        assert texts == ["a0 a1 a2 ", "b0 b1 b2 ", "c0 c1 c2 "]
        assert log == [f"{n} {e}" for n in "abc" for e in ("start", "end", "closed")]
        assert finished == [(3, False)] * 3

    run(main())


def test_several_streams_of_one_job_come_tagged_with_their_index():
    async def main():
        log: list[str] = []
        scheduler = Scheduler(1)
        job = Job([steps("x", 2, log), steps("y", 1, log)], asyncio.get_running_loop())
        scheduler.submit(job)
        got = [(i, step.text) async for i, step in job.events()]
        scheduler.close()
        assert got == [(0, "x0 "), (0, "x1 "), (1, "y0 ")]

    run(main())


def test_queue_limit():
    async def main():
        log: list[str] = []
        gate = threading.Event()
        scheduler = Scheduler(1)
        loop = asyncio.get_running_loop()
        running = Job([steps("r", 1, log, gate)], loop)
        waiting = Job([steps("w", 1, log)], loop)
        refused = Job([steps("x", 1, log)], loop)
        scheduler.submit(running)
        await started(scheduler)
        scheduler.submit(waiting)
        assert (scheduler.running, scheduler.waiting) == (1, 1)
        with pytest.raises(QueueFull, match="busy"):
            scheduler.submit(refused)
        gate.set()
        assert await text_of(running) == "r0 " and await text_of(waiting) == "w0 "
        # the slot is free before the job's end is delivered: the next submit finds room
        scheduler.submit(Job([steps("z", 1, log)], loop))
        scheduler.close()
        assert "x start" not in log

    run(main())


def test_cancel_while_waiting_frees_the_place_at_once():
    async def main():
        log: list[str] = []
        gate = threading.Event()
        scheduler = Scheduler(1)
        loop = asyncio.get_running_loop()
        running = Job([steps("r", 1, log, gate)], loop)
        waiting = Job([steps("w", 1, log)], loop)
        scheduler.submit(running)
        await started(scheduler)
        scheduler.submit(waiting)
        scheduler.cancel(waiting)
        assert scheduler.waiting == 0
        assert await text_of(waiting) == ""  # its events end at once
        scheduler.submit(Job([steps("n", 1, log)], loop))  # the place is free
        gate.set()
        await text_of(running)
        scheduler.close()
        assert "w start" not in log

    run(main())


def test_cancel_while_running_stops_after_the_current_step_and_closes_the_stream():
    async def main():
        log: list[str] = []
        ended: list[bool] = []
        scheduler = Scheduler(0, on_generation_end=lambda s, cancelled: ended.append(cancelled))
        job = Job([steps("long", 10_000, log), steps("never", 1, log)], asyncio.get_running_loop())
        scheduler.submit(job)
        seen = 0
        async for _ in job.events():
            seen += 1
            if seen == 3:
                scheduler.cancel(job)
        scheduler.close()
        assert seen < 10_000  # (steps already handed over before the cancel still arrive)
        assert log == ["long start", "long closed"]  # closed without reaching its end; the next never started
        assert ended == [True]

    run(main())


def test_a_failing_generation_fails_its_job_only():
    def broken():
        yield GenerationResponse("ok ", [1], None, None, GenerationStats())
        raise RuntimeError("llama_decode failed")

    async def main():
        log: list[str] = []
        scheduler = Scheduler(2)
        loop = asyncio.get_running_loop()
        bad, good = Job([broken()], loop), Job([steps("g", 2, log)], loop)
        scheduler.submit(bad)
        scheduler.submit(good)
        with pytest.raises(RuntimeError, match="llama_decode"):
            await text_of(bad)
        assert await text_of(good) == "g0 g1 "
        scheduler.close()

    run(main())


def test_close_refuses_new_jobs_and_ends_waiting_ones():
    async def main():
        log: list[str] = []
        gate = threading.Event()
        scheduler = Scheduler(2)
        loop = asyncio.get_running_loop()
        running, waiting = Job([steps("r", 2, log, gate)], loop), Job([steps("w", 1, log)], loop)
        scheduler.submit(running)
        await started(scheduler)
        scheduler.submit(waiting)
        scheduler.close()
        gate.set()
        with pytest.raises(ShuttingDown):
            await text_of(waiting)
        with pytest.raises(ShuttingDown):
            scheduler.submit(Job([steps("late", 1, log)], loop))
        await text_of(running)
        assert "w start" not in log and "late start" not in log

    run(main())


def test_each_stream_of_a_job_counts_against_the_queue():
    async def main():
        log: list[str] = []
        gate = threading.Event()
        scheduler = Scheduler(2)  # two generations may wait behind the running one
        loop = asyncio.get_running_loop()
        running = Job([steps("r", 1, log, gate)], loop)
        scheduler.submit(running)
        await started(scheduler)
        scheduler.check_room(2)  # asks, queues nothing
        two = Job([steps("a", 1, log), steps("b", 1, log)], loop)
        scheduler.submit(two)  # 2 streams: the queue is full now, though it holds one job
        with pytest.raises(QueueFull, match="busy"):
            scheduler.check_room(1)
        with pytest.raises(QueueFull, match="asks for 2"):
            scheduler.submit(Job([steps("x", 1, log), steps("y", 1, log)], loop))
        gate.set()
        assert await text_of(running) == "r0 " and await text_of(two) == "a0 b0 "
        scheduler.check_room(3)  # room again: three fit beside nothing running
        scheduler.close()
        with pytest.raises(ShuttingDown):
            scheduler.check_room(1)
        assert "x start" not in log and "y start" not in log

    run(main())


def test_an_idle_scheduler_takes_a_job_bigger_than_the_queue():
    async def main():
        log: list[str] = []
        scheduler = Scheduler(0)
        scheduler.check_room(3)
        job = Job([steps(name, 1, log) for name in "abc"], asyncio.get_running_loop())
        scheduler.submit(job)
        assert await text_of(job) == "a0 b0 c0 "
        scheduler.close()

    run(main())


def test_wait_closed_returns_only_once_the_worker_has_left_the_stream():
    inside, gate, log = threading.Event(), threading.Event(), []

    def held():  # a generation whose round lasts until the test lets it go
        try:
            inside.set()
            assert gate.wait(30)
            log.append("round done")
            yield GenerationResponse("r ", [1], None, None, GenerationStats())
            yield GenerationResponse("never ", [2], None, "length", GenerationStats())
        finally:
            log.append("closed")

    async def main():
        scheduler = Scheduler(1)
        job = Job([held()], asyncio.get_running_loop())
        scheduler.submit(job)
        assert await asyncio.to_thread(inside.wait, 30)
        scheduler.close()
        assert not await asyncio.to_thread(scheduler.wait_closed, 0.2)  # the worker is still inside
        assert log == []
        gate.set()
        assert await asyncio.to_thread(scheduler.wait_closed, 30)
        assert log == ["round done", "closed"]  # stopped after its round, closed before wait_closed said so

    run(main())


def test_wait_closed_before_close_is_a_mistake():
    scheduler = Scheduler(1)
    with pytest.raises(RuntimeError, match="before close"):
        scheduler.wait_closed(1)
    scheduler.close()
    assert scheduler.wait_closed(30)
