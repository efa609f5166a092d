"""``--gpus N`` end to end: ``rmstudio train --mode finetune --gpus 2 --inline`` runs two gloo CPU ranks
(``rm_engine.finetune.ddp``) and publishes a version; queued jobs carry ``gpus`` only when asked, else the worker's
``--gpus`` decides."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli import main
from db.models import Job, ModelVersion
from db.session import Database
from tests.integration.rm_seed import engine_settings, one_thread, seed_labels, tiny_encoder  # noqa: F401
from worker.job_run import train_config_from_params

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.timeout(240)]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize("strategy", ["ddp"])  # fsdp: the worker's and torchrun's tests below
def test_train_inline_with_two_gloo_ranks(strategy: str, sqlite_db: Database, engine_settings, tiny_encoder: Path,
                                          capsys) -> None:
    seed_labels(sqlite_db, 12)
    rc, out, err = run(capsys, "train", "--mode", "finetune", "--gpus", "2", "--device", "cpu", "--inline", "--json",
                       "--backbone", str(tiny_encoder), "--max-length", "48", "--epochs", "3", "--lr", "2e-3",
                       "--batch-tokens", "400", "--max-batch-pairs", "4", "--strategy", strategy)
    assert rc == 0, err
    res = json.loads(out)
    assert res["config"]["gpus"] == 2 and res["config"]["max_batch_pairs"] == 4 and res["config"]["mode"] == "finetune"
    assert res["config"]["strategy"] == strategy
    with sqlite_db.read() as s:
        v = s.get(ModelVersion, res["model_version"])
        assert v.device == "cpu x2" and v.config["gpus"] == 2
    rc, out, err = run(capsys, "score", "--model", str(res["model_version"]), "--prompt", "how do I bake bread?",
                       "--response", "happy to help, step by step", "--response", "ugh, not answering that", "--json")
    assert rc == 0, err
    chosen, rejected = (s["raw"] for s in json.loads(out)["scores"])
    assert chosen != rejected


def test_queued_jobs_take_the_workers_gpus_unless_set(sqlite_db: Database, engine_settings, capsys) -> None:
    rc, out, err = run(capsys, "train", "--json", "--mode", "finetune")
    assert rc == 0, err
    rc, out2, err = run(capsys, "train", "--json", "--mode", "finetune", "--gpus", "3", "--max-batch-pairs", "8")
    assert rc == 0, err
    with sqlite_db.read() as s:
        plain = s.get(Job, json.loads(out)["job_id"]).params
        asked = s.get(Job, json.loads(out2)["job_id"]).params
    assert "gpus" not in plain and asked["gpus"] == 3 and asked["max_batch_pairs"] == 8
    assert train_config_from_params(plain, "cpu", 2).gpus == 2  # the worker's --gpus 2
    assert train_config_from_params(asked, "cpu", 2).gpus == 3
    assert train_config_from_params({"mode": "head"}, "cpu", 2).gpus == 1  # head jobs: one process
    rc, _, err = run(capsys, "train", "--gpus", "2")  # head mode (the default)
    assert rc != 0 and "gpus" in err

    # a worker started with --gpus 2 records "cpu x2" on the plain finetune job (which then fails: no labels)
    from db.config import Settings
    from worker.loop import Worker, WorkerConfig

    cfg = WorkerConfig(lease_s=30.0, poll_interval_s=0.1, once=True, auto_retrain=False, preload=False, device="cpu",
                       gpus=2, kinds=("train",))
    Worker(sqlite_db, Settings.from_env(), cfg).run()
    with sqlite_db.read() as s:
        job = s.get(Job, json.loads(out)["job_id"])
        assert job.device == "cpu x2" and job.status.value == "failed" and "nothing to train on" in (job.error or "")


def test_worker_runs_a_sharded_job(sqlite_db: Database, engine_settings, tiny_encoder: Path, capsys) -> None:
    """A queued finetune job asking for two sharded ranks: the worker runs it and publishes the gathered model."""
    from db.config import Settings
    from worker.loop import Worker, WorkerConfig

    seed_labels(sqlite_db, 12)
    rc, out, err = run(capsys, "train", "--json", "--mode", "finetune", "--gpus", "2", "--strategy", "fsdp",
                       "--backbone", str(tiny_encoder), "--max-length", "48", "--epochs", "2", "--lr", "2e-3",
                       "--batch-tokens", "400", "--max-batch-pairs", "4")
    assert rc == 0, err
    job_id = json.loads(out)["job_id"]
    cfg = WorkerConfig(lease_s=60.0, poll_interval_s=0.1, once=True, auto_retrain=False, preload=False, device="cpu",
                       kinds=("train",))
    Worker(sqlite_db, Settings.from_env(), cfg).run()
    with sqlite_db.read() as s:
        job = s.get(Job, job_id)
        assert job.status.value == "succeeded", job.error
        v = s.get(ModelVersion, job.result["version_id"])
        assert v.config["strategy"] == "fsdp" and v.config["gpus"] == 2 and v.device == "cpu x2"
        version_id = v.id
    rc, out, err = run(capsys, "score", "--model", str(version_id), "--prompt", "how do I bake bread?",
                       "--response", "happy to help, step by step", "--json")
    assert rc == 0, err


def test_torchrun_launch_trains_sharded_and_rank_zero_publishes(sqlite_db: Database, engine_settings,
                                                                  tiny_encoder: Path) -> None:
    """``torchrun --nproc-per-node 2 -m cli train --inline``, as on several machines but with gloo on this one:
    both ranks train one sharded model, rank 0 alone publishes it and prints the result."""
    import os
    import subprocess
    import sys

    seed_labels(sqlite_db, 12)
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2])}
    proc = subprocess.run(
        [str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "cli", "train", "--inline", "--json",
         "--mode", "finetune", "--strategy", "fsdp", "--device", "cpu", "--backbone", str(tiny_encoder),
         "--max-length", "48", "--epochs", "2", "--lr", "2e-3", "--batch-tokens", "400", "--max-batch-pairs", "4"],
        env=env, capture_output=True, text=True, timeout=200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout)  # one JSON document: only rank 0 prints
    assert res["config"]["strategy"] == "fsdp" and res["config"]["gpus"] == 2
    with sqlite_db.read() as s:
        versions = s.query(ModelVersion).all()
        assert [v.id for v in versions] == [res["model_version"]] and versions[0].device == "cpu x2"
