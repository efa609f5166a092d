"""CI-sized load: several labeler processes submit through the Label page's code path while a dashboard
reader polls and a worker retrains, on SQLite and PostgreSQL. Every acknowledged label must be stored exactly
once with its source and annotator, and no error may reach a labeler. The long run is ``bench/load.py``."""
from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

from db.models import Job, JobKind, JobStatus
from db.session import Database
from tests.integration import procs

N_LABELERS = 4
N_LABELS = 30


def _busy_jobs(db: Database) -> int:
    with db.read() as s:
        return s.query(Job).filter(Job.status.in_([JobStatus.queued, JobStatus.running])).count()


def test_concurrent_labelers_reader_and_retraining_worker_lose_nothing(any_db: Database, home: Path, tmp_path: Path) -> None:
    from db import policy
    from db.models import ModelVersion
    from tests.integration.rm_seed import tiny_backbone

    procs.seed_comparisons(any_db, N_LABELS + 5)
    with any_db.write() as s:  # retrain every 50 new labels, on a tiny backbone
        policy.set_policy(s, enabled=True, mode="head", min_new_labels=50, min_interval_s=0.0, rescore=False,
                          train_params={"backbone": str(tiny_backbone(home)), "epochs": 5, "max_length": 32})
    worker = procs.spawn([sys.executable, "-m", "cli", "worker", "--poll-interval", "0.2", "--device", "cpu"],
                         out_dir=tmp_path, name="worker")
    reader = None
    children: list = []
    try:
        procs.wait_for(lambda: " started (lease" in (tmp_path / "worker.out").read_text(), 90, "the worker to start")
        stop = tmp_path / "stop"
        rlog = tmp_path / "reader.jsonl"
        reader = procs.spawn_role(
            "reader", "--seconds", "120", "--interval-ms", "20", "--log", str(rlog), "--stop-file", str(stop),
            "--url", any_db.url, out_dir=tmp_path, name="reader",
        )
        logs: dict[str, tuple[Path, str]] = {}
        for i in range(N_LABELERS):
            name, source = f"lab{i}<b>", procs.SOURCES[i % 3]
            log = tmp_path / f"lab{i}.jsonl"
            logs[name] = (log, source)
            children.append(procs.spawn_role(
                "labeler", "--name", name, "--n", str(N_LABELS), "--log", str(log), "--source", source,
                "--think-ms", "100", "--url", any_db.url, out_dir=tmp_path, name=f"lab{i}",
            ))
        codes = procs.wait_all(children, timeout=120)
        labels_done = time.time()
        stop.touch()
        procs.wait_for(lambda: not _busy_jobs(any_db), 120, "the worker to finish its retrain and rescore jobs")
        worker.send_signal(signal.SIGTERM)
        assert procs.wait_all([reader, worker], timeout=60) == [0, 0], (tmp_path / "worker.out").read_text()[-3000:]
    finally:
        for p in [worker, *([reader] if reader else []), *children]:
            procs.kill9(p)
    assert codes == [0] * N_LABELERS, [(tmp_path / f"lab{i}.out").read_text()[-2000:] for i in range(N_LABELERS)]

    audit = procs.audit_labels(any_db, logs)
    assert audit.ok, audit.summary()
    assert len(audit.acked) == N_LABELERS * N_LABELS
    done = [e for e in procs.read_log(rlog) if e["ev"] == "done"][0]
    assert done["n_errors"] == 0, done["errors"]
    assert done["reads"] > 10
    with any_db.read() as s:  # the worker retrained while the labelers were at work, and published
        trains = [(j.status, j.error, j.started_at) for j in s.query(Job).filter(Job.kind == JobKind.train)]
        done_ = [t.timestamp() for st, _, t in trains if st is JobStatus.succeeded]
        assert s.query(ModelVersion).count() == len(done_) >= 1
    # none failed (a retrain the policy enqueued after the last label may be released back on SIGTERM)
    assert all(st in (JobStatus.succeeded, JobStatus.queued) for st, _, _ in trains), trains
    assert min(done_) < labels_done, (tmp_path / "worker.out").read_text()[-3000:]
    if any_db.is_sqlite:
        assert procs.sqlite_integrity(procs.sqlite_path(any_db.url)) == "ok"


def test_resubmitting_the_same_keys_adds_nothing(any_db: Database, tmp_path: Path) -> None:
    """Two processes replaying one labeler's keys at once (double clicks, retries): each label exists once."""
    procs.seed_comparisons(any_db, 5, hostile=False)
    log_a, log_b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    kids = [
        procs.spawn_role("labeler", "--name", "ann", "--n", "25", "--fixed", "--log", str(p), "--url", any_db.url,
                         out_dir=tmp_path, name=p.stem)
        for p in (log_a, log_b)
    ]
    assert procs.wait_all(kids, timeout=90) == [0, 0]
    created = [e["created"] for p in (log_a, log_b) for e in procs.read_log(p) if e["ev"] == "ok"]
    audit = procs.audit_labels(any_db, {"ann": (log_a, "crowd")})
    assert audit.ok, audit.summary()  # includes comparisons.label_count == its labels (no double count)
    assert len(created) == 50 and sum(created) == 25  # exactly one of the two submissions of each key created it
    with any_db.read() as s:
        from sqlalchemy import func, select

        from db.models import Label

        assert s.scalar(select(func.count()).select_from(Label)) == 25
