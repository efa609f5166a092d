"""What the Train page's queue says about workers and finished jobs (pure functions of ``app.train_live``)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from app.train_live import NO_WORKER, outcome_line, worker_status


def _w(host: str, job: int | None = None, kinds: list[str] | None = None) -> dict:
    return {"name": f"{host}:1:x", "host": host, "pid": 1, "device": "cpu", "kinds": kinds, "seen_s_ago": 0.5,
            "job": job}


def _j(jid: int, kind: str = "train", status: str = "queued") -> dict:
    return {"id": jid, "kind": kind, "status": status, "cancel_requested": False}


@pytest.mark.parametrize("live,active,line,waits", [
    ([], [], NO_WORKER, {}),
    ([], [_j(1)], NO_WORKER, {1: "waiting for a worker: none is running"}),
    ([_w("a")], [], "1 worker: a (cpu, idle).", {}),
    # the oldest queued job goes to the first free worker of its kind; the next one waits for a busy worker
    ([_w("a"), _w("b", job=3)], [_j(3, status="running"), _j(4), _j(5)],
     "2 workers: a (cpu, taking job #4); b (cpu, running job #3).",
     {4: "waiting for a worker: a takes it at its next poll",
      5: "waiting for a worker: next free one of a (job #4), b (job #3)"}),
    ([_w("a", kinds=["train"])], [_j(1, kind="cv")], "1 worker: a (cpu, free, no waiting job is of its kinds, "
     "train jobs only).", {1: "waiting for a worker: none of the running ones takes cv jobs"}),
    ([_w("a"), _w("b")], [_j(1)], "2 workers: a (cpu, taking job #1); b (cpu, free, the waiting jobs go to other "
     "workers).", {1: "waiting for a worker: a takes it at its next poll"}),
])
def test_worker_status_never_idle_while_a_job_waits(live, active, line, waits) -> None:
    assert worker_status(live, active) == (line, waits)


def test_outcome_line_names_the_version_and_the_time() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
    job = {"id": 7, "kind": "train", "status": "succeeded", "progress": {"elapsed_s": 3.14}, "error": None,
           "result": {"version_id": 5}, "finished_at": (now - timedelta(seconds=4)).isoformat()}
    assert outcome_line(job, now) == "**#7 train** succeeded 4 s ago after 3.1 s: version 5."
    failed = {**job, "status": "failed", "progress": None, "result": None, "error": "boom\ntrace",
              "finished_at": (now - timedelta(minutes=5)).isoformat()}
    assert outcome_line(failed, now) == "**#7 train** failed 5 min ago: boom."
