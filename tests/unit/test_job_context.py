"""What a running job sees (worker/job_run.py's JobContext): progress with its ETA and loss history, the log, stop
checks from a plain callback (no worker needed), and the one ETA computation (rm_engine/progress.py)."""
from __future__ import annotations

import threading
import time

import pytest

from db.models import Job
from rm_engine.progress import eta_s
from worker.job_run import LOSS_HISTORY_POINTS, JobContext, JobStopped


@pytest.mark.parametrize("elapsed, done, total, left", [
    (10.0, 5, 20, 30.0),  # 2 s a step, 15 steps to go
    (3.0, 3, 3, 0.0),
    (3.0, 4, 3, 0.0),  # past the total: nothing left, never negative
    (5.0, 0, 10, None),  # no step done yet: no pace to go by
    (5.0, 2, 0, None),  # no total
])
def test_eta(elapsed: float, done: float, total: float, left: float | None) -> None:
    assert eta_s(elapsed, done, total) == left


def _ctx(stopping: threading.Event, *, cancel: bool = False) -> JobContext:
    return JobContext(Job(id=7, params={"mode": "head"}, cancel_requested=cancel), stopping=stopping.is_set)


def test_progress_extrapolates_each_phase_from_its_own_start() -> None:
    ctx = _ctx(threading.Event())
    ctx.progress({"phase": "load", "step": 1, "total": 1})
    ctx.progress({"phase": "train", "step": 0, "total": 10})
    time.sleep(0.4)
    ctx.progress({"phase": "train", "step": 5, "total": 10, "loss": 0.5})
    p = ctx.take_progress()
    assert p is not None and 0.3 <= p["eta_s"] <= 2.0, p  # about the 0.4 s the first 5 steps took
    assert p["loss_history"] == [[5, 0.5]] and p["phase"] == "train" and p["elapsed_s"] >= 0.4
    assert ctx.take_progress() is None  # nothing new since
    ctx.progress({"step": 6, "loss": 0.4, "eta_s": 123.0})  # the engine's own estimate wins
    assert ctx.peek_progress()["eta_s"] == 123.0
    assert [line for _, line in ctx.take_logs()] == ["phase: load", "phase: train"] and ctx.take_logs() == []


def test_loss_history_keeps_the_last_points_one_per_step() -> None:
    ctx = _ctx(threading.Event())
    for step in range(1, LOSS_HISTORY_POINTS + 11):
        ctx.progress({"step": step, "total": 1000, "loss": 1.0 / step})
    ctx.progress({"step": LOSS_HISTORY_POINTS + 10, "loss": 0.0})  # the same step again replaces its point
    hist = ctx.peek_progress()["loss_history"]
    assert len(hist) == LOSS_HISTORY_POINTS and hist[0][0] == 11 and hist[-1] == [LOSS_HISTORY_POINTS + 10, 0.0]


def test_should_stop_follows_the_callback_cancel_and_lease() -> None:
    stopping = threading.Event()
    ctx = _ctx(stopping)
    assert not ctx.should_stop()
    ctx.check()
    stopping.set()
    assert ctx.should_stop() and ctx.stop_reason() == "worker shutting down"
    with pytest.raises(JobStopped, match="worker shutting down"):
        ctx.check()
    assert _ctx(threading.Event(), cancel=True).stop_reason() == "cancel requested"
    lost = _ctx(threading.Event())
    lost.lost = True
    assert lost.should_stop() and lost.stop_reason() == "lease lost"
