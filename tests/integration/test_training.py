"""train_and_publish on real SQLite files (and PostgreSQL): split, weights, ties, metrics, publish, cancel."""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from db.models import ModelVersion
from db.pairs import training_pairs
from db.session import Database
from db.versions import count_scores, get_version, version_paths
from rm_engine.config import Cancelled
from rm_engine.training import split_pairs, train_and_publish
from rm_engine.versions.registry import sweep_orphans
from tests.integration.rm_seed import engine_settings, one_thread, seed_labels, tiny_config, tiny_encoder  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def model_dirs(settings) -> list[str]:
    d = Path(settings.models_dir)
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


def test_trained_head_separates_chosen_from_rejected(sqlite_db: Database, engine_settings, tiny_encoder: Path) -> None:
    seed_labels(sqlite_db, 40, test_prompts=6, ties=4, both_bad=3, rankings=4)
    events: list[dict] = []
    v = train_and_publish(sqlite_db, engine_settings, tiny_config(tiny_encoder, ensemble=2), progress=events.append)
    assert v is not None and v.id and v.mode == "head" and v.ensemble_size == 2
    m = v.metrics
    # the "stuck at 0.693" bug: chosen and rejected must get different scores, and the model must learn
    assert m["train"]["tie_rate"] == 0.0 and m["train"]["accuracy"] >= 0.9
    assert m["val"]["n"] > 0 and m["test"]["n"] == 6
    assert m["excluded"]["both_bad"] == 3
    assert m["train"]["tie_pairs"] + m["val"]["tie_pairs"] == 4  # ties kept and modelled
    assert m["training"]["tie_model"] == "davidson" and len(m["training"]["tie_param"]) == 2
    assert "crowd" in m["train"]["per_source"] and set(m["train"]["per_source"]) <= {"crowd", "expert"}
    assert "per_annotator" in m["train"] and "per_category" in m["train"] and "ece" in m["train"]
    assert "spearman" in m["train"] or "spearman" in m["val"]
    assert "overfitting" in m and m["ensemble_std_mean"] > 0
    ns = v.norm_stats
    assert ns["n"] > 0 and ns["std"] > 0 and len(ns["quantiles"]) == 101
    # each member is centred on the stored responses before the mean: the ensemble's mean over them is 0, and
    # the centres (arbitrary offsets Bradley-Terry never pins) are saved with the version
    assert ns["mean"] == pytest.approx(0.0, abs=1e-6)
    import json

    centers = json.loads((Path(engine_settings.home) / v.path / "config.json").read_text())["member_centers"]
    assert len(centers) == 2 and centers[0] != centers[1]
    assert {e["phase"] for e in events} >= {"load", "features", "train", "evaluate", "publish"}
    assert all(set(e) >= {"step", "total", "loss", "val_accuracy", "eta_s", "phase"} for e in events)
    assert any(e["eta_s"] is not None for e in events if e["phase"] == "train")
    # files in place, row points at them, scores of the training responses cached
    assert (Path(engine_settings.home) / v.path / "head.safetensors").is_file()
    with sqlite_db.read() as s:
        assert get_version(s, "latest").id == v.id
        assert count_scores(s, v.id) == ns["n"]
    assert v.config["backbone"] == str(tiny_encoder) and v.data_snapshot["n_test"] == 6
    assert v.config["truncation"].startswith("keep-response")
    from rm_engine.config import TrainConfig

    assert TrainConfig.from_dict(v.config).ensemble == 2  # a version's config rebuilds its TrainConfig


def test_split_is_grouped_by_prompt_and_deterministic(sqlite_db: Database) -> None:
    seed_labels(sqlite_db, 30, rankings=6)
    with sqlite_db.read() as s:
        pairs = training_pairs(s).pairs
    a = split_pairs(pairs, 0.25, seed=3)
    b = split_pairs(pairs, 0.25, seed=3)
    c = split_pairs(pairs, 0.25, seed=4)
    assert [p.label_id for p in a["val"]] == [p.label_id for p in b["val"]]
    assert {p.prompt_id for p in a["train"]}.isdisjoint({p.prompt_id for p in a["val"]})
    assert a["val"] and {p.prompt_id for p in a["val"]} != {p.prompt_id for p in c["val"]}
    # growing data never moves a validation prompt into training
    seed_labels(sqlite_db, 45, seed=9)
    with sqlite_db.read() as s:
        more = split_pairs(training_pairs(s).pairs, 0.25, seed=3)
    assert {p.prompt_id for p in a["val"]} <= {p.prompt_id for p in more["val"]}


