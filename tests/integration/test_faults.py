"""kill -9 in the middle of things: a labeler holding an open write, labelers at random moments, the app server
(and the worker mid-publish, see ``test_worker_killed_mid_publish``). Afterwards ``PRAGMA integrity_check`` is
ok, every acknowledged label is stored exactly once, and the killed role resumes."""
from __future__ import annotations

import os
import random
import socket
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from db.session import Database
from tests.integration import procs


def _labeler(db: Database, tmp: Path, name: str, n: int, *extra: str, source: str = "crowd", tag: str = "") -> tuple[object, Path]:
    log = tmp / f"{name}.jsonl"
    p = procs.spawn_role(
        "labeler", "--name", name, "--n", str(n), "--log", str(log), "--source", source, "--url", db.url, *extra,
        out_dir=tmp, name=f"{name}{tag}",
    )
    return p, log


def _check_db(db: Database) -> None:
    if db.is_sqlite:
        assert procs.sqlite_integrity(procs.sqlite_path(db.url)) == "ok"


def test_labeler_killed_inside_a_write_transaction(any_db: Database, tmp_path: Path) -> None:
    """The labeler is killed after its INSERTs and before COMMIT, holding SQLite's write lock; the others keep
    going, the uncommitted label is absent, and the restarted labeler re-submits it once."""
    procs.seed_comparisons(any_db, 30)
    victim, vlog = _labeler(any_db, tmp_path, "victim", 20, "--pause-every", "6", "--pause-seconds", "120")
    others = [_labeler(any_db, tmp_path, f"other{i}", 20, source="expert")[0] for i in range(2)]
    paused = procs.wait_for_event(vlog, "in_commit", timeout=60, proc=victim)
    procs.kill9(victim)
    key = paused["key"]
    assert key not in {e["key"] for e in procs.read_log(vlog) if e["ev"] == "ok"}
    from sqlalchemy import select

    from db.models import Label

    with any_db.read() as s:  # the killed transaction left nothing behind
        assert s.scalar(select(Label.id).where(Label.idempotency_key == key)) is None
    _check_db(any_db)
    again, _ = _labeler(any_db, tmp_path, "victim", 20, tag="-2")  # same log: replays the unacknowledged key
    assert procs.wait_all([again, *others], timeout=120) == [0, 0, 0]
    logs = {"victim": (vlog, "crowd"), **{f"other{i}": (tmp_path / f"other{i}.jsonl", "expert") for i in range(2)}}
    audit = procs.audit_labels(any_db, logs)
    assert audit.ok, audit.summary()
    assert len(audit.acked) == 60 and key in audit.acked
    _check_db(any_db)


def test_labelers_killed_at_random_moments(sqlite_db: Database, tmp_path: Path) -> None:
    """Three labelers, one of them killed and restarted at random moments: nothing lost, nothing doubled."""
    rng = random.Random(7)
    procs.seed_comparisons(sqlite_db, 45)
    steady = [_labeler(sqlite_db, tmp_path, f"steady{i}", 40)[0] for i in range(2)]
    kills = 0
    for round_ in range(4):
        p, log = _labeler(sqlite_db, tmp_path, "flaky", 40, tag=f"-{round_}")
        procs.wait_for_event(log, "try", timeout=60)
        time.sleep(rng.uniform(0.05, 0.6))
        if p.poll() is None:
            procs.kill9(p)
            kills += 1
    final, _ = _labeler(sqlite_db, tmp_path, "flaky", 40, tag="-final")
    assert procs.wait_all([final, *steady], timeout=120) == [0, 0, 0]
    print(f"labeler kills: {kills}")  # collected for RELIABILITY.md
    assert kills >= 2
    logs = {n: (tmp_path / f"{n}.jsonl", "crowd") for n in ("flaky", "steady0", "steady1")}
    audit = procs.audit_labels(sqlite_db, logs)
    assert audit.ok, audit.summary()
    assert len(audit.acked) == 120
    _check_db(sqlite_db)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status
    except Exception:  # noqa: BLE001 - not up yet
        return 0


def _app_cmd(port: int) -> list[str]:
    return [sys.executable, "-m", "streamlit", "run", "app/main.py", "--server.headless", "true",
            "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"]


def _start_app(tmp: Path, port: int, tag: str) -> object:
    return procs.spawn(_app_cmd(port), out_dir=tmp, name=f"app{tag}")


