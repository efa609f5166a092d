"""Cross-validation as a worker job: ``rmstudio cv --queue`` on SQLite and PostgreSQL (the migrated job-kind
constraint accepts it), run by a worker, the result pooled over every held-out pair, nothing published; and
cancellation between folds."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import func, select

from cli import main
from db import jobs as jobq
from db.config import Settings
from db.models import Job, JobStatus, ModelVersion
from db.session import Database
from rm_engine.config import Cancelled, TrainConfig
from rm_engine.crossval import cross_validate
from rm_engine.training import load_pair_set
from tests.integration.rm_seed import engine_settings, one_thread, seed_labels, tiny_encoder  # noqa: F401
from worker.loop import Worker, WorkerConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def test_queued_cv_job_runs_on_a_worker(any_db: Database, engine_settings, tiny_encoder: Path, capsys) -> None:
    seed_labels(any_db, 12, test_prompts=2)
    rc = main(["cv", "--queue", "--json", "--folds", "3", "--backbone", str(tiny_encoder), "--max-length", "64",
               "--epochs", "30", "--lr", "0.01"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    job_id = json.loads(out.out)["job_id"]
    cfg = WorkerConfig(lease_s=30.0, poll_interval_s=0.1, once=True, auto_retrain=False, preload=False, device="cpu")
    Worker(any_db, Settings.from_env(), cfg).run()
    with any_db.read() as s:
        job = s.get(Job, job_id)
        assert job.status is JobStatus.succeeded, job.error
        res, params = job.result, job.params
        logs = [ln.line for ln in jobq.job_logs(s, job_id)]
        assert s.scalar(select(func.count()).select_from(ModelVersion)) == 0  # measured, not published
    assert params["folds"] == 3 and params["backbone"] == str(tiny_encoder)
    assert res["k"] == 3 and res["n"] == 12 and sum(f["n_held_out"] for f in res["folds"]) == 12  # test split out
    right = sum(round(f["accuracy"] * f["n_held_out"]) for f in res["folds"])
    assert res["accuracy"] == pytest.approx(right / 12) and res["std_error"] is not None
    assert any("fold 3/3: held-out accuracy" in line for line in logs)
    assert main(["jobs"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.strip().startswith(str(job_id)))
    assert f"cross-validated accuracy {100 * res['accuracy']:.1f}%" in line and "(3 folds, 12 pairs)" in line


def test_cross_validation_stops_between_folds(sqlite_db: Database, engine_settings, tiny_encoder: Path) -> None:
    seed_labels(sqlite_db, 9)
    cfg = TrainConfig(backbone=str(tiny_encoder), max_length=64, epochs=10)
    folds_seen: list[int] = []
    with pytest.raises(Cancelled, match="before fold 2 of 3"):
        cross_validate(engine_settings, cfg, load_pair_set(sqlite_db, cfg), 3,
                       on_fold=lambda f: folds_seen.append(f["fold"]), should_stop=lambda: bool(folds_seen))
    assert folds_seen == [0]
