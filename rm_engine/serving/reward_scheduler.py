"""Scoring for the reward server, bounded: each request scored in chunks, requests taking turns, a time budget
per request, cancellation, and a shutdown that never waits on a batch.

One scoring runs at a time, on one thread of its own (two at once would only fight over the same cores). The
rows of all waiting requests are scored in chunks of at most ``chunk_rows`` rows (and ``chunk_chars`` characters):
a chunk takes rows from the requests with the fewest rows scored first, so a small request that arrives while a
large one is being scored is answered after at most one chunk, and rows of several small requests share one
forward pass. A request whose
client went away is dropped (its remaining rows are never scored); a request that cannot finish within the time
budget is refused as soon as its own measured speed says so (:class:`OverBudget`); :meth:`Scheduler.close` refuses
everything that waits (:class:`ShuttingDown`). The scoring thread is a daemon: a process that exits never waits
on the chunk it is scoring.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rm_engine.serving.reward_requests import Row

log = logging.getLogger(__name__)
Score = Callable[[Sequence[Row]], dict[str, list[float]]]
STOPPING = "the reward server is shutting down: this request was not scored; send it again to a running server"


class OverBudget(RuntimeError):
    """A request refused because it cannot be scored within the time budget; the message gives the measured
    speed and the number of rows that would fit."""


class ShuttingDown(RuntimeError):
    """The server is stopping: the request was not (completely) scored."""


class ScoringThread:
    """One daemon thread that runs functions one at a time for the event loop."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...], asyncio.AbstractEventLoop,
                                            asyncio.Future[Any]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="rmstudio-scoring", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, args, loop, fut = job
            try:
                out, exc = fn(*args), None
            except BaseException as e:  # noqa: BLE001 - handed to the waiting coroutine
                out, exc = None, e
            try:
                loop.call_soon_threadsafe(_settle, fut, out, exc)
            except RuntimeError:  # the event loop is closed: nobody waits for this any more
                pass

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on the scoring thread."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._jobs.put((fn, args, loop, fut))
        return await fut

    def stop(self) -> None:
        """Let the thread end after the function it runs (it is a daemon: nothing waits for it)."""
        self._jobs.put(None)


