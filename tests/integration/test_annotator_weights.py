"""Annotator reliability end to end on a real SQLite database: three annotators label every pair, one of them at
random, and an expert on half of them; `rmstudio annotators` finds the random one (also against the expert), and
`train --annotator-weights` trains with their labels weighed down and records the weights with the version."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from cli import main
from db.config import Settings
from db.models import ModelVersion
from db.session import Database
from db.store import add_label, get_or_create_comparison, get_or_create_prompt, get_or_create_response
from rm_engine.config import TrainConfig
from rm_engine.training import train_and_publish
from tests.integration.rm_seed import BAD, GOOD, one_thread, tiny_backbone  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def _seed_three_annotators(db: Database, n: int = 40) -> None:
    rng = random.Random(0)
    with db.write() as s:
        for i in range(n):
            p = get_or_create_prompt(s, f"question {i}: how should I go about task {i}?")
            good = get_or_create_response(s, p, f"{GOOD[i % len(GOOD)]} (task {i})")
            bad = get_or_create_response(s, p, f"{BAD[i % len(BAD)]} #{i}")
            oc = get_or_create_comparison(s, good, bad)
            right = oc.outcome_to_stored("a")
            wrong = "b" if right == "a" else "a"
            for name, accuracy in (("amy", 0.95), ("ben", 0.9), ("rnd", 0.5)):
                outcome = right if rng.random() < accuracy else wrong
                add_label(s, comparison_id=oc.comparison.id, outcome=outcome, source="crowd", annotator=name,
                          idempotency_key=f"{name}-{i}")
            if i < 20:  # an expert on half the pairs: the gold standard the crowd is compared with
                add_label(s, comparison_id=oc.comparison.id, outcome=right, source="expert", annotator="eve",
                          idempotency_key=f"eve-{i}")


def test_annotators_cli_and_weighted_training(sqlite_db: Database, home: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    _seed_three_annotators(sqlite_db)
    assert main(["annotators", "--json"]) == 0
    quality = {q["annotator"]: q for q in json.loads(capsys.readouterr().out)}
    assert set(quality) == {"amy", "ben", "rnd", "eve"} and all(q["measured"] for q in quality.values())
    assert quality["rnd"]["accuracy"] < 0.75 < min(quality["amy"]["accuracy"], quality["ben"]["accuracy"])
    assert quality["rnd"]["weight"] < 0.5 < quality["ben"]["weight"]
    assert quality["rnd"]["agrees_with_experts"] < 0.8 < quality["amy"]["agrees_with_experts"]
    assert quality["eve"]["agrees_with_experts"] is None  # no other expert to compare her with (nan -> null)
    assert main(["annotators"]) == 0
    table = capsys.readouterr().out
    assert "rnd" in table.splitlines()[-2] and "Dawid-Skene" in table  # least reliable last

    cfg = TrainConfig(mode="head", backbone=str(tiny_backbone(home)), epochs=5, max_length=64, annotator_weights=True)
    version = train_and_publish(sqlite_db, Settings.from_env(), cfg)
    with sqlite_db.read() as s:
        row = s.get(ModelVersion, version.id)
        weights = row.data_snapshot["annotator_weights"]
        assert row.config["annotator_weights"] is True
    assert weights == pytest.approx({k: q["weight"] for k, q in quality.items()}, abs=1e-4)  # eve's too
    plain = train_and_publish(sqlite_db, Settings.from_env(), TrainConfig(**{**cfg.to_dict(), "annotator_weights": False}))
    with sqlite_db.read() as s:
        assert "annotator_weights" not in s.get(ModelVersion, plain.id).data_snapshot
