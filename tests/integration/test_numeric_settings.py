"""Bad numbers and paths are refused where they enter, on SQLite and PostgreSQL: NaN/inf training settings never
publish a model, worker leases are real leases, ports and environment limits are checked before anything starts,
queued runs are checked as the worker will check them, and no JSON column stores NaN."""
from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select, update

from cli import main
from db import jobs as jobq
from db import policy as pol
from db.config import Settings
from db.models import Job, JobKind, JobStatus, ModelVersion
from db.session import Database
from db.versions import insert_version
from rm_engine.config import TrainConfig
from tests.integration.rm_seed import engine_settings, one_thread, seed_labels, tiny_encoder  # noqa: F401
from worker.loop import Worker, WorkerConfig

NAN, INF = float("nan"), float("inf")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def one_line_naming(err: str, *needles: str) -> None:
    """The CLI's refusal: exactly one line on stderr, mentioning each needle, no traceback."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and all(n in lines[0] for n in needles), err


def counts(db: Database) -> tuple[int, int]:
    with db.read() as s:
        return (s.scalar(select(func.count()).select_from(Job)) or 0,
                s.scalar(select(func.count()).select_from(ModelVersion)) or 0)


# ------------------------------------------------------------------ NaN / inf training settings


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("flags,flag", [
    (("--weight-decay", "nan"), "--weight-decay"), (("--center-coef", "nan"), "--center-coef"),
    (("--margin-from-strength", "inf"), "--margin-from-strength"), (("--lr", "inf"), "--lr"),
    (("--source-weights", "expert=inf"), "--source-weights"), (("--val-fraction", "nan"), "--val-fraction"),
])
@pytest.mark.parametrize("inline", [True, False], ids=["inline", "queued"])
def test_nan_and_inf_training_settings_are_refused_and_nothing_is_stored(
        any_db: Database, engine_settings: Settings, tiny_encoder: Path, capsys: pytest.CaptureFixture[str],
        flags: tuple[str, str], flag: str, inline: bool) -> None:
    seed_labels(any_db, 12)
    rc, _, err = run(capsys, "train", *(("--inline",) if inline else ()), "--backbone", str(tiny_encoder),
                     "--max-length", "64", "--epochs", "20", *flags)
    assert rc in (1, 2)
    one_line_naming(err, flag, repr(flags[1].split("=")[-1]))
    assert counts(any_db) == (0, 0)  # no job queued, no version published


@pytest.mark.parametrize("kw", [{"weight_decay": NAN}, {"center_coef": NAN}, {"margin_from_strength": INF},
                                {"lr": INF}, {"lr": -INF}, {"source_weights": {"expert": INF}}, {"epochs": INF},
                                {"seed": NAN}, {"val_fraction": NAN}, {"ensemble": 2.5}, {"epochs": True},
                                {"epochs": "abc"}, {"lora": "abc"}])
def test_train_config_refuses_non_finite_and_wrongly_typed_values(kw: dict) -> None:
    name = next(iter(kw))
    with pytest.raises(ValueError, match=rf"TrainConfig\.{name}: .*\(got "):
        TrainConfig(**kw)


@pytest.mark.usefixtures("one_thread")
def test_the_worker_refuses_a_job_stored_with_out_of_range_settings(any_db: Database, engine_settings: Settings,
                                                                    tiny_encoder: Path) -> None:
    """A train job queued before its settings were checked (here lr 1e6, accepted then) fails naming the field;
    nothing is published."""
    seed_labels(any_db, 12)
    with any_db.write() as s:
        job_id = jobq.enqueue(s, JobKind.train, {"backbone": str(tiny_encoder), "max_length": 64, "epochs": 20,
                                                 "lr": 1e6}).id
    cfg = WorkerConfig(lease_s=30.0, poll_interval_s=0.1, once=True, auto_retrain=False, preload=False, device="cpu")
    assert Worker(any_db, engine_settings, cfg).run() == 0
    with any_db.read() as s:
        job = s.get(Job, job_id)
        assert job.status is JobStatus.failed and job.attempts == 1
        assert "TrainConfig.lr: must be a finite number > 0 and <= 10 (got 1000000.0)" in job.error
    assert counts(any_db)[1] == 0


def test_policy_refuses_a_nan_interval(any_db: Database, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(capsys, "policy", "--min-interval", "nan")
    assert rc == 2
    one_line_naming(err, "--min-interval", "'nan'")
    with any_db.read() as s:
        assert pol.get_policy(s) == pol.RetrainPolicy()
    with any_db.write() as s, pytest.raises(ValueError, match="'min_interval_s': must be a finite number"):
        pol.set_policy(s, min_interval_s=INF)


def test_a_policy_value_stored_before_it_was_checked_falls_back_to_its_default(sqlite_db: Database) -> None:
    with sqlite_db.write() as s:
        pol.set_setting(s, pol.RETRAIN_POLICY_KEY, {"min_interval_s": -5, "min_new_labels": 3, "enabled": False})
    with sqlite_db.read() as s:
        assert pol.get_policy(s) == pol.RetrainPolicy(min_new_labels=3, enabled=False)


# ------------------------------------------------------------------ leases and the worker's intervals


@pytest.mark.parametrize("flags", [("--lease", "nan"), ("--lease", "inf"), ("--lease", "0"), ("--lease", "-1"),
                                   ("--poll-interval", "nan"), ("--poll-interval", "inf"), ("--poll-interval", "0"),
                                   ("--gpus", "0"), ("--max-jobs", "0")])
def test_worker_refuses_leases_and_intervals_that_are_not_numbers_in_range(
        sqlite_db: Database, capsys: pytest.CaptureFixture[str], flags: tuple[str, str]) -> None:
    t0 = time.monotonic()
    rc, _, err = run(capsys, "worker", "--once", "--no-preload", *flags)
    assert rc == 2 and time.monotonic() - t0 < 10
    one_line_naming(err, "rmstudio worker: error: argument " + flags[0], repr(flags[1]))


@pytest.mark.parametrize("lease", [NAN, INF, 0.0, -1.0])
def test_claim_and_heartbeat_refuse_a_lease_that_is_not_a_lease(any_db: Database, lease: float) -> None:
    with any_db.write() as s:
        job_id = jobq.enqueue(s, JobKind.noop, {}).id
    with pytest.raises(ValueError, match="lease_s must be a number of seconds"):
        jobq.claim(any_db, "w1", lease)
    with pytest.raises(ValueError, match=r"WorkerConfig\.lease_s: must be a finite number > 0 and <= 86400"):
        WorkerConfig(lease_s=lease)
    assert jobq.claim(any_db, "w1", 30.0).id == job_id
    with pytest.raises(ValueError, match="lease_s must be a number of seconds"):
        jobq.heartbeat(any_db, job_id, "w1", lease)


@pytest.mark.parametrize("stored", [None, NAN, INF])
def test_a_job_stranded_with_no_real_lease_is_requeued(any_db: Database, stored: float | None) -> None:
    """A running job whose lease is NULL (SQLite's NaN), NaN (PostgreSQL) or infinite, as an unchecked
    ``--lease nan|inf`` left them, is re-queued by the next worker's housekeeping instead of blocking for ever."""
    with any_db.write() as s:
        job_id = jobq.enqueue(s, JobKind.noop, {}).id
    jobq.claim(any_db, "gone-worker", 30.0)
    with any_db.write() as s:
        s.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=stored))
    Worker(any_db, Settings.from_env(), WorkerConfig(auto_retrain=False, preload=False)).housekeeping()
    with any_db.read() as s:
        job = s.get(Job, job_id)
        assert job.status is JobStatus.queued and "gone-worker" in job.error and job.lease_expires_at is None
    claimed = jobq.claim(any_db, "w2", 30.0)  # and it runs again
    assert claimed.id == job_id and claimed.lease_expires_at > time.time() + 20


