"""The retrain policy (db/policy.py) and real training under worker processes.

* policy: validation, generic settings, counting new labels against the training watermark, ``should_retrain``;
* after N new labels, two workers enqueue exactly one automatic retrain, a version appears and the stored
  responses are rescored; the next N labels give exactly one more;
* kill -9 of a worker mid-training: the job is re-queued after its lease and completes on another worker,
  and no incomplete version is ever visible; a cancelled training job publishes nothing (no row, no folder).

Training is head mode on a tiny random BERT (``tests/tiny_models.py``) so a retrain takes well under a second.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from db import jobs as jobq
from db import policy as pol
from db import store
from db.config import Settings
from db.models import Job, JobKind, JobStatus, ModelVersion, ResponseScore
from db.session import Database
from db.versions import insert_version
from tests.integration import procs
from tests.integration.test_worker import job_row, output, start_worker, stop, wait_started

# ---------------------------------------------------------------------------------------------- helpers


def seed(db: Database, n_prompts: int) -> list[tuple[int, str]]:
    """Prompts with a good and a bad response; returns ``(comparison id, stored outcome for 'good wins')``."""
    out = []
    with db.write() as s:
        for i in range(n_prompts):
            p = store.get_or_create_prompt(s, f"Question {i}: how do I do task {i % 4}?")
            good = store.get_or_create_response(s, p, f"Here is a careful, helpful answer to task {i}.")
            bad = store.get_or_create_response(s, p, f"No. Figure it out yourself ({i}).")
            oc = store.get_or_create_comparison(s, good, bad)
            out.append((oc.comparison.id, oc.outcome_to_stored("a").value))
    return out


def label(db: Database, pairs: list[tuple[int, str]], keys: range, annotator: str = "amy") -> None:
    """One label per key, each in its own transaction (as the Label page does)."""
    for k in keys:
        cid, outcome = pairs[k % len(pairs)]
        with db.write() as s:
            store.add_label(s, comparison_id=cid, outcome=outcome, source="crowd", annotator=annotator,
                            idempotency_key=f"{annotator}-{k}")


def count(db: Database, q: Any) -> int:
    with db.read() as s:
        return int(s.scalar(q) or 0)


def train_jobs(db: Database) -> list[dict[str, Any]]:
    with db.read() as s:
        return [jobq.job_to_dict(j) for j in s.scalars(select(Job).where(Job.kind == JobKind.train).order_by(Job.id))]


@pytest.fixture(scope="module")
def _tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny_models import build_tiny_encoder

    return build_tiny_encoder(tmp_path_factory.mktemp("backbones") / "tiny")


@pytest.fixture
def tiny_backbone(home: Path, _tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A tiny random BERT (built once per module), allowed through ``RMSTUDIO_MODEL_DIRS``."""
    monkeypatch.setenv("RMSTUDIO_MODEL_DIRS", str(_tiny_dir.parent))
    return str(_tiny_dir)


def _version(db: Database, **kw: Any) -> int:
    with db.write() as s:
        return insert_version(s, mode="head", backbone="minilm", path="models/v-x", config={}, **kw).id


# ---------------------------------------------------------------------------------------------- policy


def test_policy_defaults_validation_and_settings(sqlite_db: Database) -> None:
    with sqlite_db.write() as s:
        p = pol.get_policy(s)
        assert p.enabled and p.min_new_labels == 20 and p.mode == "head"
        p2 = pol.set_policy(s, min_new_labels=5, min_interval_s=0, train_params={"epochs": 10})
        assert p2.min_new_labels == 5 and p2.min_interval_s == 0.0
        with pytest.raises(ValueError, match="'min_new_labels': must be a whole number"):
            pol.set_policy(s, min_new_labels=0)
        with pytest.raises(ValueError, match="'mode' must be one of head, finetune"):
            pol.set_policy(s, mode="lora")
        with pytest.raises(ValueError, match=r"unknown retrain policy field\(s\) colour"):
            pol.set_policy(s, colour="blue")
        with pytest.raises(ValueError, match="'min_interval_s'"):
            pol.set_policy(s, min_interval_s=-1)
        assert pol.get_policy(s) == p2  # refused changes left the stored policy alone
        assert pol.get_setting(s, "queue_policy", {"overlap": 1}) == {"overlap": 1}
        pol.set_setting(s, "queue_policy", {"overlap": 3})
        assert pol.get_setting(s, "queue_policy") == {"overlap": 3}
        pol.set_setting(s, "queue_policy", {"overlap": 2})  # replaces the copy the session already holds
        assert pol.get_setting(s, "queue_policy") == {"overlap": 2}
        params = pol.auto_retrain_params(s)
    assert params["mode"] == "head" and params["epochs"] == 10 and params["auto"] is True
    assert params["label_watermark"] == {"max_label_id": 0, "max_ranking_id": 0}


