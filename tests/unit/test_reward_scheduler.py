"""The reward server's scheduler: requests scored in shared chunks taking turns, a request whose client left stops
being scored, a time budget refused early with the speed measured, one bad request failing alone, and a shutdown
that answers everything waiting without waiting on the chunk being scored."""
from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from rm_engine.serving.reward_scheduler import OverBudget, Scheduler, ShuttingDown


def rows(tag: str, n: int) -> list[tuple[str, None, str]]:
    return [(tag, None, f"{tag}{i}") for i in range(n)]


class Recorder:
    """A scorer that notes each chunk's rows and takes ``delay`` seconds per chunk (a slow machine)."""

    def __init__(self, delay: float = 0.0, fail_on: str | None = None,
                 block: threading.Event | None = None) -> None:
        self.chunks: list[list[str]] = []
        self.delay, self.fail_on, self.block = delay, fail_on, block

    def __call__(self, batch: Sequence[tuple[str, Any, str]]) -> dict[str, list[float]]:
        self.chunks.append([r[2] for r in batch])
        if self.block is not None:
            self.block.wait(30)
        time.sleep(self.delay)
        if self.fail_on is not None and any(r[0] == self.fail_on for r in batch):
            raise ValueError(f"cannot score {self.fail_on}")
        return {"rewards": [float(r[2][1:]) for r in batch], "std": [0.0] * len(batch)}


def run(coro_fn: Callable[[], Any]) -> Any:
    return asyncio.run(coro_fn())


def test_a_small_request_waits_at_most_one_chunk_behind_a_large_one() -> None:
    score, done = Recorder(delay=0.02), []

    async def main() -> None:
        s = Scheduler(score, chunk_rows=4, on_done=lambda r: done.append(r[0][0]))
        big = s.submit(rows("b", 40))
        while not score.chunks:
            await asyncio.sleep(0.001)
        small = s.submit(rows("s", 2))
        assert (await small.future)["rewards"] == [0.0, 1.0]
        assert not big.future.done() and s.pending_rows > 0
        assert [float(x) for x in (await big.future)["rewards"]] == list(range(40))
        s.close()

    run(main)
    # chunk 1: the large request alone; chunk 2: the small one first, topped up with the large one's rows
    assert score.chunks[0] == ["b0", "b1", "b2", "b3"] and score.chunks[1] == ["s0", "s1", "b4", "b5"]
    assert all(len(c) <= 4 for c in score.chunks) and done == ["s", "b"]


def test_a_request_whose_client_left_is_no_longer_scored() -> None:
    score = Recorder(delay=0.02)

    async def main() -> Scheduler:
        s = Scheduler(score, chunk_rows=4)
        job = s.submit(rows("b", 400))
        while len(score.chunks) < 2:
            await asyncio.sleep(0.001)
        s.cancel(job)
        await asyncio.sleep(0.2)
        s.close()
        return s

    s = run(main)
    assert len(score.chunks) <= 3 and s.pending_rows == 0 and s.counts["client_gone"] == 1


def test_a_request_that_cannot_make_its_budget_is_refused_early_with_the_speed_measured() -> None:
    score = Recorder(delay=0.05)

    async def main() -> tuple[float, BaseException | None]:
        s = Scheduler(score, chunk_rows=1, time_budget_s=1.0)
        t0 = time.monotonic()
        job = s.submit(rows("b", 100))  # 100 chunks of 0.05 s: 5 s, five times the budget
        with pytest.raises(OverBudget) as err:
            await job.future
        s.close()
        return time.monotonic() - t0, err.value

    took, err = run(main)
    # judged once a fifth of the budget has passed, not at the deadline, and not before
    assert 0.2 <= took < 0.6 and len(score.chunks) < 12
    fits = re.search(r"scoring 100 rows would take about (\d+) s .* send at most about (\d+) rows per request", str(err))
    assert fits is not None and 4 <= int(fits[1]) <= 7 and 10 <= int(fits[2]) <= 20


def test_one_bad_request_fails_alone() -> None:
    score = Recorder(fail_on="bad", block=threading.Event())

    async def main() -> list[Any]:
        s = Scheduler(score, chunk_rows=5)
        first = s.submit(rows("a", 1))  # holds the scorer while the others queue up
        while not score.chunks:
            await asyncio.sleep(0.001)
        jobs = [s.submit(r) for r in (rows("p", 2), rows("bad", 1), rows("q", 2))]
        score.block.set()
        out = await asyncio.gather(first.future, *(j.future for j in jobs), return_exceptions=True)
        s.close()
        return out

    out = run(main)
    assert out[1]["rewards"] == [0.0, 1.0] and out[3]["rewards"] == [0.0, 1.0]
    assert isinstance(out[2], ValueError) and "cannot score bad" in str(out[2])
    # the chunk [p0, p1, bad0, q0, q1] failed, so each request's share was scored again alone
    assert score.chunks[1:] == [["p0", "p1", "bad0", "q0", "q1"], ["p0", "p1"], ["bad0"], ["q0", "q1"]]


def test_shutdown_answers_what_waits_without_waiting_on_the_chunk_being_scored() -> None:
    hold = threading.Event()
    score = Recorder(block=hold)  # a chunk that never ends on its own

    async def main() -> tuple[float, list[Any]]:
        s = Scheduler(score, chunk_rows=2)
        jobs = [s.submit(rows("a", 4)), s.submit(rows("b", 1))]
        while not score.chunks:
            await asyncio.sleep(0.001)
        t0 = time.monotonic()
        s.close()
        out = await asyncio.gather(*(j.future for j in jobs), return_exceptions=True)
        late = s.submit(rows("c", 1))
        out.append(await asyncio.gather(late.future, return_exceptions=True))
        return time.monotonic() - t0, out

    took, out = run(main)
    hold.set()
    assert took < 0.5 and all(isinstance(o, ShuttingDown) for o in out[:2])
    assert isinstance(out[2][0], ShuttingDown) and "send it again to a running server" in str(out[2][0])