def test_test_labels_are_never_trained_on(sqlite_db: Database, engine_settings, tiny_encoder: Path, tmp_path: Path) -> None:
    seed_labels(sqlite_db, 24, test_prompts=8)
    v1 = train_and_publish(sqlite_db, engine_settings, tiny_config(tiny_encoder, epochs=40))
    # a second database with the same train labels and no test labels trains the very same head
    other = Database(f"sqlite:///{tmp_path / 'other.db'}")
    seed_labels(other, 24, test_prompts=0)
    v2 = train_and_publish(other, engine_settings, tiny_config(tiny_encoder, epochs=40))
    from safetensors.torch import load_file

    h1 = load_file(str(Path(engine_settings.home) / v1.path / "head.safetensors"))
    h2 = load_file(str(Path(engine_settings.home) / v2.path / "head.safetensors"))
    for k in h1:
        np.testing.assert_allclose(h1[k].numpy(), h2[k].numpy(), atol=1e-5, err_msg=k)
    assert v1.metrics["test"]["n"] == 8 and v2.metrics["test"]["n"] == 0
    other.dispose()


def test_ties_excluded_and_sources_filtered(sqlite_db: Database, engine_settings, tiny_encoder: Path) -> None:
    seed_labels(sqlite_db, 16, ties=3)
    seed_labels(sqlite_db, 10, seed=5, source="expert")
    v = train_and_publish(sqlite_db, engine_settings, tiny_config(tiny_encoder, ties="exclude", epochs=30))
    assert v.metrics["excluded"].get("tie") == 3 and v.metrics["training"]["tie_model"] is None
    assert v.metrics["train"]["tie_pairs"] == 0
    only = train_and_publish(sqlite_db, engine_settings, tiny_config(tiny_encoder, sources=("crowd",), epochs=30))
    assert only.data_snapshot["sources"] == ["crowd"] and only.n_pairs < v.n_pairs + 3
    assert only.metrics["excluded"].get("source_filtered", 0) > 0


def test_cancel_publishes_nothing(sqlite_db: Database, engine_settings, tiny_encoder: Path) -> None:
    seed_labels(sqlite_db, 12)
    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        return calls["n"] > 5

    with pytest.raises(Cancelled):
        train_and_publish(sqlite_db, engine_settings, tiny_config(tiny_encoder), should_stop=stop)
    with sqlite_db.read() as s:
        assert s.scalar(select(ModelVersion)) is None
    assert not [d for d in model_dirs(engine_settings) if d.startswith("v-")]


def test_publish_guard_refusal_removes_files(sqlite_db: Database, engine_settings, tiny_encoder: Path) -> None:
    seed_labels(sqlite_db, 12)
    seen = []

    def guard(session) -> bool:
        seen.append(session)
        return False

    assert train_and_publish(sqlite_db, engine_settings, tiny_config(tiny_encoder, epochs=20), publish_guard=guard) is None
    assert seen and not [d for d in model_dirs(engine_settings) if d.startswith(("v-", ".tmp-"))]
    with sqlite_db.read() as s:
        assert s.scalar(select(ModelVersion)) is None


def test_nothing_to_train_is_a_clear_error(sqlite_db: Database, engine_settings, tiny_encoder: Path) -> None:
    seed_labels(sqlite_db, 0, both_bad=2)
    with pytest.raises(ValueError, match="nothing to train on"):
        train_and_publish(sqlite_db, engine_settings, tiny_config(tiny_encoder))


def test_sweep_orphans(sqlite_db: Database, engine_settings, tiny_encoder: Path) -> None:
    seed_labels(sqlite_db, 10)
    v = train_and_publish(sqlite_db, engine_settings, tiny_config(tiny_encoder, epochs=10))
    models = Path(engine_settings.models_dir)
    (models / "v-orphan").mkdir()
    (models / ".tmp-crashed").mkdir()
    (models / "v-young").mkdir()
    old = time.time() - 7200
    for name in ("v-orphan", ".tmp-crashed"):
        os.utime(models / name, (old, old))
    with sqlite_db.read() as s:
        known = version_paths(s)
    assert sweep_orphans(engine_settings, known) == [".tmp-crashed", "v-orphan"]
    assert (Path(engine_settings.home) / v.path).is_dir() and (models / "v-young").is_dir()


@pytest.mark.postgres
def test_publish_on_both_backends(any_db: Database, engine_settings, tiny_encoder: Path) -> None:
    seed_labels(any_db, 14)
    v = train_and_publish(any_db, engine_settings, tiny_config(tiny_encoder, epochs=20))
    with any_db.read() as s:
        row = get_version(s, v.id)
        assert row.metrics["train"]["n"] > 0 and row.norm_stats["n"] == count_scores(s, v.id)


def test_early_stopping_never_watches_reported_validation(sqlite_db: Database, engine_settings, tiny_encoder: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import rm_engine.training as training

    seed_labels(sqlite_db, 30)
    small = train_and_publish(sqlite_db, engine_settings, tiny_config(tiny_encoder, epochs=20))
    assert small.metrics["training"]["early_stopping"] == "val"  # little data: said out loud
    monkeypatch.setattr(training, "INNER_SPLIT_MIN_PAIRS", 10)
    v = train_and_publish(sqlite_db, engine_settings, tiny_config(tiny_encoder, epochs=20))
    t = v.metrics["training"]
    assert t["early_stopping"] == "inner-train-split"
    assert 0 < t["n_fit_pairs"] < v.data_snapshot["n_train"] and v.metrics["val"]["n"] == small.metrics["val"]["n"]