def test_policy_cli(sqlite_db: Database, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from cli import main as cli_main

    assert cli_main(["policy", "--disable", "--min-new-labels", "7", "--min-interval", "5", "--mode", "head",
                     "--train-param", "epochs=40", "--train-param", "head=mlp", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["enabled"] is False and out["min_new_labels"] == 7 and out["min_interval_s"] == 5.0
    assert out["train_params"] == {"epochs": 40, "head": "mlp"} and out["retrain_due"] is False
    assert out["reason"] == "automatic retraining is off"
    assert cli_main(["policy", "--enable", "--train-param", "head="]) == 0
    text = capsys.readouterr().out
    assert "automatic retraining: on" in text and "after 7 new labels" in text and '"epochs": 40' in text
    with sqlite_db.read() as s:
        assert pol.get_policy(s).train_params == {"epochs": 40}
    assert cli_main(["policy", "--train-param", "epoch=3"]) == 1
    assert "unknown TrainConfig field(s) epoch" in capsys.readouterr().err
    assert cli_main(["policy", "--min-new-labels", "0"]) == 2
    assert "argument --min-new-labels: must be a whole number from 1 to" in capsys.readouterr().err


def test_new_labels_are_counted_from_the_training_watermark(sqlite_db: Database) -> None:
    pairs = seed(sqlite_db, 3)
    label(sqlite_db, pairs, range(4))
    with sqlite_db.read() as s:
        assert pol.labels_since_last_version(s) == 4
        wm = pol.current_watermark(s)
    # A version trained by a worker job whose watermark saw the first 3 labels.
    with sqlite_db.write() as s:
        job = jobq.enqueue(s, "train")
        job.status, job.result = JobStatus.succeeded, {"label_watermark": {"max_label_id": wm.max_label_id - 1, "max_ranking_id": 0}}
    _version(sqlite_db, job_id=job.id)
    with sqlite_db.write() as s:
        assert pol.labels_since_last_version(s) == 1
        store.add_ranking(s, prompt_id=1, response_ids=[1, 2], source="expert", annotator="ed", idempotency_key="r1")
        assert pol.labels_since_last_version(s) == 2
    # A version without a job (trained inline): labels after its creation time.
    time.sleep(0.01)
    _version(sqlite_db)
    label(sqlite_db, pairs, range(10, 12))
    with sqlite_db.read() as s:
        assert pol.labels_since_last_version(s) == 2


def test_should_retrain_reasons(sqlite_db: Database) -> None:
    pairs = seed(sqlite_db, 3)
    with sqlite_db.write() as s:
        pol.set_policy(s, min_new_labels=3, min_interval_s=60)
    label(sqlite_db, pairs, range(2))
    with sqlite_db.read() as s:
        assert pol.should_retrain(s) == (False, "2 new labels since the start (no version yet); the policy needs 3")
    label(sqlite_db, pairs, range(2, 3))
    with sqlite_db.read() as s:
        ok, why = pol.should_retrain(s)
    assert ok and why.startswith("3 new labels")
    with sqlite_db.write() as s:
        pol.set_policy(s, enabled=False)
        assert pol.should_retrain(s) == (False, "automatic retraining is off")
        pol.set_policy(s, enabled=True)
        jid = jobq.enqueue(s, "train").id
    with sqlite_db.read() as s:
        assert pol.should_retrain(s) == (False, f"training job #{jid} is already queued or running")
    jobq.request_cancel(sqlite_db, jid)
    vid = _version(sqlite_db)  # no job: counted by time; now 0 new labels
    label(sqlite_db, pairs, range(3, 6))
    with sqlite_db.read() as s:
        ok, why = pol.should_retrain(s)
        assert not ok and "the policy waits 60 s" in why
        ok, why = pol.should_retrain(s, now=time.time() + 61)
        assert ok and f"since version #{vid}" in why


def test_failed_auto_retrain_waits_for_new_labels(sqlite_db: Database) -> None:
    pairs = seed(sqlite_db, 3)
    with sqlite_db.write() as s:
        pol.set_policy(s, min_new_labels=2, min_interval_s=0)
    label(sqlite_db, pairs, range(2))
    with sqlite_db.write() as s:
        job = jobq.enqueue(s, "train", pol.auto_retrain_params(s), dedupe_key=pol.AUTO_RETRAIN_KEY)
        job.status = JobStatus.failed
    with sqlite_db.read() as s:
        ok, why = pol.should_retrain(s)
    assert not ok and f"failed automatic retrain #{job.id}" in why
    label(sqlite_db, pairs, range(2, 4))
    with sqlite_db.read() as s:
        assert pol.should_retrain(s)[0]


# ---------------------------------------------------------------------------------------------- processes

WORKER = ["--poll-interval", "0.2", "--lease", "5"]


def test_n_new_labels_enqueue_one_retrain_and_a_new_version(any_db: Database, tmp_path: Path, tiny_backbone: str) -> None:
    n = 6
    pairs = seed(any_db, 12)
    with any_db.write() as s:
        pol.set_policy(s, min_new_labels=n, min_interval_s=0, train_params={"backbone": tiny_backbone, "epochs": 60})
    label(any_db, pairs, range(n - 1))
    # Two workers apply the policy. The second takes only noop jobs, so that torch is imported by one process
    # (the CPU budget of the suite), yet both race to enqueue the automatic retrain.
    kids = [start_worker(tmp_path, "w0", *WORKER), start_worker(tmp_path, "w1", *WORKER, "--kinds", "noop")]
    try:
        for i, k in enumerate(kids):
            wait_started(tmp_path, f"w{i}", k)
        time.sleep(1.0)  # several policy checks by both workers
        assert train_jobs(any_db) == [] and count(any_db, select(func.count()).select_from(ModelVersion)) == 0
        label(any_db, pairs, range(n - 1, n))  # the N-th new label
        t_label = time.time()
        v1 = procs.wait_for(lambda: count(any_db, select(func.max(ModelVersion.id))), 120, "a new version")
        t_version = time.time()
        rescore = procs.wait_for(
            lambda: [r for r in _jobs(any_db, JobKind.rescore) if r["status"] in ("succeeded", "failed")], 60, "rescore"
        )
        time.sleep(1.0)  # more policy checks: nothing new to train on
        jobs1 = train_jobs(any_db)
        # the next N labels: exactly one more retrain
        label(any_db, pairs, range(n, 2 * n), annotator="bob")
        procs.wait_for(lambda: count(any_db, select(func.count()).select_from(ModelVersion)) >= 2, 120, "a second version")
        rescores = procs.wait_for(
            lambda: (lambda r: r if len(r) == 2 and r[1]["status"] in ("succeeded", "failed") else None)(
                _jobs(any_db, JobKind.rescore)), 60, "the second rescore")
        time.sleep(0.6)
        jobs2 = train_jobs(any_db)
    finally:
        codes = [stop(k) for k in kids]
    assert codes == [0, 0], [output(tmp_path, f"w{i}")[-2000:] for i in range(2)]
    assert len(jobs1) == 1, jobs1
    (auto,) = jobs1
    assert auto["dedupe_key"] == pol.AUTO_RETRAIN_KEY and auto["status"] == "succeeded" and auto["attempts"] == 1
    assert auto["created_by"].startswith("retrain policy") and auto["device"] == "cpu"
    assert auto["result"]["version_id"] == v1
    assert auto["progress"]["phase"] == "done" and auto["progress"]["loss_history"], auto["progress"]
    assert auto["progress"]["val_accuracy"] is not None
    with any_db.read() as s:
        v = s.get(ModelVersion, v1)
        assert v.job_id == auto["id"] and v.n_labels == n
        n_scores = s.scalar(select(func.count()).select_from(ResponseScore).where(ResponseScore.model_version_id == v1))
    assert rescore[0]["status"] == "succeeded", rescore[0]
    assert rescore[0]["params"] == {"after_job": auto["id"]} and rescore[0]["result"]["version_id"] == v1
    assert n_scores == 24  # every stored response scored under the new version
    assert rescore[0]["result"]["rows"] >= 12  # at least the 12 responses no label had reached yet
    assert len(jobs2) == 2 and jobs2[1]["status"] == "succeeded" and jobs2[1]["dedupe_key"] == pol.AUTO_RETRAIN_KEY
    # every comparison is labelled now: training cached all 24 scores, so the rescore had nothing left to do
    assert rescores[1]["status"] == "succeeded" and rescores[1]["result"]["already_scored"] == 24
    print(f"N-th label -> version: {t_version - t_label:.2f} s")


def _jobs(db: Database, kind: JobKind) -> list[dict[str, Any]]:
    with db.read() as s:
        return [jobq.job_to_dict(j) for j in s.scalars(select(Job).where(Job.kind == kind).order_by(Job.id))]


class VersionWatcher(threading.Thread):
    """Polls every 20 ms: every visible version row must have complete, verified files."""

    def __init__(self, db: Database, settings: Settings) -> None:
        super().__init__(daemon=True)
        self.db, self.settings = db, settings
        self.done = threading.Event()
        self.problems: list[str] = []
        self.checks = 0

    def run(self) -> None:
        from rm_engine.versions.registry import verify_version_dir

        while not self.done.wait(0.02):
            with self.db.read() as s:
                rows = s.execute(select(ModelVersion.id, ModelVersion.path)).all()
            for vid, path in rows:
                try:
                    verify_version_dir(self.settings, path, vid)
                except Exception as exc:  # noqa: BLE001
                    self.problems.append(f"version {vid}: {exc}")
            self.checks += 1


def _model_dirs(settings: Settings) -> list[str]:
    d = Path(settings.models_dir)
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


def test_training_survives_kill9_and_cancel_publishes_nothing(any_db: Database, tmp_path: Path, tiny_backbone: str) -> None:
    settings = Settings.from_env()
    pairs = seed(any_db, 12)
    label(any_db, pairs, range(12))
    with any_db.write() as s:
        pol.set_policy(s, enabled=False)
        long = {"backbone": tiny_backbone, "patience": 1_000_000, "mode": "head"}
        # long enough to be seen mid-training whatever the machine's speed, short enough to finish on worker b
        killed = jobq.enqueue(s, "train", {**long, "epochs": 20_000}).id
    watcher = VersionWatcher(any_db, settings)
    watcher.start()
    a = start_worker(tmp_path, "a", *WORKER[:2], "--lease", "2")
    b = None
    try:
        # 1. kill -9 in the middle of training; b starts once a holds the job, and takes it over
        wait_started(tmp_path, "a", a)
        procs.wait_for(lambda: job_row(any_db, killed)["status"] == "running", 90, "worker a to claim the job")
        b = start_worker(tmp_path, "b", *WORKER)
        wait_started(tmp_path, "b", b)
        procs.wait_for(lambda: (job_row(any_db, killed)["progress"] or {}).get("step", 0) >= 50, 90, "training steps")
        procs.kill9(a)
        assert count(any_db, select(func.count()).select_from(ModelVersion)) == 0
        row = procs.wait_for(lambda: (lambda r: r if r["status"] not in ("queued", "running") else None)(
            job_row(any_db, killed)), 120, "the killed job to finish on worker b")
        assert row["status"] == "succeeded" and row["attempts"] == 2, row
        # 2. cancel in the middle of training
        with any_db.write() as s:
            cancelled = jobq.enqueue(s, "train", {**long, "epochs": 100_000}).id
        procs.wait_for(lambda: (job_row(any_db, cancelled)["progress"] or {}).get("step", 0) >= 20, 90, "training steps")
        dirs_before = _model_dirs(settings)
        jobq.request_cancel(any_db, cancelled)
        crow = procs.wait_for(lambda: (lambda r: r if r["status"] not in ("queued", "running") else None)(
            job_row(any_db, cancelled)), 60, "the cancelled job to stop")
        assert stop(b) == 0
    finally:
        watcher.done.set()
        watcher.join()
        procs.kill9(a)
        if b is not None:
            procs.kill9(b)
    assert watcher.problems == [] and watcher.checks > 10
    with any_db.read() as s:
        versions = s.execute(select(ModelVersion.id, ModelVersion.job_id, ModelVersion.path)).all()
    assert [(v.job_id) for v in versions] == [killed]  # one version, from the re-run; none from the cancel
    assert crow["status"] == "cancelled" and crow["progress"]["step"] < 100_000 and crow["result"] is None
    assert _model_dirs(settings) == dirs_before == [Path(versions[0].path).name]  # no folder from the cancel
