"""Labeling guidelines (``db/guidelines.py``, ``rmstudio guidelines``): revisions, clearing, the size limit, on
SQLite and PostgreSQL."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli import main
from db.guidelines import MAX_CHARS, get_guidelines, set_guidelines
from db.session import Database
from tests.concurrency import run_in_threads


def test_revisions_clear_and_limit(any_db: Database) -> None:
    with any_db.read() as s:
        assert get_guidelines(s) is None
    with any_db.write() as s:
        first = set_guidelines(s, "  Prefer correct answers.  ", by="ana")
    with any_db.write() as s:
        cleared = set_guidelines(s, "")
    assert (first.text, first.revision, first.updated_by) == ("Prefer correct answers.", 1, "ana")
    assert (cleared.text, cleared.revision) == ("", 2)
    with pytest.raises(ValueError, match=f"at most {MAX_CHARS:,} fit"), any_db.write() as s:
        set_guidelines(s, "x" * (MAX_CHARS + 1))
    with any_db.read() as s:
        assert get_guidelines(s) == cleared  # the refused text changed nothing


def test_cli_sets_shows_and_clears(sqlite_db: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "guide.md"
    f.write_text("# Guidelines\n\nA tie only when both are equally good.\n", encoding="utf-8")
    assert main(["guidelines", "--set", str(f)]) == 0
    assert "revision 1" in capsys.readouterr().out
    assert main(["guidelines", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["revision"] == 1 and shown["text"].startswith("# Guidelines")
    assert main(["guidelines", "--clear"]) == 0 and "(cleared)" in capsys.readouterr().out
    assert main(["guidelines", "--set", str(tmp_path / "missing.md")]) == 1
    assert "missing.md: cannot read it" in capsys.readouterr().err


def test_concurrent_saves_get_distinct_revisions(any_db: Database) -> None:
    with any_db.write() as s:
        set_guidelines(s, "first")  # the row exists: concurrent saves contend on it
    revisions = []

    def save(i: int) -> None:
        with any_db.write() as s:
            revisions.append(set_guidelines(s, f"text {i}").revision)

    assert run_in_threads(save, 4) == [] and sorted(revisions) == [2, 3, 4, 5]


def test_labels_and_rankings_record_the_guidelines_in_force(any_db: Database) -> None:
    """Labels made in the app carry the guidelines revision they were made under (in ``extra``, so exports keep
    it); none before any guidelines, nor after they were cleared."""
    from db.labeling import next_pair, submit_label
    from db.ranking_queue import next_ranking, submit_ranking
    from tests.app.conftest import seed_small

    seed_small(any_db)

    def label(name: str) -> dict:
        with any_db.write() as s:
            item = next_pair(s, name)
            return dict(submit_label(s, item, "left", annotator=name, source="crowd")[0].extra)

    assert "guidelines" not in label("ann")
    with any_db.write() as s:
        set_guidelines(s, "Correctness first.")
    assert label("bea")["guidelines"] == 1
    with any_db.write() as s:
        task = next_ranking(s, "bea")
        ranking, _ = submit_ranking(s, task, list(task.response_ids), annotator="bea", source="crowd")
        assert ranking.extra["guidelines"] == 1 and ranking.extra["shown_order"] == list(task.response_ids)
    with any_db.write() as s:
        set_guidelines(s, "")
    assert "guidelines" not in label("cid")
