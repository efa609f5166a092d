"""Worker presence (``db/workers.py``): beats, the live list (idle, busy through its job's lease, gone after missed
beats or a clean stop), pruning; and a real ``rmstudio worker`` process seen by ``rmstudio workers`` while it runs
and gone once it stopped, on SQLite and PostgreSQL."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from cli import main
from db import jobs as jobq
from db import workers
from db.session import Database


def test_live_idle_busy_gone_and_pruned(any_db: Database) -> None:
    t0 = 1_000_000.0
    with any_db.write() as s:
        workers.beat(s, "a:1:x", host="a", pid=1, device="cpu", kinds=None, every_s=10.0, now=t0)
        workers.beat(s, "b:2:y", host="b", pid=2, device="cuda", kinds=["train"], every_s=10.0, now=t0)
    with any_db.read() as s:
        live = workers.live_workers(s, now=t0 + 5)
    assert [(w["host"], w["device"], w["kinds"], w["job"]) for w in live] == [("a", "cpu", None, None),
                                                                               ("b", "cuda", ["train"], None)]
    assert workers.describe(live) == "2 workers: a (cpu, idle); b (cuda, idle, train jobs only)"

    # b claims a job and is then busy inside it: no beats, but its lease heartbeat keeps it live
    with any_db.write() as s:
        jid = jobq.enqueue(s, "noop", {}).id
    with any_db.read() as s:  # a job waits: the worker that can take it is not "idle" (the CLI's line)
        active = [jobq.job_to_dict(j) for j in jobq.active_jobs(s)]
        assert workers.describe(workers.live_workers(s, now=t0 + 5), active) == (
            f"2 workers: a (cpu, taking job #{jid}); b (cuda, free, no waiting job is of its kinds, train jobs only)")
    job = jobq.claim(any_db, "b:2:y", lease_s=3600)
    assert job is not None and job.id == jid
    with any_db.read() as s:
        live = workers.live_workers(s, now=t0 + 10 * workers.LIVE_FACTOR + 1)  # a missed its beats; b did too
    assert [(w["host"], w["job"]) for w in live] == [("b", jid)]

    with any_db.write() as s:
        workers.forget(s, "b:2:y")
        assert workers.prune(s, now=t0 + workers.PRUNE_AFTER_S + 1) == 1  # a's row, silent for a day
    with any_db.read() as s:  # b's job still holds a lease: it is listed from the job alone
        assert [(w["name"], w["job"], w["device"]) for w in workers.live_workers(s, now=t0 + 40)] == \
            [("b:2:y", jid, None)]
        assert workers.describe([]) == "no worker is running"


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> list[dict]:
    capsys.readouterr()
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_a_real_worker_is_listed_while_it_runs(any_db: Database, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli(capsys, "workers", "--json") == []
    proc = subprocess.Popen([sys.executable, "-m", "cli", "worker", "--no-preload", "--no-auto-retrain",
                             "--poll-interval", "0.2", "--kinds", "noop"], env=os.environ.copy(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        end, live = time.monotonic() + 60, []
        while time.monotonic() < end and not live:
            live = _cli(capsys, "workers", "--json")
            time.sleep(0.2)
        assert len(live) == 1, proc.stderr.read1().decode() if proc.poll() is not None else "not listed in 60 s"
        [w] = live
        assert (w["pid"], w["device"], w["kinds"], w["job"]) == (proc.pid, "auto", ["noop"], None)
        capsys.readouterr()
        assert main(["jobs"]) == 0
        assert f"1 worker: {w['host']} (auto, idle, noop jobs only)" in capsys.readouterr().out
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    assert _cli(capsys, "workers", "--json") == []  # a clean stop removes it at once
