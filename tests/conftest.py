"""Shared fixtures: real SQLite files, a real PostgreSQL database per test, the real-data folder (``SHARED_DATA``)."""
from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from db.config import Settings
from db.session import Database

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("RMSTUDIO_SHARED_DATA", REPO.parent / "shared" / "data"))
PG_URL = os.environ.get("RMSTUDIO_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty RMSTUDIO_HOME with a SQLite database, set in the environment for code and subprocesses."""
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("RMSTUDIO_HOME", str(h))
    monkeypatch.setenv("RMSTUDIO_DB", f"sqlite:///{h / 'rmstudio.db'}")
    return h


@pytest.fixture
def sqlite_db(home: Path) -> Iterator[Database]:
    db = Database(Settings.from_env().db_url)
    yield db
    db.dispose()


def _pg_admin_engine():
    from sqlalchemy import create_engine

    return create_engine(PG_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})


def pg_available() -> str | None:
    """None when the test server answers, else the reason it does not."""
    try:
        eng = _pg_admin_engine()
        with eng.connect() as c:
            c.exec_driver_sql("SELECT 1")
        eng.dispose()
        return None
    except Exception as exc:  # noqa: BLE001
        return f"no PostgreSQL at RMSTUDIO_TEST_PG_URL={PG_URL} ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"


@pytest.fixture
def pg_url(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test (dropped afterwards); RMSTUDIO_DB points at it."""
    reason = pg_available()
    if reason:
        if os.environ.get("RMSTUDIO_REQUIRE_PG"):
            pytest.fail(f"RMSTUDIO_REQUIRE_PG is set but {reason}")
        pytest.skip(reason)
    from sqlalchemy.engine import make_url

    name = f"rmstudio_t_{uuid.uuid4().hex[:12]}"
    admin = _pg_admin_engine()
    with admin.connect() as c:
        c.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    monkeypatch.setenv("RMSTUDIO_DB", url)
    yield url
    with admin.connect() as c:
        c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture
def pg_db(pg_url: str) -> Iterator[Database]:
    db = Database(pg_url)
    yield db
    db.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def any_db(request: pytest.FixtureRequest) -> Database:
    """The same test against a real SQLite file and a real PostgreSQL server."""
    return request.getfixturevalue("sqlite_db" if request.param == "sqlite" else "pg_db")


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (set RMSTUDIO_SHARED_DATA to the folder holding "
                    "hh_harmless_1300.jsonl.gz, lfqa_expert_pairs.jsonl and vicuna80/)")
    return SHARED_DATA
