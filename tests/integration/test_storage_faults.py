"""The database's storage fails: the file system turns read-only, or the disk fills up.

Labelers and the CLI get one clear sentence (not a traceback), reads keep working, nothing is corrupted, and
work resumes once the storage is writable again. Read-only uses a read-only bind mount (root) or permissions
(other users); disk full uses a tiny tmpfs (needs root: skipped with the reason otherwise).
"""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import func, select

from db.models import Label
from db.session import Database, explain_db_error
from tests.app.conftest import invite
from tests.integration import procs


def _sh(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


@contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """Make ``folder`` (and the database in it) read-only for every process, then writable again."""
    if os.geteuid() == 0:
        r = _sh(["mount", "--bind", str(folder), str(folder)])
        if r.returncode != 0:
            pytest.skip(f"root but cannot bind-mount ({r.stderr.strip()}); a read-only folder needs it as root")
        r = _sh(["mount", "-o", "remount,bind,ro", str(folder)])
        if r.returncode != 0:
            _sh(["umount", str(folder)])
            pytest.fail(f"cannot remount {folder} read-only: {r.stderr.strip()}")
        try:
            yield
        finally:
            if _sh(["umount", str(folder)]).returncode != 0:
                _sh(["umount", "-l", str(folder)])
                pytest.fail(f"{folder} was still in use when the test ended (an open database connection)")
    else:
        modes = {p: p.stat().st_mode for p in [folder, *folder.iterdir()]}
        for p in modes:
            p.chmod(0o555 if p.is_dir() else 0o444)
        try:
            yield
        finally:
            for p, m in modes.items():
                p.chmod(m)


@contextmanager
def tiny_disk(folder: Path, size_kb: int) -> Iterator[Path]:
    """A ``size_kb`` tmpfs mounted on ``folder`` (root only)."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("a size-limited tmpfs needs root (mount); run as root to test a full disk")
    r = _sh(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(folder)])
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield folder
    finally:
        _sh(["umount", "-l", str(folder)])


def fill(folder: Path) -> Path:
    """Fill the file system holding ``folder`` to the last byte; returns the filler file."""
    filler = folder / "filler.bin"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args], capture_output=True, text=True, timeout=120,
        cwd=procs.REPO, env=procs.child_env(env),
    )


def _assert_clear_cli_error(r: subprocess.CompletedProcess[str], *words: str) -> None:
    assert r.returncode == 1, (r.returncode, r.stdout[-500:], r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    assert any(w in r.stderr.lower() for w in words), r.stderr[-2000:]


def _label_page_shows(error_words: str, link: str) -> None:
    """The Label page, opened through the personal ``link`` token (made while the database could still be
    written), renders a pair (reads work); clicking a verdict shows one clear error, no exception."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from tests.app.conftest import MAIN

    st.cache_resource.clear()
    try:
        at = AppTest.from_file(MAIN, default_timeout=30)
        at.query_params["invite"] = link
        at.run()
        assert not at.exception, at.exception
        buttons = [b for b in at.button if b.label == "A better"]
        assert buttons, [b.label for b in at.button]
        buttons[0].click().run()
        assert not at.exception, at.exception
        errors = [e.value for e in at.error]
        assert len(errors) == 1 and error_words in errors[0] and "not recorded" in errors[0], errors
    finally:
        import threading

        from app.resources import database

        for t in threading.enumerate():  # the page draws the next pair in a thread: let it finish its read
            if t.name == "rmstudio-next-pair":
                t.join(30)
        database().dispose()  # close the page's connections, so the file system can be unmounted
        st.cache_resource.clear()


def _label_count(db: Database) -> int:
    with db.read() as s:
        return int(s.scalar(select(func.count()).select_from(Label)) or 0)


def test_read_only_database_reads_work_writes_say_so(sqlite_db: Database, home: Path, tmp_path: Path) -> None:
    procs.seed_comparisons(sqlite_db, 12)
    log = tmp_path / "amy.jsonl"
    assert procs.wait_all([procs.spawn_role("labeler", "--name", "amy", "--n", "5", "--log", str(log),
                                            out_dir=tmp_path, name="amy")], 60) == [0]
    before = _label_count(sqlite_db)
    assert before == 5
    trl = tmp_path / "more.jsonl"
    trl.write_text('{"prompt": "p?", "chosen": "good", "rejected": "bad"}\n')
    link = invite("uma", "expert")
    sqlite_db.dispose()  # every process starts afresh on the read-only folder
    with read_only(home):
        db = Database(sqlite_db.url)  # opens (and checks the schema) without writing
        try:
            assert _label_count(db) == before  # reads keep working: dashboards, the labeling queue
            item = procs.show_item(db, "bob", 0, "bob-0")
            assert item is not None and item.prompt
            with pytest.raises(Exception) as ei:
                procs.submit_label(db, item, "left", annotator="bob", source="crowd")
            assert "read-only" in explain_db_error(ei.value)
        finally:
            db.dispose()
        # A labeler process sees one clear error per attempt and no traceback; nothing is stored.
        blog = tmp_path / "bob.jsonl"
        assert procs.wait_all([procs.spawn_role("labeler", "--name", "bob", "--n", "3", "--log", str(blog),
                                                out_dir=tmp_path, name="bob")], 60) == [0]
        errs = [e["error"] for e in procs.read_log(blog) if e["ev"] == "err"]
        assert len(errs) == 3 and all("readonly" in e for e in errs), errs
        _assert_clear_cli_error(_cli("seed-demo"), "read-only")
        _assert_clear_cli_error(_cli("import", "--format", "trl", "--no-progress", str(trl)), "read-only")
        stats = _cli("stats", "--json")  # the CLI's reads work too
        assert stats.returncode == 0, stats.stderr[-2000:]
        _label_page_shows("the database is read-only", link)
    # Writable again: work resumes where it stopped; nothing was corrupted or lost.
    assert procs.sqlite_integrity(home / "rmstudio.db") == "ok"
    assert procs.wait_all([procs.spawn_role("labeler", "--name", "bob", "--n", "3", "--log", str(blog),
                                            out_dir=tmp_path, name="bob2")], 60) == [0]
    audit = procs.audit_labels(sqlite_db, {"amy": (log, "crowd"), "bob": (blog, "crowd")})
    assert audit.missing == [] and audit.duplicated == [] and audit.count_mismatch == [], audit.summary()
    assert len(audit.acked) == 8 and _label_count(sqlite_db) == 8


def test_disk_full_then_space_back(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with tiny_disk(tmp_path / "disk", 3072) as disk:
        url = f"sqlite:///{disk / 'rmstudio.db'}"
        monkeypatch.setenv("RMSTUDIO_DB", url)
        db = Database(url)
        try:
            procs.seed_comparisons(db, 30)
            link = invite("uma", "expert")
            ok_log = tmp_path / "early.jsonl"
            assert procs.wait_all([procs.spawn_role("labeler", "--name", "early", "--n", "5", "--log", str(ok_log),
                                                    out_dir=tmp_path, name="early")], 60) == [0]
            filler = fill(disk)
            # Labels submitted now fail with a clear message; none is half-stored.
            log = tmp_path / "cat.jsonl"
            assert procs.wait_all([procs.spawn_role("labeler", "--name", "cat", "--n", "20", "--log", str(log),
                                                    out_dir=tmp_path, name="cat")], 90) == [0]
            errs = [explain_db_error(Exception(e["error"].split(": ", 1)[-1])) for e in procs.read_log(log) if e["ev"] == "err"]
            assert errs and all("disk holding the database is full" in e for e in errs), errs[:3]
            assert _label_count(db) >= 5  # reads keep working
            with db.read() as s:
                from db import labeling

                assert labeling.next_pair(s, "cat") is not None
            trl = tmp_path / "more.jsonl"
            trl.write_text('{"prompt": "p?", "chosen": "good", "rejected": "bad"}\n')
            _assert_clear_cli_error(_cli("seed-demo"), "full")
            _assert_clear_cli_error(_cli("import", "--format", "trl", "--no-progress", str(trl)), "full")
            _label_page_shows("the disk holding the database is full", link)
            assert procs.sqlite_integrity(disk / "rmstudio.db") == "ok"
            filler.unlink()  # space is back: the labeler re-submits what failed, once
            assert procs.wait_all([procs.spawn_role("labeler", "--name", "cat", "--n", "20", "--log", str(log),
                                                    out_dir=tmp_path, name="cat2")], 90) == [0]
            r = _cli("import", "--format", "trl", "--no-progress", str(trl))  # the CLI's import works again
            assert r.returncode == 0, r.stderr[-2000:]
            audit = procs.audit_labels(db, {"early": (ok_log, "crowd"), "cat": (log, "crowd")})
            assert audit.missing == [] and audit.duplicated == [] and audit.count_mismatch == [], audit.summary()
            assert len(audit.acked) == 25 and _label_count(db) == 25 + 1  # + the imported one
            assert procs.sqlite_integrity(disk / "rmstudio.db") == "ok"
        finally:
            db.dispose()
