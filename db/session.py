"""Engines and sessions.

SQLite is tuned for many writers and concurrent readers:

* WAL journal, so readers never wait for the writer; ``synchronous=FULL`` so a committed label survives power loss;
* every write transaction starts with ``BEGIN IMMEDIATE``: it takes the write lock first and waits on
  ``busy_timeout`` for it. A deferred transaction that reads and then writes would fail at once with
  "database is locked", whatever the timeout;
* a separate read engine (deferred ``BEGIN``) for pages and dashboards.

PostgreSQL uses the same code with ordinary transactions. On both, JSON columns store NaN and infinite floats as
null (``db.bounds.json_dumps``): PostgreSQL would refuse the whole row.
"""
from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from sqlalchemy import create_engine, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from db.bounds import json_dumps
from db.migrate import upgrade

T = TypeVar("T")

BUSY_TIMEOUT_MS = 30_000


class DatabaseError(RuntimeError):
    """A database problem explained in one line for the user (read-only file, disk full, unreachable server)."""


RETRYABLE_SQLSTATES = ("40001", "40P01")  # PostgreSQL: serialization failure, deadlock detected


def is_retryable(exc: BaseException) -> bool:
    """A failure that running the same transaction again can cure: a PostgreSQL serialization failure or
    deadlock (the server rolled the transaction back), SQLite's lock still held after ``busy_timeout``."""
    orig = getattr(exc, "orig", exc)
    if getattr(orig, "sqlstate", None) in RETRYABLE_SQLSTATES or getattr(orig, "pgcode", None) in RETRYABLE_SQLSTATES:
        return True
    return isinstance(exc, OperationalError) and "database is locked" in str(exc).lower()


def explain_db_error(exc: BaseException) -> str:
    msg = str(getattr(exc, "orig", exc) or exc).strip().splitlines()[0] if str(exc) else type(exc).__name__
    low = msg.lower()
    if "readonly" in low or "read-only" in low or "read only" in low:
        return f"the database is read-only ({msg}); check the file's permissions"
    if "disk" in low and "full" in low or "no space" in low:
        return f"the disk holding the database is full ({msg}); free some space and retry"
    if "locked" in low:
        return f"the database stayed locked for more than {BUSY_TIMEOUT_MS // 1000} s ({msg})"
    if "unable to open" in low:
        return f"cannot open the database file ({msg}); check RMSTUDIO_HOME / RMSTUDIO_DB"
    return msg


def _read_only_uri(path: str | None) -> str | None:
    """A ``mode=ro&immutable=1`` URI for a database whose folder cannot be written (read-only mount or
    permissions): SQLite cannot create the WAL index there, so a plain open fails even for reads. Only when no
    WAL content is pending (after a clean close), else None."""
    if not path or path == ":memory:" or path.startswith("file:"):
        return None
    p = Path(path).resolve()
    wal = p.with_name(p.name + "-wal")
    if not p.is_file() or os.access(p.parent, os.W_OK) or (wal.exists() and wal.stat().st_size > 0):
        return None
    return f"file:{quote(str(p))}?mode=ro&immutable=1"


def _sqlite_engine(url: str, immediate: bool) -> Engine:
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_MS / 1000},
                           json_serializer=json_dumps)

    @event.listens_for(engine, "do_connect")
    def _do_connect(dialect: Any, _rec: Any, cargs: list[Any], cparams: dict[str, Any]) -> Any:
        ro = _read_only_uri(cargs[0] if cargs else cparams.get("database"))
        if ro is None:
            return dialect.dbapi.connect(*cargs, **cparams)
        # Reads keep working; a write fails with "attempt to write a readonly database".
        return dialect.dbapi.connect(ro, **{k: v for k, v in cparams.items() if k not in ("database", "uri")}, uri=True)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy (not the sqlite3 module) issue BEGIN, so we can choose IMMEDIATE.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        try:
            cur.execute("PRAGMA journal_mode=WAL")
        except Exception:  # noqa: BLE001 - a read-only database cannot switch modes; it may already be WAL
            pass
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=FULL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


class Database:
    """A write engine and a read engine for one database URL.

    Use ``with db.write() as s:`` for short write transactions (committed on exit, rolled back on error)
    and ``with db.read() as s:`` for reads. A program opens its database once, where it starts, as
    ``Database(settings.db_url)`` (the app keeps one per server process), and passes it down.
    """

    def __init__(self, url: str, *, migrate: bool = True) -> None:
        self.url = url
        u = make_url(url)
        self.dialect = u.get_backend_name()
        if self.dialect == "sqlite":
            if u.database and u.database != ":memory:":
                Path(u.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            self.write_engine = _sqlite_engine(url, immediate=True)
            self.read_engine = _sqlite_engine(url, immediate=False)
        else:
            kw: dict[str, Any] = {"pool_pre_ping": True, "json_serializer": json_dumps}
            self.write_engine = create_engine(url, **kw)
            self.read_engine = create_engine(url, **kw)
        self._write_sessions = sessionmaker(self.write_engine, expire_on_commit=False)
        self._read_sessions = sessionmaker(self.read_engine, expire_on_commit=False)
        if migrate:
            self.migrate()

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision (safe to call from several processes at once)."""

        upgrade(self.write_engine)

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A write transaction: takes the write lock first on SQLite, commits on success."""
        with self._write_sessions() as s:
            with s.begin():
                yield s

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self._read_sessions() as s:
            try:
                yield s
            finally:
                s.rollback()

    def run_write(self, fn: Callable[[Session], T], retries: int = 3, *, backoff_s: float = 0.05,
                  max_backoff_s: float = 2.0, on_retry: Callable[[BaseException], None] | None = None) -> T:
        """Run ``fn`` in a write transaction; run the whole transaction again (up to ``retries`` times, after a
        growing, jittered pause; ``on_retry(exc)`` first) when it failed on a transient conflict
        (``is_retryable``). ``fn`` must be safe to run again: what it wrote in the failed attempt was rolled back."""
        for attempt in range(retries + 1):
            try:
                with self.write() as s:
                    return fn(s)
            except DBAPIError as exc:
                if attempt < retries and is_retryable(exc):
                    if on_retry is not None:
                        on_retry(exc)
                    time.sleep(min(max_backoff_s, backoff_s * 2**attempt) * random.uniform(0.5, 1.5))
                    continue
                raise
        raise AssertionError("unreachable")

    def ping(self) -> None:
        with self.read() as s:
            s.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.write_engine.dispose()
        self.read_engine.dispose()


def dialect_insert(session: Session) -> Any:
    """The ``insert`` construct of the session's dialect (PostgreSQL or SQLite), whose statements take
    ``on_conflict_do_nothing`` / ``on_conflict_do_update``: the one upsert every ``db/`` module uses."""
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
