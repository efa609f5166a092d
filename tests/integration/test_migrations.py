"""Alembic migrations: a database created by an older revision upgrades in place, keeping its rows, and the
migrated schema matches the models (``db/models.py``) on SQLite and PostgreSQL."""
from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, text

from db.migrate import current_revision, head_revision, upgrade
from db.models import Base
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
