"""Alembic migrations: a database created by an older revision upgrades in place, keeping its rows, and the
migrated schema matches the models (``db/models.py``) on SQLite and PostgreSQL."""
from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, text
from sqlalchemy.exc import IntegrityError

from db import jobs
from db.migrate import current_revision, head_revision, upgrade
from db.models import Base, Job, JobKind, JobLog
from db.session import Database
from db.versions import archived_versions, get_version, put_archive


def test_migrated_schema_matches_the_models(any_db: Database) -> None:
    with any_db.write_engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    assert current_revision(any_db.write_engine) == head_revision()


def test_a_first_revision_database_upgrades_keeping_its_versions(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)
    upgrade(engine, "0001")  # as a database written before model copies existed
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO model_versions (created_at, mode, backbone, path, config, data_snapshot, "
                          "metrics, norm_stats, n_pairs, n_labels, ensemble_size) VALUES (CURRENT_TIMESTAMP, 'head', "
                          "'minilm', 'models/v-old', '{}', '{}', '{}', '{}', 10, 12, 1)"))
    engine.dispose()
    assert current_revision(create_engine(url)) == "0001"

    db = Database(url)  # every process migrates on start
    try:
        assert current_revision(db.write_engine) == head_revision() != "0001"
        with db.write() as s:
            v = get_version(s, "latest")
            assert (v.path, v.n_pairs, v.n_labels) == ("models/v-old", 10, 12)
            put_archive(s, v.id, b"zip", "0" * 64)
        with db.read() as s:
            assert archived_versions(s) == {v.id: 3}
    finally:
        db.dispose()


def test_a_0004_database_takes_cv_jobs_after_the_upgrade(tmp_path: Path) -> None:
    """0005 widens the job-kind CHECK constraint (SQLite rebuilds the table): queued jobs, their logs (the rebuild
    drops the old table, which cascaded into job_logs while foreign keys were on) and the partial unique index on
    dedupe keys survive, and a cv job can be stored; before the upgrade the constraint refused it."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)
    upgrade(engine, "0004")
    insert = ("INSERT INTO jobs (kind, status, params, dedupe_key, attempts, max_attempts, cancel_requested, "
              "created_at) VALUES ('{kind}', 'queued', '{{}}', 'k1', 0, 3, 0, CURRENT_TIMESTAMP)")
    with engine.begin() as conn:
        conn.execute(text(insert.format(kind="train")))
        conn.execute(text("INSERT INTO job_logs (job_id, created_at, line) VALUES (1, CURRENT_TIMESTAMP, 'queued')"))
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(text(insert.format(kind="cv")))
    engine.dispose()

    db = Database(url)
    try:
        with db.write() as s:
            assert [(j.kind, j.dedupe_key) for j in s.query(Job)] == [(JobKind.train, "k1")]
            assert [log.line for log in s.query(JobLog)] == ["queued"]
            assert jobs.enqueue(s, JobKind.cv, {"folds": 5}) is not None
            assert jobs.enqueue(s, JobKind.train, {}, dedupe_key="k1") is None  # the index still dedupes
        with db.read() as s:
            assert sorted(j.kind.value for j in s.query(Job)) == ["cv", "train"]
    finally:
        db.dispose()


_OLD_ROWS = [
    "INSERT INTO annotators (name, default_source, created_at) VALUES ('old-hand', 'crowd', CURRENT_TIMESTAMP)",
    "INSERT INTO prompts (content_hash, text, created_at) VALUES ('h', 'Which is better?', CURRENT_TIMESTAMP)",
    "INSERT INTO responses (prompt_id, content_hash, text, created_at) VALUES (1, 'a', 'This one.', CURRENT_TIMESTAMP)",
    "INSERT INTO responses (prompt_id, content_hash, text, created_at) VALUES (1, 'b', 'That one.', CURRENT_TIMESTAMP)",
    "INSERT INTO comparisons (prompt_id, response_a_id, response_b_id, label_count, created_at) "
    "VALUES (1, 1, 2, 1, CURRENT_TIMESTAMP)",
    "INSERT INTO labels (comparison_id, outcome, source, annotator_id, split, idempotency_key, created_at) "
    "VALUES (1, 'a', 'expert', 1, 'train', 'old-1', CURRENT_TIMESTAMP)",
]


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_0005_database_upgrades_to_accounts_and_review_and_back(backend: str, tmp_path: Path,
                                                                  request: pytest.FixtureRequest) -> None:
    """0006 adds accounts and review to a database with labels: every old label is in training (not excluded),
    every annotator keeps its tier and has no link; accounts and review work at once; a downgrade to 0005 and a
    new upgrade keep the labels (SQLite: no rebuild of the annotators table its labels point at)."""
    from alembic import command

    from db import annotators, review
    from db.migrate import alembic_config
    from db.models import Annotator, Label
    from db.pairs import training_pairs

    url = f"sqlite:///{tmp_path / 'old.db'}" if backend == "sqlite" else request.getfixturevalue("pg_url")
    engine = create_engine(url)
    upgrade(engine, "0005")
    with engine.begin() as conn:
        for sql in _OLD_ROWS:
            conn.execute(text(sql))
    engine.dispose()

    db = Database(url)
    try:
        assert current_revision(db.write_engine) == head_revision()
        with db.read() as s:
            ann = s.query(Annotator).one()
            assert (ann.name, ann.tier.value, ann.token_hash, ann.revoked_at, ann.campaign_id) == (
                "old-hand", "crowd", None, None, None)
            assert [lab.excluded for lab in s.query(Label)] == [False]
            assert [p.label_id for p in training_pairs(s).pairs] == [1]
        with db.write() as s:
            assert annotators.invite(s, "old-hand", by="rita")
            assert review.exclude_label(s, 1, by="rita")
        with db.read() as s:
            assert training_pairs(s).excluded == {"review_excluded": 1}
        with db.write_engine.begin() as conn:
            command.downgrade(alembic_config(conn), "0005")
        assert current_revision(db.write_engine) == "0005"
        with db.write_engine.connect() as conn:
            assert conn.execute(text("SELECT name, default_source FROM annotators")).all() == [("old-hand", "crowd")]
            assert conn.execute(text("SELECT idempotency_key FROM labels")).all() == [("old-1",)]
        upgrade(db.write_engine)
        with db.read() as s:
            assert [(lab.idempotency_key, lab.excluded) for lab in s.query(Label)] == [("old-1", False)]
    finally:
        db.dispose()