@pytest.mark.slow
def test_app_server_killed_while_labelers_write(sqlite_db: Database, tmp_path: Path) -> None:
    """kill -9 of the Streamlit server while labelers write: the database stays sound and a restarted server
    serves again at once."""
    procs.seed_comparisons(sqlite_db, 25)
    port = _free_port()
    app = _start_app(tmp_path, port, "1")
    health = f"http://127.0.0.1:{port}/_stcore/health"
    procs.wait_for(lambda: _get(health) == 200, 90, f"the app server's {health}", interval=0.3)
    labelers = [_labeler(sqlite_db, tmp_path, f"l{i}", 20, "--think-ms", "20")[0] for i in range(2)]
    procs.wait_for(lambda: _get(f"http://127.0.0.1:{port}/") == 200, 30, "the app's first page")
    procs.kill9(app)
    assert _get(health) == 0
    app2 = _start_app(tmp_path, port, "2")
    try:
        procs.wait_for(lambda: _get(health) == 200, 90, "the restarted app server", interval=0.3)
        assert procs.wait_all(labelers, timeout=120) == [0, 0]
    finally:
        procs.kill9(app2)
    audit = procs.audit_labels(sqlite_db, {f"l{i}": (tmp_path / f"l{i}.jsonl", "crowd") for i in range(2)})
    assert audit.ok, audit.summary()
    assert len(audit.acked) == 40
    _check_db(sqlite_db)


_PAUSE_COMMIT = """
import os, time
if os.environ.get("RMSTUDIO_TEST_PAUSE_COMMIT_MARKER"):
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    @event.listens_for(Engine, "commit")
    def _pause_in_commit(conn):
        with open(os.environ["RMSTUDIO_TEST_PAUSE_COMMIT_MARKER"], "a") as f:
            f.write(str(os.getpid()) + "\\n")
        time.sleep(3600)
"""


@pytest.mark.slow
def test_app_server_killed_inside_a_label_write(sqlite_db: Database, tmp_path: Path) -> None:
    """A browser clicks 'A better'; the Streamlit server is killed -9 inside that label's write transaction
    (holding SQLite's write lock) while labeler processes write. The half-done label is absent, the labelers
    lose nothing, and the restarted server stores the retried click once."""
    pytest.importorskip("playwright.sync_api", reason="the playwright package is missing")
    from sqlalchemy import func, select

    from db.models import Annotator, Label
    from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS

    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    procs.seed_comparisons(sqlite_db, 30)
    with sqlite_db.write() as s:  # the browser labels through web's personal link
        from db.annotators import add_annotator, invite

        add_annotator(s, "web", "expert", by="researcher")
        token = invite(s, "web", by="researcher")
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(_PAUSE_COMMIT)
    marker = tmp_path / "commit-paused"
    port = _free_port()
    app = procs.spawn(_app_cmd(port), out_dir=tmp_path, name="app1", env={
        "RMSTUDIO_TEST_PAUSE_COMMIT_MARKER": str(marker), "PYTHONPATH": f"{inject}{os.pathsep}{procs.REPO}"})
    health = f"http://127.0.0.1:{port}/_stcore/health"
    url = f"http://127.0.0.1:{port}/?invite={token}"

    def web_labels() -> int:
        with sqlite_db.read() as s:
            return int(s.scalar(select(func.count()).select_from(Label).join(Annotator).where(Annotator.name == "web")) or 0)

    labelers: list = []
    try:
        procs.wait_for(lambda: _get(health) == 200, 90, "the app server", interval=0.3)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page()
            page.goto(url)
            page.get_by_role("button", name="A better").wait_for(timeout=60_000)
            labelers = [_labeler(sqlite_db, tmp_path, f"l{i}", 20, "--think-ms", "50")[0] for i in range(2)]
            page.get_by_role("button", name="A better").click()
            procs.wait_for(lambda: marker.exists() and marker.read_text().strip(), 60, "the server to pause in its commit")
            procs.kill9(app)
            assert web_labels() == 0  # the killed transaction left nothing
            _check_db(sqlite_db)
            app = procs.spawn(_app_cmd(port), out_dir=tmp_path, name="app2")
            procs.wait_for(lambda: _get(health) == 200, 90, "the restarted app server", interval=0.3)
            page.goto(url)  # the labeler reloads and clicks again
            page.get_by_role("button", name="A better").wait_for(timeout=60_000)
            page.get_by_role("button", name="A better").click()
            procs.wait_for(web_labels, 60, "the retried label to be stored")
            browser.close()
        assert procs.wait_all(labelers, timeout=120) == [0, 0]
    finally:
        procs.kill9(app)
        for p in labelers:
            procs.kill9(p)
    assert web_labels() == 1
    audit = procs.audit_labels(sqlite_db, {f"l{i}": (tmp_path / f"l{i}.jsonl", "crowd") for i in range(2)})
    assert audit.ok and len(audit.acked) == 40, audit.summary()
    _check_db(sqlite_db)


