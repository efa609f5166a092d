"""Versions across machines (``rm_engine/versions/model_store.py``): the publishing transaction stores a copy of a version's
files in the database; a process with another ``RMSTUDIO_HOME`` (another machine sharing the database) restores
them on first use, or when a file is damaged, and scores exactly as the machine that trained it. SQLite keeps
files on disk only unless ``RMSTUDIO_MODELS_IN_DB=on``; PostgreSQL copies by default."""
from __future__ import annotations

import dataclasses
import json
import logging
import threading
from pathlib import Path

import pytest

from cli import main
from db.config import Settings
from db.session import Database
from db.versions import archived_versions, delete_version, get_archive, get_version, put_archive
from rm_engine.config import TrainConfig
from rm_engine.serving.scoring import RewardModel
from rm_engine.training import train_and_publish
from rm_engine.versions import model_store
from rm_engine.versions.export import export_version
from rm_engine.versions.registry import ModelFilesError
from tests.integration.rm_seed import engine_settings, one_thread, seed_labels, tiny_encoder  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = "question 1: how do I go about fixing a bike?"
RESPONSES = ["happy to help, step by step", "ugh, not answering that", "a clear, kind and correct reply"]


@pytest.fixture(params=["sqlite-on", "postgres-auto"])
def shared_db(request: pytest.FixtureRequest, home: Path, monkeypatch: pytest.MonkeyPatch) -> Database:
    """The database the two "machines" share: SQLite with copies switched on, or PostgreSQL (copies by default)."""
    if request.param == "sqlite-on":
        monkeypatch.setenv("RMSTUDIO_MODELS_IN_DB", "on")
        return request.getfixturevalue("sqlite_db")
    return request.getfixturevalue("pg_db")


def _machine_b(settings: Settings, tmp_path: Path) -> Settings:
    other = tmp_path / "machine-b"
    other.mkdir(parents=True, exist_ok=True)
    return dataclasses.replace(settings, home=other)


def _train(db: Database, tiny: Path, mode: str, **kw) -> int:
    cfg = TrainConfig(mode=mode, backbone=str(tiny), epochs=1 if mode == "finetune" else 20, lr=1e-3 if mode ==
                      "finetune" else 1e-2, max_length=64, device="cpu", val_fraction=0.0, **kw)
    return train_and_publish(db, Settings.from_env(), cfg).id


def _raw(model: RewardModel) -> list[float]:
    return [s.raw for s in model.score(PROMPT, RESPONSES)]


@pytest.mark.parametrize("mode", ["head", "finetune"])
def test_another_machine_restores_the_files_and_scores_the_same(mode: str, shared_db: Database, engine_settings,
                                                                tiny_encoder: Path, tmp_path: Path) -> None:
    seed_labels(shared_db, 12)
    vid = _train(shared_db, tiny_encoder, mode)
    here = Settings.from_env()
    assert here.copies_models_to_db
    with shared_db.read() as s:
        assert vid in archived_versions(s)
    want = _raw(RewardModel.load(shared_db, here, vid))

    there = _machine_b(here, tmp_path)
    assert not there.models_dir.exists()
    got = _raw(RewardModel.load(shared_db, there, vid))
    assert got == pytest.approx(want, abs=1e-6) and len(set(got)) > 1
    folder = next(p for p in there.models_dir.iterdir() if p.name.startswith("v-"))
    assert [p.name for p in there.models_dir.iterdir()] == [folder.name]  # no staging folder left behind

    # a damaged weight file on that machine: restored again from the database, not a silent wrong score
    weights = max((p for p in folder.rglob("*.safetensors")), key=lambda p: p.stat().st_size)
    raw = bytearray(weights.read_bytes())
    raw[-8:] = b"\x00" * 8 if raw[-8:] != b"\x00" * 8 else b"\x01" * 8
    weights.write_bytes(bytes(raw))
    assert _raw(RewardModel.load(shared_db, there, vid)) == pytest.approx(want, abs=1e-6)
    if mode == "finetune":  # export reads through the same restore
        assert export_version(shared_db, _machine_b(here, tmp_path / "c"), vid, tmp_path / "out")["version_id"] == vid


