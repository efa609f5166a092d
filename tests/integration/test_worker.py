"""``rmstudio worker`` and ``rmstudio serve`` as real processes, on a real SQLite file and on PostgreSQL.

Queue behaviour is shown with ``noop`` jobs (short sleeps, cooperative cancel, progress); training under the
worker (kill -9 mid-training, cancel publishes nothing) is in ``test_autoretrain.py``.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from cli import main as cli_main
from db import jobs as jobq
from db.config import Settings
from db.models import Job
from db.session import Database
from tests.integration import procs
from worker.loop import LOSS_HISTORY_POINTS, Worker, WorkerConfig

FAST = ["--poll-interval", "0.2", "--no-auto-retrain", "--no-preload"]  # noop jobs need no torch


def start_worker(out_dir: Path, name: str, *args: str) -> subprocess.Popen[bytes]:
    """``rmstudio worker ARGS`` as a child process (own process group); output in ``out_dir/name.out``."""
    return procs.spawn([sys.executable, "-m", "cli", "worker", *args], out_dir=out_dir, name=name)


def wait_started(out_dir: Path, name: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> str:
    """Wait for the worker's 'started' line; returns its owner name."""

    def _owner() -> str | None:
        if proc.poll() is not None:
            raise RuntimeError(f"worker {name} exited with {proc.returncode}: {output(out_dir, name)}")
        for line in output(out_dir, name).splitlines():
            if " started (lease" in line:
                return line.split("] ", 1)[1].split(" started", 1)[0]
        return None

    return procs.wait_for(_owner, timeout, f"worker {name} to start")


def output(out_dir: Path, name: str) -> str:
    p = out_dir / f"{name}.out"
    return p.read_text(errors="replace") if p.exists() else ""


def job_row(db: Database, job_id: int) -> dict[str, Any]:
    with db.read() as s:
        return jobq.job_to_dict(s.get(Job, job_id))


def wait_status(db: Database, job_id: int, statuses: tuple[str, ...], timeout: float) -> dict[str, Any]:
    return procs.wait_for(
        lambda: (lambda r: r if r["status"] in statuses else None)(job_row(db, job_id)),
        timeout, f"job {job_id} to become {'/'.join(statuses)}",
    )