# ------------------------------------------------------------------ ports and environment limits


@pytest.mark.parametrize("argv", [("reward-server", "--port", "70000"), ("reward-server", "--port", "-1"),
                                  ("reward-server", "--port", "0"), ("reward-server", "--port", "http"),
                                  ("serve", "--port", "70000"), ("serve", "--no-worker", "--port", "-1")])
def test_ports_are_checked_before_anything_loads(sqlite_db: Database, capsys: pytest.CaptureFixture[str],
                                                 argv: tuple[str, ...]) -> None:
    rc, _, err = run(capsys, *argv)
    assert rc == 2
    one_line_naming(err, f"rmstudio {argv[0]}: error: argument --port: must be a whole number from 1 to 65535",
                    f"see rmstudio {argv[0]} --help")


@pytest.mark.parametrize("value", ["-5", "0", "abc", "nan", "1e12"])
def test_a_bad_upload_limit_in_the_environment_is_named_and_serve_starts_nothing(home: Path, value: str) -> None:
    with pytest.raises(ValueError, match=f"RMSTUDIO_MAX_UPLOAD_MB: must be a whole number from 1 to 100000 \\(got '{value}'\\)"):
        Settings.from_env({"RMSTUDIO_MAX_UPLOAD_MB": value})
    env = {**os.environ, "RMSTUDIO_MAX_UPLOAD_MB": value}
    done = subprocess.run([sys.executable, "-m", "cli", "serve", "--no-worker", "--port", "18999"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    one_line_naming(done.stderr, "rmstudio serve: error: RMSTUDIO_MAX_UPLOAD_MB", repr(value))
    assert "RM Studio on http" not in done.stderr  # the app was never started


# ------------------------------------------------------------------ queued runs checked as the worker checks them


@pytest.mark.parametrize("backbone", ["/etc", "../../x", "https://example.com/model", "no-such-folder"])
@pytest.mark.parametrize("command", [("train",), ("cv", "--queue")])
def test_a_queued_run_with_an_unusable_backbone_is_refused_at_once(any_db: Database, engine_settings: Settings,
                                                                   capsys: pytest.CaptureFixture[str], backbone: str,
                                                                   command: tuple[str, ...]) -> None:
    rc, _, err = run(capsys, *command, "--backbone", backbone)
    assert rc == 1
    one_line_naming(err, f"rmstudio {command[0]}: error: --backbone: backbone")
    assert counts(any_db) == (0, 0)


def test_a_queued_run_with_a_usable_backbone_is_queued(sqlite_db: Database, engine_settings: Settings,
                                                       tiny_encoder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "train", "--backbone", str(tiny_encoder), "--json")[0] == 0
    assert run(capsys, "cv", "--queue", "--backbone", str(tiny_encoder), "--json")[0] == 0
    assert counts(sqlite_db) == (2, 0)


@pytest.mark.parametrize("param,needle", [
    ("epochs=-1", "--train-param epochs: must be a whole number"), ("epochs=abc", "(got 'abc')"),
    ("lr=NaN", "--train-param lr: must be a finite number > 0"), ("lr=nan", "(got 'nan')"),
    ("weight_decay=Infinity", "--train-param weight_decay"), ("lora=abc", "--train-param lora: must be true or false"),
    ("backbone=/etc", "outside the allowed model folders"), ("gpus=2", "--train-param gpus"),
])
def test_policy_train_params_are_checked_as_the_worker_will(any_db: Database, capsys: pytest.CaptureFixture[str],
                                                            param: str, needle: str) -> None:
    assert run(capsys, "policy", "--train-param", "epochs=40")[0] == 0
    rc, _, err = run(capsys, "policy", "--train-param", param)
    assert rc == 1
    one_line_naming(err, "rmstudio policy: error:", needle)
    with any_db.read() as s:
        assert pol.get_policy(s).train_params == {"epochs": 40}  # the refused change stored nothing


def test_changing_the_policy_mode_checks_its_stored_parameters(sqlite_db: Database,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "policy", "--mode", "finetune", "--train-param", "gpus=2")[0] == 0
    rc, _, err = run(capsys, "policy", "--mode", "head")  # head mode trains in one process
    assert rc == 1 and "--train-param gpus" in err
    with sqlite_db.read() as s:
        assert pol.get_policy(s).mode == "finetune"


# ------------------------------------------------------------------ training that does not converge


def test_a_head_whose_loss_is_never_finite_is_not_converged() -> None:
    """Head training on a feature that is NaN everywhere (its loss is never finite, as with the NaN coefficients
    unchecked settings once allowed) never improves on its initial weights; ``check_converged`` refuses it, so it
    is never published."""
    from rm_engine.head.train import PairArrays, train_heads
    from rm_engine.training import NotConverged, check_converged

    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 8)).astype(np.float32)
    X[::2, 0] += 2.0  # even rows are the "chosen" ones

    def pairs(lo: int, hi: int) -> PairArrays:
        idx = range(lo, hi, 2)
        return PairArrays.build(list(idx), [i + 1 for i in idx], [False] * len(idx), [1.0] * len(idx),
                                [0.0] * len(idx))

    cfg = TrainConfig(epochs=20, lr=0.05, weight_decay=0.01, patience=5)
    broken = X.copy()
    broken[:, 3] = NAN
    res = train_heads(broken, pairs(0, 30), cfg, val=pairs(30, 40))
    assert all(math.isnan(x) for x in res.train_loss) and res.val_loss == [INF]
    with pytest.raises(NotConverged, match="never improved on its initial weights"):
        check_converged({"final_train_loss": [1.0], "best_val_loss": res.val_loss}, TrainConfig())
    with pytest.raises(NotConverged, match="member 1 of 1 ended with training loss nan"):
        check_converged({"final_train_loss": res.train_loss}, TrainConfig())
    good = train_heads(X, pairs(0, 30), cfg, val=pairs(30, 40))
    check_converged({"final_train_loss": good.train_loss, "best_val_loss": good.val_loss}, TrainConfig())


# ------------------------------------------------------------------ JSON columns


def test_json_columns_store_nan_and_infinity_as_null(any_db: Database) -> None:
    """PostgreSQL refuses NaN in JSON (the whole publish failed); SQLite stored text no JSON parser reads."""
    with any_db.write() as s:
        job_id = jobq.enqueue(s, JobKind.noop, {"x": 1}).id
    jobq.claim(any_db, "w1", 30.0)
    hb = jobq.heartbeat(any_db, job_id, "w1", 30.0, progress={"loss": NAN, "eta_s": INF, "history": [[1, -INF]]})
    assert hb.ok
    with any_db.write() as s:
        vid = insert_version(s, mode="head", backbone="minilm", path="models/v-x", config={"lr": 0.1},
                             metrics={"val": {"accuracy": NAN, "n": 0}, "training": {"history": [{"loss": INF}]}}).id
    with any_db.read() as s:
        assert s.get(Job, job_id).progress == {"loss": None, "eta_s": None, "history": [[1, None]]}
        v = s.get(ModelVersion, vid)
        assert v.metrics == {"val": {"accuracy": None, "n": 0}, "training": {"history": [{"loss": None}]}}
