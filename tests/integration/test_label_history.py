"""Changing a verdict (``db/label_history.py``) on SQLite and PostgreSQL: the new label supersedes the old one, which
stays stored and audited; training pairs and exports use only the new one; only one's own current app labels can be
changed; undoing the new label brings the old one back. Migration 0007 adds the column to a database with labels."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import create_engine, select, text

from db.analytics import label_count, labels_per_category, multi_rated_labels
from db.annotators import add_annotator
from db.exporter import ExportReport, native_records
from db.label_history import ChangeRefused, change_label, recent_labels
from db.labeling import item_for_comparison, submit_label, undo_last
from db.migrate import alembic_config, current_revision, head_revision, upgrade
from db.models import Annotator, AuditEvent, Comparison, Label, Outcome, Side
from db.pairs import training_pairs
from db.review import exclude_label, history
from db.session import Database
from db.stats import dataset_stats
from db.store import add_label
from tests.app.conftest import seed_small


def _labelled(db: Database, name: str = "lea", choice: str = "left") -> tuple[int, int, Side]:
    """One app label of ``name`` on the first pair; ``(label id, comparison id, side shown left)``."""
    cid = seed_small(db).comparison_ids[0]
    with db.write() as s:
        ann = add_annotator(s, name, "crowd", by="researcher")
        item = item_for_comparison(s, cid, random.Random(1))
        label, _ = submit_label(s, item, choice, annotator=ann)
        return label.id, cid, item.left


def _ann(s, name: str) -> Annotator:
    return s.scalar(select(Annotator).where(Annotator.name == name))


def test_a_change_supersedes_the_old_label_for_training_and_export(any_db: Database) -> None:
    old_id, cid, left = _labelled(any_db)
    with any_db.write() as s:
        new, created = change_label(s, old_id, "right", annotator=_ann(s, "lea"), key="k-change", strength=2)
        new_id = new.id
    assert created
    with any_db.read() as s:
        old, new = s.get(Label, old_id), s.get(Label, new_id)
        assert old.superseded_by_id == new_id and new.superseded_by_id is None
        assert (new.comparison_id, new.left, new.strength, new.origin) == (cid, left, 2, "app")
        assert new.outcome is (Outcome.b if left is Side.a else Outcome.a) and old.outcome is Outcome(left.value)
        assert new.extra["supersedes"] == old_id
        assert s.get(Comparison, cid).label_count == 1  # one verdict of lea's on the pair
        ps = training_pairs(s)
        assert [p.label_id for p in ps.pairs] == [new_id] and ps.excluded == {"superseded": 1}
        report = ExportReport(format="comparisons", path="-")
        exported = [r for r in native_records(s, None, report) if "winner" in r]
        assert [r["key"] for r in exported] == ["k-change"] and report.excluded == {"superseded": 1}
        [recent] = recent_labels(s, _ann(s, "lea").id)
        assert (recent.label_id, recent.choice, recent.strength, recent.changed) == (new_id, "right", 2, True)
        [ev] = s.scalars(select(AuditEvent).where(AuditEvent.action == "supersede")).all()
        assert (ev.actor, ev.label_id, ev.comparison_id) == ("lea", new_id, cid)
        assert ev.detail == {"replaces": old_id, "from": old.outcome.value, "to": new.outcome.value,
                             "strength_from": None, "strength_to": 2}
        assert history(s, label_id=new_id)[0]["what"].startswith(f"changed their verdict on pair {cid}")
        rated = multi_rated_labels(s, min_labels=1)  # agreement and reliability see one verdict of lea's
        assert rated[rated["comparison_id"] == cid]["label_id"].tolist() == [new_id]
        stats = dataset_stats(s)  # the counts people read: one label, one pair, the change counted apart
        assert (stats["labels"], stats["pairs"] + stats["test_pairs"], stats["changed_labels"]) == (1, 1, 1)
        assert stats["by_annotator"] == {"lea": 1} and label_count(s) == 1
        assert labels_per_category(s)["labels"].sum() == 1


def test_only_my_current_app_labels_change_and_a_double_press_stores_one(any_db: Database) -> None:
    old_id, cid, _ = _labelled(any_db)
    with any_db.write() as s:
        add_annotator(s, "bob", "crowd", by="researcher")
        imported, _ = add_label(s, comparison_id=cid, outcome="a", source="crowd", annotator="lea",
                                idempotency_key="imported-1", origin="import:x.jsonl")
        imported_id = imported.id
    with any_db.write() as s, pytest.raises(ChangeRefused, match="not one of your labels"):
        change_label(s, old_id, "tie", annotator=_ann(s, "bob"), key="k-bob")
    with any_db.write() as s, pytest.raises(ChangeRefused, match="not one of your labels"):
        change_label(s, imported_id, "tie", annotator=_ann(s, "lea"), key="k-imp")
    with any_db.write() as s, pytest.raises(ChangeRefused, match="already stored"):
        change_label(s, old_id, "left", annotator=_ann(s, "lea"), key="k-same")
    for _ in range(2):  # a double press: the same key, one new label
        with any_db.write() as s:
            new, _ = change_label(s, old_id, "tie", annotator=_ann(s, "lea"), key="k-1")
            new_id = new.id
    with any_db.write() as s, pytest.raises(ChangeRefused, match="changed already"):
        change_label(s, old_id, "both_bad", annotator=_ann(s, "lea"), key="k-2")
    with any_db.write() as s:
        exclude_label(s, new_id, by="researcher")
    with any_db.write() as s, pytest.raises(ChangeRefused, match="excluded"):
        change_label(s, new_id, "both_bad", annotator=_ann(s, "lea"), key="k-3")
    with any_db.read() as s:
        assert s.scalar(select(text("count(*)")).select_from(Label)) == 3  # old, imported, one new
        assert [r.label_id for r in recent_labels(s, _ann(s, "lea").id)] == [new_id]  # not the imported one


def test_undoing_the_new_label_brings_the_old_verdict_back(any_db: Database) -> None:
    old_id, cid, _ = _labelled(any_db)
    with any_db.write() as s:
        change_label(s, old_id, "both_bad", annotator=_ann(s, "lea"), key="k-new")
        old_key = s.get(Label, old_id).idempotency_key
    with any_db.write() as s:
        assert undo_last(s, "lea", old_key) is None  # the changed label is kept for the record
        assert undo_last(s, "lea", "k-new") == cid
    with any_db.read() as s:
        [lab] = s.scalars(select(Label)).all()
        assert (lab.id, lab.superseded_by_id) == (old_id, None)
        assert s.get(Comparison, cid).label_count == 1
        assert [p.label_id for p in training_pairs(s).pairs] == [old_id]


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_0006_database_gains_the_column_and_keeps_its_labels(backend: str, tmp_path: Path,
                                                               request: pytest.FixtureRequest) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}" if backend == "sqlite" else request.getfixturevalue("pg_url")
    engine = create_engine(url)
    upgrade(engine, "0006")
    with engine.begin() as conn:
        for sql in (
            "INSERT INTO annotators (name, default_source, created_at) VALUES ('old', 'crowd', CURRENT_TIMESTAMP)",
            "INSERT INTO prompts (content_hash, text, created_at) VALUES ('h', 'Which?', CURRENT_TIMESTAMP)",
            "INSERT INTO responses (prompt_id, content_hash, text, created_at) VALUES (1, 'a', 'A', CURRENT_TIMESTAMP)",
            "INSERT INTO responses (prompt_id, content_hash, text, created_at) VALUES (1, 'b', 'B', CURRENT_TIMESTAMP)",
            "INSERT INTO comparisons (prompt_id, response_a_id, response_b_id, label_count, created_at) "
            "VALUES (1, 1, 2, 1, CURRENT_TIMESTAMP)",
            "INSERT INTO labels (comparison_id, outcome, source, annotator_id, split, idempotency_key, origin, \"left\", "
            "created_at) VALUES (1, 'a', 'crowd', 1, 'train', 'old-1', 'app', 'a', CURRENT_TIMESTAMP)",
        ):
            conn.execute(text(sql))
    engine.dispose()
    db = Database(url)
    try:
        assert current_revision(db.write_engine) == head_revision()
        with db.write() as s:
            assert s.get(Label, 1).superseded_by_id is None
            change_label(s, 1, "right", annotator=_ann(s, "old"), key="k")
        with db.read() as s:
            assert [p.label_id for p in training_pairs(s).pairs] == [2]
        with db.write_engine.begin() as conn:
            command.downgrade(alembic_config(conn), "0006")
        with db.write_engine.connect() as conn:
            assert conn.execute(text("SELECT idempotency_key FROM labels ORDER BY id")).all() == [("old-1",), ("k",)]
        upgrade(db.write_engine)
        assert current_revision(db.write_engine) == head_revision()
    finally:
        db.dispose()