def stop(proc: subprocess.Popen[bytes], timeout: float = 30) -> int:
    """SIGTERM a worker and return its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        procs.kill9(proc)
        return -9


def enqueue_noops(db: Database, n: int, **params: Any) -> list[int]:
    with db.write() as s:
        return [jobq.enqueue(s, "noop", dict(params)).id for _ in range(n)]


def markers(path: Path) -> list[tuple[int, str]]:
    if not path.exists():
        return []
    return [(int(a), b) for a, b in (line.split(" ", 1) for line in path.read_text().splitlines() if line)]


# ---------------------------------------------------------------------------------------------- processes


def test_three_workers_run_twenty_jobs_exactly_once(any_db: Database, tmp_path: Path) -> None:
    kids = [start_worker(tmp_path, f"w{i}", *FAST, "--lease", "5") for i in range(3)]
    try:
        owners = [wait_started(tmp_path, f"w{i}", p) for i, p in enumerate(kids)]
        marker = tmp_path / "ran.txt"
        ids = enqueue_noops(any_db, 20, steps=2, sleep=0.05, marker_file=str(marker))
        procs.wait_for(
            lambda: all(job_row(any_db, j)["status"] == "succeeded" for j in ids), 90, "all 20 jobs to succeed"
        )
    finally:
        codes = [stop(p) for p in kids]
    assert codes == [0, 0, 0], [output(tmp_path, f"w{i}")[-1500:] for i in range(3)]
    runs = markers(marker)
    counts = Counter(j for j, _ in runs)
    assert sorted(counts) == ids and set(counts.values()) == {1}, f"jobs run more or less than once: {counts}"
    assert len({o for _, o in runs}) >= 2, "the jobs were not shared between workers"
    assert {o for _, o in runs} <= set(owners)
    for j in ids:
        row = job_row(any_db, j)
        assert row["attempts"] == 1 and row["device"] == "cpu" and row["progress"]["step"] == 2


def test_kill9_mid_job_requeues_after_lease_and_another_worker_finishes(any_db: Database, tmp_path: Path) -> None:
    marker = tmp_path / "ran.txt"
    (jid,) = enqueue_noops(any_db, 1, steps=25, sleep=0.1, marker_file=str(marker))
    a = start_worker(tmp_path, "a", *FAST, "--lease", "2")
    b = None
    try:
        owner_a = wait_started(tmp_path, "a", a)
        procs.wait_for(lambda: (job_row(any_db, jid)["progress"] or {}).get("step", 0) >= 3, 60, "job to make progress")
        killed_at = time.time()
        procs.kill9(a)
        assert job_row(any_db, jid)["status"] == "running"
        b = start_worker(tmp_path, "b", *FAST, "--lease", "5")
        owner_b = wait_started(tmp_path, "b", b)
        row = wait_status(any_db, jid, ("succeeded", "failed"), 90)
    finally:
        procs.kill9(a)
        if b is not None:
            assert stop(b) == 0
    assert row["status"] == "succeeded", row
    assert row["attempts"] == 2 and row["error"] is None and row["result"]["owner"] == owner_b
    assert time.time() - killed_at >= 2.0  # not before the lease ran out
    assert markers(marker) == [(jid, owner_a), (jid, owner_b)]
    with any_db.read() as s:
        logs = [r.line for r in jobq.job_logs(s, jid)]
    assert any("lease expired" in line for line in logs), logs


def test_cancel_from_the_cli_stops_a_running_job(
    sqlite_db: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (jid,) = enqueue_noops(sqlite_db, 1, steps=200, sleep=0.05)
    w = start_worker(tmp_path, "w", *FAST, "--lease", "5")
    try:
        wait_started(tmp_path, "w", w)
        procs.wait_for(lambda: (job_row(sqlite_db, jid)["progress"] or {}).get("step", 0) >= 2, 60, "progress")
        assert cli_main(["jobs", "cancel", str(jid)]) == 0
        assert "cancel requested" in capsys.readouterr().out
        row = wait_status(sqlite_db, jid, ("cancelled", "succeeded", "failed"), 30)
        assert row["status"] == "cancelled" and row["progress"]["step"] < 200
        assert "nothing was published" in row["error"]
        (nxt,) = enqueue_noops(sqlite_db, 1, steps=1, sleep=0.0)  # the worker carries on with the next job
        assert wait_status(sqlite_db, nxt, ("succeeded", "failed"), 30)["status"] == "succeeded"
    finally:
        assert stop(w) == 0
    capsys.readouterr()
    assert cli_main(["jobs", "--json"]) == 0
    rows = {r["id"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows[jid]["status"] == "cancelled" and rows[nxt]["status"] == "succeeded"
    assert {"id", "kind", "status", "attempts", "progress", "error"} <= set(rows[jid])
    assert cli_main(["jobs"]) == 0
    table = capsys.readouterr().out
    assert "cancelled" in table and "succeeded" in table
    assert cli_main(["jobs", "logs", str(jid)]) == 0
    logs = capsys.readouterr().out
    assert "cancel requested" in logs and "cancelled" in logs
    assert cli_main(["jobs", "cancel", "9999"]) == 1
    assert "no job with id 9999" in capsys.readouterr().err


def test_sigterm_puts_the_job_back_and_exits_cleanly(sqlite_db: Database, tmp_path: Path) -> None:
    (jid,) = enqueue_noops(sqlite_db, 1, steps=200, sleep=0.05)
    w = start_worker(tmp_path, "w", *FAST, "--lease", "30")
    wait_started(tmp_path, "w", w)
    procs.wait_for(lambda: job_row(sqlite_db, jid)["status"] == "running", 60, "job to start")
    assert stop(w) == 0
    row = job_row(sqlite_db, jid)  # the 10 s job was interrupted, not waited for, and handed back
    assert row["status"] == "queued" and row["attempts"] == 0 and row["lease_owner"] is None
    assert "released" in output(tmp_path, "w")


def test_worker_once_exits_when_idle(sqlite_db: Database, tmp_path: Path) -> None:
    w = start_worker(tmp_path, "w", "--once", *FAST)
    assert w.wait(timeout=60) == 0


# ---------------------------------------------------------------------------------------------- serve


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _start_serve(tmp_path: Path) -> tuple[subprocess.Popen[bytes], int, int, int]:
    port = _free_port()
    serve = procs.spawn([sys.executable, "-m", "cli", "serve", "--port", str(port)], out_dir=tmp_path, name="serve")

    def _kids() -> tuple[int, int] | None:
        if serve.poll() is not None:
            raise RuntimeError(f"serve exited with {serve.returncode}: {output(tmp_path, 'serve')[-2000:]}")
        kids = {pid: _cmdline(pid) for pid in _children(serve.pid)}
        app = [p for p, c in kids.items() if "streamlit" in c]
        worker = [p for p, c in kids.items() if " worker" in c]
        return (app[0], worker[0]) if app and worker else None

    app, worker = procs.wait_for(_kids, 60, "serve's two children")
    return serve, port, app, worker


def _http_ok(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def test_serve_runs_app_and_worker_and_sigterm_stops_both(sqlite_db: Database, tmp_path: Path) -> None:
    serve, port, app, worker = _start_serve(tmp_path)
    try:
        procs.wait_for(lambda: _http_ok(port), 90, "the app to answer HTTP")
        (jid,) = enqueue_noops(sqlite_db, 1, steps=1, sleep=0.0)
        assert wait_status(sqlite_db, jid, ("succeeded", "failed"), 60)["status"] == "succeeded"
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=40) == 0
    finally:
        procs.kill9(serve)
    procs.wait_for(lambda: not _alive(app) and not _alive(worker), 10, "both children to be gone")


def test_serve_killed_by_sigkill_leaves_no_orphans(sqlite_db: Database, tmp_path: Path) -> None:
    serve, _port, app, worker = _start_serve(tmp_path)
    os.kill(serve.pid, signal.SIGKILL)
    serve.wait(timeout=30)
    procs.wait_for(lambda: not _alive(app) and not _alive(worker), 30, "both children to stop after serve was killed")


def test_serve_stops_the_app_when_the_worker_dies(sqlite_db: Database, tmp_path: Path) -> None:
    serve, _port, app, worker = _start_serve(tmp_path)
    try:
        os.kill(worker, signal.SIGKILL)
        assert serve.wait(timeout=40) != 0
    finally:
        procs.kill9(serve)
    procs.wait_for(lambda: not _alive(app), 10, "the app to stop")
    assert "worker exited" in output(tmp_path, "serve")


# ---------------------------------------------------------------------------------------------- in-process


def _worker(db: Database, **kw: Any) -> Worker:
    cfg = WorkerConfig(**{"lease_s": 30.0, "poll_interval_s": 0.1, "once": True, "auto_retrain": False, **kw})
    return Worker(db, Settings.from_env(), cfg)


def test_progress_is_throttled_and_keeps_the_last_loss_points(sqlite_db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    (jid,) = enqueue_noops(sqlite_db, 1, steps=300, sleep=0.006)
    writes: list[dict[str, Any] | None] = []
    real = jobq.heartbeat

    def counting(db: Database, job_id: int, owner: str, lease_s: float, progress: dict[str, Any] | None = None) -> Any:
        writes.append(progress)
        return real(db, job_id, owner, lease_s, progress)

    monkeypatch.setattr(jobq, "heartbeat", counting)
    t0 = time.monotonic()
    assert _worker(sqlite_db).run() == 0
    elapsed = time.monotonic() - t0
    row = job_row(sqlite_db, jid)
    assert row["status"] == "succeeded"
    # about one write a second while running (plus the final flush): far fewer than the 300 steps
    assert 1 <= len([w for w in writes if w]) <= elapsed + 2, (len(writes), elapsed)
    hist = row["progress"]["loss_history"]
    assert len(hist) == LOSS_HISTORY_POINTS and hist[-1] == [300, pytest.approx(1 / 300)]
    assert hist[0][0] == 300 - LOSS_HISTORY_POINTS + 1
    assert row["progress"]["step"] == 300 and row["progress"]["total"] == 300 and "eta_s" in row["progress"]


def test_failed_job_records_the_error_and_traceback(sqlite_db: Database) -> None:
    (jid,) = enqueue_noops(sqlite_db, 1, steps=3, sleep=0.0, fail_at=2)
    assert _worker(sqlite_db).run() == 0
    row = job_row(sqlite_db, jid)
    assert row["status"] == "failed" and "fail at step 2" in row["error"] and row["attempts"] == 1
    with sqlite_db.read() as s:
        logs = "\n".join(r.line for r in jobq.job_logs(s, jid))
    assert "Traceback" in logs and "run_noop" in logs


def test_lost_lease_stops_the_job_and_changes_nothing(sqlite_db: Database) -> None:
    (jid,) = enqueue_noops(sqlite_db, 1, steps=100, sleep=0.05)
    w = _worker(sqlite_db, lease_s=0.9, progress_interval_s=0.2)

    def steal() -> None:
        procs.wait_for(lambda: job_row(sqlite_db, jid)["status"] == "running", 30, "job to run")
        with sqlite_db.write() as s:
            s.execute(update(Job).where(Job.id == jid).values(lease_owner="thief"))

    t = threading.Thread(target=steal)
    t.start()
    t0 = time.monotonic()
    assert w.run() == 0
    t.join()
    assert time.monotonic() - t0 < 4.5  # stopped within a heartbeat or two, not after 100 steps
    row = job_row(sqlite_db, jid)
    assert row["status"] == "running" and row["lease_owner"] == "thief" and row["result"] is None


def test_device_choice(sqlite_db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    with sqlite_db.write() as s:
        ft = jobq.enqueue(s, "train", {"mode": "finetune"})
        head = jobq.enqueue(s, "train", {"mode": "head"})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _worker(sqlite_db).resolve_device(ft) == "cpu"
    with pytest.raises(RuntimeError, match="no CUDA device"):
        _worker(sqlite_db, device="cuda").resolve_device(ft)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert _worker(sqlite_db).resolve_device(ft) == "cuda"
    assert _worker(sqlite_db).resolve_device(head) == "cpu"
    assert _worker(sqlite_db, device="cpu").resolve_device(ft) == "cpu"
    with pytest.raises(ValueError, match="WorkerConfig.device"):
        WorkerConfig(device="tpu")
