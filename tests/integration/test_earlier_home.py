"""A home made by an earlier RM Studio keeps working: ``tests/fixtures/home-0005`` is a SQLite database at schema
0005 (as SQL text) and a head-mode ensemble over MiniLM, written before the engine moved into concept folders,
with the scores that release gave. The database migrates to the newest schema, the version loads through the
public ``rm_engine.scoring`` path and scores exactly as it did, and its labels still make training pairs."""
from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import func, select

import rm_engine.scoring as public_scoring
from db.config import Settings
from db.migrate import current_revision, head_revision
from db.models import Label, ModelVersion
from db.pairs import training_pairs
from db.session import Database
from rm_engine.serving.scoring import RewardModel

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "home-0005"


@pytest.fixture
def earlier_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    shutil.copytree(FIXTURE / "models", home / "models")
    con = sqlite3.connect(home / "rmstudio.db")
    con.executescript((FIXTURE / "rmstudio.sql").read_text(encoding="utf-8"))
    con.close()
    monkeypatch.setenv("RMSTUDIO_HOME", str(home))
    monkeypatch.setenv("RMSTUDIO_DB", f"sqlite:///{home / 'rmstudio.db'}")
    return home


def test_an_earlier_home_migrates_and_its_version_scores_as_it_did(earlier_home: Path) -> None:
    expected = json.loads((FIXTURE / "expected_scores.json").read_text(encoding="utf-8"))
    settings = Settings.from_env()
    db = Database(settings.db_url)  # migrates 0005 -> head on open
    try:
        assert current_revision(db.write_engine) == head_revision() != "0005"
        with db.read() as s:
            assert s.scalar(select(func.count()).select_from(ModelVersion)) == 1
            n_labels = s.scalar(select(func.count()).select_from(Label))
            ps = training_pairs(s)
            assert n_labels > 0 and ps.n_labels == n_labels and len(ps.pairs) > 0  # earlier labels still train
        assert public_scoring.RewardModel is RewardModel  # the public path still names the scoring class
        model = public_scoring.RewardModel.load(db, settings, expected["version"])
        for case in expected["scores"]:
            got = model.score(case["prompt"], [case["response"]])[0]
            assert got.raw == pytest.approx(case["raw"], abs=1e-4), case
            assert got.z == pytest.approx(case["z"], abs=1e-4) and got.std == pytest.approx(case["std"], abs=1e-4)
    finally:
        db.dispose()