def _job(db: Database, job_id: int) -> dict:
    from db import jobs as jobq
    from db.models import Job

    with db.read() as s:
        return jobq.job_to_dict(s.get(Job, job_id))


def test_worker_killed_mid_publish(sqlite_db: Database, home: Path, tmp_path: Path) -> None:
    """kill -9 of the worker after its version files were moved into ``models/`` and before the version row:
    no version row without files and no row for the orphan folder; the lease expires, another worker
    retrains and publishes exactly one version, and a labeler writing meanwhile loses nothing.

    SQLite only: at the kill point the worker holds no transaction, so the database backend plays no part
    (lease expiry and re-queueing on PostgreSQL are covered by ``test_worker.py``)."""
    any_db = sqlite_db
    import sys

    from db import jobs as jobq
    from db.config import Settings
    from db.models import ModelVersion
    from rm_engine.versions.registry import sweep_orphans, verify_version_dir
    from tests.integration.rm_seed import seed_labels, tiny_backbone
    from worker.loop import Worker, WorkerConfig

    seed_labels(any_db, 16)
    procs.seed_comparisons(any_db, 25)
    backbone = tiny_backbone(home)
    with any_db.write() as s:
        jid = jobq.enqueue(s, "train", {"mode": "head", "backbone": str(backbone), "epochs": 5, "max_length": 32}).id
    marker = tmp_path / "fault.txt"
    worker_args = [sys.executable, "-m", "cli", "worker", "--poll-interval", "0.2", "--no-auto-retrain",
                   "--lease", "2", "--device", "cpu"]
    first = procs.spawn(worker_args, out_dir=tmp_path, name="worker1", env={
        "RMSTUDIO_FAULT_PAUSE": "publish:files-moved", "RMSTUDIO_FAULT_MARKER": str(marker)})
    lab, llog = _labeler(any_db, tmp_path, "during", 20, "--think-ms", "30")
    try:
        procs.wait_for(lambda: marker.exists() and marker.read_text().strip(), 120,
                       f"the worker to pause after moving its files ({tmp_path / 'worker1.out'})", interval=0.1)
        models = Settings.from_env().models_dir
        orphans = sorted(p.name for p in models.iterdir() if p.name.startswith("v-"))
        assert len(orphans) == 1  # the files are in place ...
        with any_db.read() as s:
            assert s.query(ModelVersion).count() == 0  # ... and no row points to them yet
        procs.kill9(first)
        # Another worker (in this process: same code, no second start-up) re-queues the job once its lease ran
        # out, retrains and publishes.
        procs.wait_for(lambda: _job(any_db, jid)["lease_expires_at"] < time.time(), 30, "the dead worker's lease to expire")
        assert Worker(any_db, Settings.from_env(), WorkerConfig(
            lease_s=30.0, poll_interval_s=0.1, once=True, auto_retrain=False, device="cpu")).run() == 0
        row = _job(any_db, jid)
        assert procs.wait_all([lab], timeout=120) == [0]
    finally:
        procs.kill9(first)
        procs.kill9(lab)
    assert row["status"] == "succeeded" and row["attempts"] == 2, row
    settings = Settings.from_env()
    with any_db.read() as s:
        versions = s.query(ModelVersion).all()
        assert len(versions) == 1 and versions[0].job_id == jid
        path = versions[0].path
        verify_version_dir(settings, path, versions[0].id)  # complete, checksums match its manifest
    assert Path(path).name not in orphans
    assert sweep_orphans(settings, {path}, min_age_s=0) == orphans  # the killed publisher's folder is garbage
    audit = procs.audit_labels(any_db, {"during": (llog, "crowd")})
    assert audit.ok and len(audit.acked) == 20, audit.summary()
    _check_db(any_db)
