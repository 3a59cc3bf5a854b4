"""One request's engine streams run as a scheduler job, for every route that generates (app.py's OpenAI routes,
llama_routes.py's llama-server ones): the queue's refusals as HTTP errors, the client's disconnect as a cancel,
and the engine's steps handed to the route's formatter, whole or as server-sent events.

    jobs = JobRunner(scheduler)
    jobs.check_room(n)                      # before preparing: a busy server refuses before tokenizing
    job = jobs.submit(streams)
    if not await jobs.collect(request, job, formatter.add): ...   # the client left
    StreamingResponse(jobs.sse(job, formatter.chunks, opening=..., closing=..., done="[DONE]"), ...)
"""

from __future__ import annotations

import asyncio
import json
from typing import AsyncIterator, Callable, Iterable, Iterator

from fastapi import Request

from quickdraft.generate import GenerationResponse
from quickdraft.server.errors import APIError, generation_error
from quickdraft.server.scheduler import Job, QueueFull, Scheduler, ShuttingDown

Step = Callable[[int, GenerationResponse], None]  # (choice index, the engine's step)


class JobRunner:
    def __init__(self, scheduler: Scheduler):
        self.scheduler = scheduler

    def check_room(self, n_streams: int) -> None:
        """Refuse now (429, or 503 when stopping) a request of n_streams generations the queue would refuse."""
        try:
            self.scheduler.check_room(n_streams)
        except (QueueFull, ShuttingDown) as e:
            raise refusal(e) from None

    def submit(self, streams: list[Iterator[GenerationResponse]]) -> Job:
        job = Job(streams, asyncio.get_running_loop())
        try:
            self.scheduler.submit(job)
        except (QueueFull, ShuttingDown) as e:
            raise refusal(e) from None
        return job

    async def collect(self, request: Request, job: Job, add: Step) -> bool:
        """Hand every step to `add` until the job ends; False when the client left (the job is cancelled)."""
        watcher = asyncio.create_task(self._cancel_on_disconnect(request, job))
        try:
            async for index, step in job.events():
                add(index, step)
        except ShuttingDown as e:
            raise refusal(e) from None
        except Exception as e:
            raise generation_error(e) from None
        finally:
            watcher.cancel()
        return not job.cancelled

    async def _cancel_on_disconnect(self, request: Request, job: Job) -> None:
        """The body has been read, so the next message uvicorn delivers is the client's disconnect."""
        while (await request.receive())["type"] != "http.disconnect":
            pass
        self.scheduler.cancel(job)

    async def sse(self, job: Job, chunks: Callable[[int, GenerationResponse], Iterable[dict]], *,
                  opening: Iterable[dict] = (), closing: Callable[[], Iterable[dict]] = tuple,
                  done: str | None = None) -> AsyncIterator[str]:
        """The job as server-sent events: `opening`, each step's `chunks`, `closing()`, then `done` (OpenAI's
        "[DONE]"; llama-server sends none). A failure after the 200 went out is said in the stream."""
        try:
            for chunk in opening:
                yield sse(chunk)
            async for index, step in job.events():
                for chunk in chunks(index, step):
                    yield sse(chunk)
            for chunk in closing():
                yield sse(chunk)
        except Exception as e:
            yield sse(generation_error(e).body())
        finally:
            self.scheduler.cancel(job)  # the client went away mid-stream: free the engine (a no-op when done)
        if done is not None:
            yield f"data: {done}\n\n"


def refusal(e: QueueFull | ShuttingDown) -> APIError:
    """The scheduler's refusals: busy (429, retry shortly) or stopping (503)."""
    if isinstance(e, QueueFull):
        return APIError(429, str(e), type="rate_limit_error", code="queue_full", headers={"Retry-After": "1"})
    return APIError(503, str(e), type="server_error", code="shutting_down")


def sse(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"