def _settle(fut: asyncio.Future[Any], out: Any, exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(out)


@dataclass(eq=False)
class Job:
    """One request's rows and what has been scored of them."""

    rows: list[Row]
    future: asyncio.Future[dict[str, list[float]]]
    started: float
    done: int = 0
    compute_s: float = 0.0
    out: dict[str, list[float]] = field(default_factory=dict)

    @property
    def left(self) -> int:
        return len(self.rows) - self.done


def _chars(row: Row) -> int:
    return len(row[0]) + len(row[2]) + sum(len(str(m)) for m in row[1] or ())


class Scheduler:
    """Requests' rows scored in shared, bounded chunks (see the module docstring). ``score`` maps rows to
    ``{"rewards": [...], "std": [...]}``; ``on_done`` gets an answered request's rows on the scoring thread (the
    server records the prompts there), its failures logged."""

    def __init__(self, score: Score, *, chunk_rows: int = 64, chunk_chars: int = 1_000_000,
                 time_budget_s: float = 120.0, on_done: Callable[[list[Row]], Any] | None = None) -> None:
        self.score, self.on_done = score, on_done
        self.chunk_rows, self.chunk_chars, self.time_budget_s = chunk_rows, chunk_chars, time_budget_s
        self._jobs: deque[Job] = deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread: ScoringThread | None = None
        self._closed = False
        self.counts = {"answered": 0, "over_budget": 0, "client_gone": 0, "failed": 0}

    @property
    def pending_rows(self) -> int:
        """Rows waiting to be scored, all requests together."""
        return sum(j.left for j in self._jobs)

    def submit(self, rows: list[Row]) -> Job:
        """Queue a request's rows; await ``job.future`` for its rewards (or :class:`OverBudget`,
        :class:`ShuttingDown`, the scorer's exception)."""
        loop = asyncio.get_running_loop()
        job = Job(rows, loop.create_future(), time.monotonic())
        if self._closed:
            job.future.set_exception(ShuttingDown(STOPPING))
            return job
        if not rows:
            job.future.set_result({"rewards": [], "std": []})
            return job
        if self._task is None or self._task.done():
            self._wake, self._thread = asyncio.Event(), self._thread or ScoringThread()
            self._task = loop.create_task(self._loop())
        self._jobs.append(job)
        assert self._wake is not None
        self._wake.set()
        return job

    def cancel(self, job: Job) -> None:
        """Drop a request (its client went away): its rows not yet scored never will be."""
        if job in self._jobs:
            self._jobs.remove(job)
        if not job.future.done():
            job.future.cancel()
            self.counts["client_gone"] += 1

    def close(self) -> None:
        """Refuse every waiting request with :class:`ShuttingDown` and stop scoring (the chunk being scored is
        left to its daemon thread)."""
        self._closed = True
        while self._jobs:
            job = self._jobs.popleft()
            if not job.future.done():
                job.future.set_exception(ShuttingDown(STOPPING))
        if self._task is not None:
            self._task.cancel()
        if self._thread is not None:
            self._thread.stop()

    def _take(self) -> list[tuple[Job, int, int]]:
        """The next chunk: rows of the waiting requests, those with the fewest rows scored so far first (a request
        that just arrived goes before one being scored, which tops the chunk up)."""
        parts: list[tuple[Job, int, int]] = []
        rows = chars = 0
        for job in sorted(self._jobs, key=lambda j: j.done):
            start = stop = job.done
            while stop < len(job.rows) and rows < self.chunk_rows and (rows == 0 or chars < self.chunk_chars):
                chars += _chars(job.rows[stop])
                rows, stop = rows + 1, stop + 1
            if stop > start:
                parts.append((job, start, stop))
            if rows >= self.chunk_rows or chars >= self.chunk_chars:
                break
        return parts

    async def _loop(self) -> None:
        assert self._wake is not None and self._thread is not None
        while True:
            if not self._jobs:
                self._wake.clear()
                await self._wake.wait()
                continue
            parts = self._take()
            try:
                await self._score(parts)
            except Exception as exc:  # a fault here must fail these requests, not hang them all
                log.exception("reward server: scoring failed")
                for job, _, _ in parts:
                    if not job.future.done():
                        job.future.set_exception(exc)
            for job, _, _ in parts:
                if job.future.done():  # cancelled or failed meanwhile
                    if job in self._jobs:
                        self._jobs.remove(job)
                elif job.left == 0:
                    self._jobs.remove(job)
                    await self._finish(job)
                else:
                    self._check_budget(job)

    async def _score(self, parts: list[tuple[Job, int, int]]) -> None:
        """Score one chunk; when it fails, each request's share again alone, so one bad request fails alone."""
        assert self._thread is not None
        rows = [r for job, a, b in parts for r in job.rows[a:b]]
        t0 = time.monotonic()
        try:
            out = await self._thread.run(self.score, rows)
        except Exception as exc:  # noqa: BLE001 - handed to the requests
            if len(parts) > 1:
                for part in parts:
                    await self._score([part])
            elif not parts[0][0].future.done():
                parts[0][0].future.set_exception(exc)
                self.counts["failed"] += 1
                self.cancel(parts[0][0])
            return
        dt, at = time.monotonic() - t0, 0
        for job, a, b in parts:
            for k, v in out.items():
                job.out.setdefault(k, []).extend(v[at:at + b - a])
            job.done, job.compute_s, at = b, job.compute_s + dt * (b - a) / len(rows), at + b - a

    async def _finish(self, job: Job) -> None:
        if self.on_done is not None:
            assert self._thread is not None
            try:
                await self._thread.run(self.on_done, job.rows)
            except Exception as exc:  # noqa: BLE001 - recording must not fail the reward
                log.warning("reward server: could not record the served prompts (%s)", exc)
        if not job.future.done():
            job.future.set_result(job.out)
            self.counts["answered"] += 1

    def _check_budget(self, job: Job) -> None:
        """Refuse ``job`` now if it is past its budget, or if at its own measured speed its remaining rows would
        take it past (judged once it has run a fifth of the budget)."""
        elapsed = time.monotonic() - job.started
        per_row = job.compute_s / max(job.done, 1)
        projected = elapsed + per_row * job.left
        # the projection is trusted once the request has run a fifth of its budget (its first chunks are noisy)
        if elapsed <= self.time_budget_s and (projected <= self.time_budget_s or elapsed < 0.2 * self.time_budget_s):
            return
        fits = max(1, int(self.time_budget_s / per_row)) if per_row > 0 else len(job.rows)
        self.counts["over_budget"] += 1
        job.future.set_exception(OverBudget(
            f"scoring {len(job.rows):,} rows would take about {projected:.0f} s at this server's "
            f"speed ({per_row * 1000:.1f} ms per row), more than the time budget of {self.time_budget_s:g} s per "
            f"request: send at most about {fits:,} rows per request, or start the server with a larger "
            "--time-budget"))
        self._jobs.remove(job)
