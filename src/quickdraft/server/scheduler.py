"""One engine, many clients: a first-come, first-served queue in front of the engine.

Why one request at a time: the engine keeps one KV sequence per model. Interleaving two requests round by
round would make every switch re-evaluate the other request's context (the cache holds only one), so the
work would grow with each switch; running requests one after another does each token's work once, and the
next request still reuses whatever prompt prefix it shares with the last one. A request waits its turn in
the queue; a streaming client sees its first token when its turn comes.

Why one worker thread: llama.cpp calls block, so they must not run on the event loop, and an engine
generator must be advanced and closed by one thread at a time. The worker takes a job, drives its engine
generators to the end and hands every step to the event loop through the job's asyncio queue. The loop
talks back through one flag: `cancel`. A client that disconnects cancels its job; the worker notices after
the current round, closes the generator (which releases the engine) and starts the next job. A job
cancelled while it waits leaves the queue at once.

Back-pressure counts generations (streams), not requests: a request with several prompts or choices is that
many generations of work and holds that many prepared prompts. At most `queue_size` generations wait behind
the running job (its streams count until it ends); `submit` refuses more (QueueFull, which the server answers
with HTTP 429). An idle scheduler takes any job, so a request with more choices than the queue holds still
runs when nothing else does. `check_room` answers the same question before a request is prepared, so a busy
server refuses a big request before tokenizing its prompts and compiling its grammars.

Lifetime: `close` cancels the running job and refuses the waiting ones; the worker leaves the engine at the
end of its current round, which can take seconds (the prefill of a long prompt is one llama.cpp call).
`wait_closed` waits for that: whoever frees the engine's models must call it first and must not free them
if it says the worker is still inside (freeing memory llama.cpp is using crashes the process).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from typing import AsyncIterator, Callable, Iterator

from quickdraft.generate import GenerationResponse
from quickdraft.stats import GenerationStats

log = logging.getLogger("quickdraft.server")


class QueueFull(Exception):
    """No room in the queue for another request."""


class ShuttingDown(Exception):
    """The server is stopping: queued requests will not run."""


_END = object()


class Job:
    """One request's generations (one stream per choice), run in order by the worker.

    The worker calls `_emit`; the request handler iterates `events()` on the event loop.
    """

    def __init__(self, streams: list[Iterator[GenerationResponse]], loop: asyncio.AbstractEventLoop):
        self.streams = streams
        self._loop = loop
        self._events: asyncio.Queue = asyncio.Queue()
        self._cancelled = threading.Event()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    async def events(self) -> AsyncIterator[tuple[int, GenerationResponse]]:
        """(choice index, engine step) until the job ends; raises what the generation raised."""
        while True:
            item = await self._events.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def _emit(self, item) -> None:
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, item)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            self._cancelled.set()

    def _close_streams(self) -> None:
        for stream in self.streams:
            close = getattr(stream, "close", None)
            if close is not None:
                close()


class Scheduler:
    """Runs jobs one at a time, in arrival order, on one worker thread."""

    def __init__(
        self,
        queue_size: int,
        on_generation_end: Callable[[GenerationStats, bool], None] | None = None,
    ):
        """on_generation_end(stats, cancelled) is called by the worker after each generation, also after a
        cancelled or failed one (with the statistics up to that point)."""
        self.queue_size = queue_size
        self._on_generation_end = on_generation_end
        self._cond = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._running: Job | None = None
        self._closed = False
        self._worker = threading.Thread(target=self._work, name="quickdraft-engine", daemon=True)
        self._worker.start()

    # ---- the event loop's side -------------------------------------------------------------------------
    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return 0 if self._running is None else 1

    @property
    def closed(self) -> bool:
        return self._closed

    def check_room(self, n_streams: int) -> None:
        """Raise QueueFull (or ShuttingDown) if a job of n_streams generations would be refused now: called
        before a request is prepared, so a busy server does not tokenize prompts it cannot queue."""
        with self._cond:
            refusal = self._refusal(n_streams)
        if refusal is not None:
            raise refusal

    def submit(self, job: Job) -> None:
        """Queue a job, or refuse it (QueueFull, ShuttingDown) and close its streams."""
        with self._cond:
            refusal = self._refusal(len(job.streams))
            if refusal is None:
                self._waiting.append(job)
                self._cond.notify()
        if refusal is not None:
            job._close_streams()
            raise refusal

    def _refusal(self, n_streams: int) -> Exception | None:
        """Why a job of n_streams generations cannot be queued now, or None (called under the lock)."""
        if self._closed:
            return ShuttingDown("the server is shutting down")
        queued = self._queued_streams()
        if queued and queued + n_streams > self.queue_size + 1:
            asks = f"; this request asks for {n_streams}" if n_streams > 1 else ""
            return QueueFull(
                f"the server is busy: {queued} generation(s) running or waiting, room for {self.queue_size} "
                f"waiting behind the running one (queue_size){asks}; retry shortly"
            )
        return None

    def _queued_streams(self) -> int:
        """Generations held by the running job and the waiting ones (called under the lock)."""
        running = len(self._running.streams) if self._running is not None else 0
        return running + sum(len(job.streams) for job in self._waiting)

    def cancel(self, job: Job) -> None:
        """Stop a job: out of the queue if it waits, at the end of the current round if it runs."""
        job._cancelled.set()
        with self._cond:
            try:
                self._waiting.remove(job)
            except ValueError:
                return  # running, or done
        job._close_streams()
        job._emit(_END)

    def close(self) -> None:
        """Cancel everything: the running job stops after its current round, the waiting ones end with
        ShuttingDown. Returns at once; `wait_closed` waits for the worker to leave the engine."""
        with self._cond:
            self._closed = True
            waiting, self._waiting = list(self._waiting), deque()
            if self._running is not None:
                self._running._cancelled.set()
            self._cond.notify_all()
        for job in waiting:
            job._cancelled.set()
            job._close_streams()
            job._emit(ShuttingDown("the server is shutting down"))

    def wait_closed(self, timeout: float | None = None) -> bool:
        """After `close`: wait until the worker has returned (no generation left inside the engine, every
        stream closed). False if it is still running after `timeout` seconds: the engine is then in use and
        its models must not be freed."""
        if not self._closed:
            raise RuntimeError("wait_closed() before close(): the worker would wait for jobs forever")
        self._worker.join(timeout)
        return not self._worker.is_alive()

    # ---- the worker's side -----------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                job = self._running = self._waiting.popleft()
            error = self._run(job)
            # free the slot before the client hears the end, so its next request finds room
            with self._cond:
                self._running = None
            job._emit(error if error is not None else _END)

    def _run(self, job: Job) -> BaseException | None:
        try:
            for index, stream in enumerate(job.streams):
                if job.cancelled:
                    break
                last: GenerationResponse | None = None
                try:
                    for response in stream:
                        last = response
                        job._emit((index, response))
                        if job.cancelled:
                            break
                finally:
                    stream.close()  # a cancelled stream releases the engine here
                    if last is not None and self._on_generation_end is not None:
                        self._on_generation_end(last.stats, job.cancelled)
        except Exception as e:  # the engine failed: this request fails, the next one runs
            log.exception("generation failed")
            return e
        finally:
            job._close_streams()
        return None