def test_concurrent_restores_all_load(shared_db: Database, engine_settings, tiny_encoder: Path,
                                      tmp_path: Path) -> None:
    seed_labels(shared_db, 12)
    vid = _train(shared_db, tiny_encoder, "head")
    there = _machine_b(Settings.from_env(), tmp_path)
    results: list[object] = []

    def load() -> None:
        try:
            results.append(_raw(RewardModel.load(shared_db, there, vid)))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            results.append(exc)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(isinstance(r, list) for r in results), results
    assert all(r == pytest.approx(results[0], abs=1e-6) for r in results)
    [folder] = list(there.models_dir.iterdir())
    assert folder.name.startswith("v-")
    # a restorer that lost the race finds an intact folder and keeps it (files other loaders may be reading)
    inode = folder.stat().st_ino
    with shared_db.read() as s:
        data, _ = get_archive(s, vid)
    model_store.restore(there, folder.relative_to(there.home).as_posix(), vid, data)
    assert folder.stat().st_ino == inode and [p.name for p in there.models_dir.iterdir()] == [folder.name]


def test_sqlite_keeps_files_on_disk_only_by_default(sqlite_db: Database, engine_settings, tiny_encoder: Path,
                                                    tmp_path: Path) -> None:
    seed_labels(sqlite_db, 12)
    vid = _train(sqlite_db, tiny_encoder, "head")
    with sqlite_db.read() as s:
        assert archived_versions(s) == {}
    with pytest.raises(ModelFilesError, match="its files are missing.*RMSTUDIO_MODELS_IN_DB=on"):
        RewardModel.load(sqlite_db, _machine_b(Settings.from_env(), tmp_path), vid)


def test_copies_go_with_their_version_and_large_ones_stay_on_disk(shared_db: Database, engine_settings,
                                                                  tiny_encoder: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  caplog: pytest.LogCaptureFixture,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    seed_labels(shared_db, 12)
    kept = _train(shared_db, tiny_encoder, "head")
    with monkeypatch.context() as mp, caplog.at_level(logging.WARNING, logger="rm_engine.versions.model_store"):
        mp.setattr(model_store, "DB_COPY_MAX_BYTES", 100)
        big = _train(shared_db, tiny_encoder, "head", seed=1)
    assert "other machines need RMSTUDIO_HOME/models shared" in caplog.text
    capsys.readouterr()
    assert main(["models", "--json"]) == 0
    listed = {r["id"]: r["db_copy_bytes"] for r in json.loads(capsys.readouterr().out)}
    assert listed[big] is None and listed[kept] > 0
    with shared_db.write() as s:
        assert set(archived_versions(s)) == {kept}  # the large one was published, without a copy
        delete_version(s, kept)
    with shared_db.read() as s:
        assert archived_versions(s) == {}
    assert RewardModel.load(shared_db, Settings.from_env(), big).version_id == big


def test_an_unusable_database_copy_is_named(shared_db: Database, engine_settings, tiny_encoder: Path,
                                            tmp_path: Path) -> None:
    seed_labels(shared_db, 12)
    vid = _train(shared_db, tiny_encoder, "head")
    there = _machine_b(Settings.from_env(), tmp_path)
    with shared_db.write() as s:
        data, digest = get_archive(s, vid)
        put_archive(s, vid, data[:-10] + b"x" * 10, digest)
    with pytest.raises(ModelFilesError, match="database copy is damaged too"):
        RewardModel.load(shared_db, there, vid)
    import hashlib

    junk = b"not a zip at all"
    with shared_db.write() as s:
        put_archive(s, vid, junk, hashlib.sha256(junk).hexdigest())
    with pytest.raises(ModelFilesError, match="not a valid zip"):
        RewardModel.load(shared_db, there, vid)
    assert [p.name for p in there.models_dir.iterdir()] == []  # nothing half-restored


def test_a_worker_process_publishes_and_another_home_scores(pg_db: Database, engine_settings, tiny_encoder: Path,
                                                            tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Two "machines" on one PostgreSQL database: a real ``rmstudio worker --once`` process trains in home A; the
    CLI in home B (which never saw the files) scores with that version."""
    import os
    import subprocess
    import sys

    seed_labels(pg_db, 12)
    capsys.readouterr()
    assert main(["train", "--backbone", str(tiny_encoder), "--epochs", "20", "--max-length", "64", "--json"]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # RMSTUDIO_HOME (A) and RMSTUDIO_DB come from the fixtures
    done = subprocess.run([sys.executable, "-m", "cli", "worker", "--once", "--no-auto-retrain"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    with pg_db.read() as s:
        [vid] = archived_versions(s)

    b = tmp_path / "machine-b"
    b.mkdir()
    monkeypatch.setenv("RMSTUDIO_HOME", str(b))
    capsys.readouterr()
    assert main(["score", "--model", str(vid), "--prompt", PROMPT, *[a for r in RESPONSES for a in ("--response", r)],
                 "--json"]) == 0
    raw = [s["raw"] for s in json.loads(capsys.readouterr().out)["scores"]]
    assert len(set(raw)) == 3 and any(p.name.startswith("v-") for p in (b / "models").iterdir())


def test_a_missing_backbone_is_named_not_restored(home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """Only the version's own folder comes from the database: a backbone absent on this machine is named as such,
    with no restore attempted and no advice about sharing model files."""
    from tests.tiny_models import build_tiny_encoder

    monkeypatch.setenv("RMSTUDIO_MODELS_IN_DB", "on")
    monkeypatch.setenv("RMSTUDIO_MODEL_DIRS", str(tmp_path / "backbones"))
    tiny = build_tiny_encoder(tmp_path / "backbones" / "tiny")
    db = Database(Settings.from_env().db_url)
    try:
        seed_labels(db, 12)
        vid = _train(db, tiny, "head")
        tiny.rename(tmp_path / "backbones" / "elsewhere")
        with caplog.at_level(logging.WARNING, logger="rm_engine.versions.model_store"), \
                pytest.raises(ModelFilesError, match="its backbone is unusable.*the path it was trained from") as err:
            RewardModel.load(db, Settings.from_env(), vid)
        assert "RMSTUDIO_MODELS_IN_DB" not in str(err.value) and "restoring" not in caplog.text
    finally:
        db.dispose()


def test_models_share_copies_versions_published_without_one(sqlite_db: Database, engine_settings,
                                                            tiny_encoder: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A team moving from one machine (SQLite, no copies) to several: ``rmstudio models share all`` stores the
    copies of the versions it already has; another home then loads them."""
    seed_labels(sqlite_db, 12)
    first, second = _train(sqlite_db, tiny_encoder, "head"), _train(sqlite_db, tiny_encoder, "head", seed=1)
    capsys.readouterr()
    assert main(["models", "share", "all", "--json"]) == 0
    done = json.loads(capsys.readouterr().out)
    assert [(d["version"], d["status"]) for d in done] == [(first, "copied"), (second, "copied")]
    assert main(["models", "share", str(first)]) == 0
    assert f"model version {first}: had a copy" in capsys.readouterr().out
    here = Settings.from_env()
    there = _machine_b(here, tmp_path)
    assert _raw(RewardModel.load(sqlite_db, there, second)) == pytest.approx(_raw(RewardModel.load(sqlite_db, here,
                                                                                                   second)), abs=1e-6)

    with sqlite_db.write() as s:
        delete_version(s, second)  # its copy goes with it
    third = _train(sqlite_db, tiny_encoder, "head", seed=2)
    with sqlite_db.read() as s:
        path = get_version(s, third).path
    (here.home / path / "head.safetensors").unlink()  # a version whose files are gone here cannot be shared
    assert main(["models", "share", str(third)]) == 1
    assert f"model version {third}: skipped: model version {third}: file head.safetensors is missing" in \
        capsys.readouterr().out
    assert main(["models", "share", "99"]) == 1
    assert "no model version 99" in capsys.readouterr().err
