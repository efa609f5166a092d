"""Ten imports of overlapping files at once, each in its own process, on SQLite and PostgreSQL: every import
succeeds (no deadlock reaches the user: rows are written in key order and a transaction that still meets a
deadlock, a serialization failure or SQLite's lock is retried whole), and the labels stored are exactly the
distinct records of the files, each once, with ``label_count`` equal to the real count."""
from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import func, select

from db.models import Comparison, Label, Prompt, Response
from db.session import Database

N_PROCS = 10
N_RECORDS = 900
SLICE = 450  # each process imports 450 of the 900 records (several write batches), in its own order

CHILD = r"""
import json, os, sys, time
from pathlib import Path
from db.importer import import_file
from db.session import Database

url, path, gate = sys.argv[1], sys.argv[2], Path(sys.argv[3])
db = Database(url, migrate=False)
while not gate.exists():
    time.sleep(0.01)
try:
    rep = import_file(db, path)
    print(json.dumps({"ok": True, "labels_added": rep.labels_added, "duplicates": rep.duplicates, "retries": rep.retries}))
except Exception as exc:
    print(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}))
    sys.exit(1)
finally:
    db.dispose()
"""


def _record(i: int) -> dict:
    # prompts, responses and pairs shared between records, so the imports collide on every table
    return {"prompt": f"Shared prompt {i % 70}", "response_a": f"answer {i % 13}", "response_b": f"answer {(i * 7 + 5) % 17} b",
            "winner": "ab"[i % 2], "annotator": f"ann{i % 9}"}


def _files(tmp: Path) -> list[Path]:
    rng = random.Random(7)
    paths = []
    for p in range(N_PROCS):
        start = p * (N_RECORDS - SLICE) // (N_PROCS - 1)
        rows = [_record(i) for i in range(start, start + SLICE)]
        rng.shuffle(rows)  # each file in its own order: without key-ordered writes, a recipe for deadlocks
        path = tmp / f"part{p}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths.append(path)
    return paths


def _run_concurrently(db: Database, tmp: Path) -> list[dict]:
    paths = _files(tmp)
    gate = tmp / "go"
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, db.url, str(p), str(gate)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for p in paths]
    time.sleep(2.0)  # let every child import its modules and connect before the gate opens
    gate.touch()
    out = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        lines = stdout.strip().splitlines()
        out.append(json.loads(lines[-1]) if lines else {"ok": False, "error": stderr[-2000:]})
        out[-1]["rc"] = proc.returncode
    return out


def test_ten_concurrent_overlapping_imports(any_db: Database, tmp_path: Path) -> None:
    results = _run_concurrently(any_db, tmp_path)
    failed = [r for r in results if not r["ok"] or r["rc"] != 0]
    assert not failed, failed
    distinct = {json.dumps(_record(i), sort_keys=True) for i in range(N_RECORDS)}
    with any_db.read() as s:
        labels = s.scalar(select(func.count()).select_from(Label))
        real = dict(s.execute(select(Label.comparison_id, func.count()).group_by(Label.comparison_id)).all())
        counts = dict(s.execute(select(Comparison.id, Comparison.label_count)).all())
        prompts = s.scalar(select(func.count()).select_from(Prompt))
        responses = s.scalar(select(func.count()).select_from(Response))
    assert labels == len(distinct) == N_RECORDS
    assert sum(r["labels_added"] for r in results) == labels  # each label reported added by exactly one import
    assert all(counts[cid] == real.get(cid, 0) for cid in counts)
    assert prompts == 70 and responses == len({(i % 70, f"answer {i % 13}") for i in range(N_RECORDS)}
                                             | {(i % 70, f"answer {(i * 7 + 5) % 17} b") for i in range(N_RECORDS)})


def test_run_write_retries_a_real_deadlock(pg_db: Database) -> None:
    """Two transactions locking two rows in opposite orders: PostgreSQL kills one (40P01); ``run_write`` runs it
    again, whole, and both end with their writes (what an import does when another writer crosses its rows)."""
    import threading

    from sqlalchemy import update

    from db.models import AppSetting

    with pg_db.write() as s:
        s.add_all([AppSetting(key="k1", value={"n": 0}), AppSetting(key="k2", value={"n": 0})])
    barrier = threading.Barrier(2, timeout=30)
    retried: list[str] = []
    errors: list[BaseException] = []

    def bump(s, key: str) -> None:
        s.execute(update(AppSetting).where(AppSetting.key == key).values(value={"n": 1}))

    def txn(first: str, second: str, name: str) -> None:
        attempts = {"n": 0}

        def fn(s) -> None:
            attempts["n"] += 1
            bump(s, first)
            if attempts["n"] == 1:
                barrier.wait()  # both hold their first row: the second update of one of them deadlocks
            bump(s, second)

        try:
            pg_db.run_write(fn, retries=3, on_retry=lambda exc: retried.append(f"{name}: {exc.orig.sqlstate}"))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=txn, args=("k1", "k2", "A")), threading.Thread(target=txn, args=("k2", "k1", "B"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len(retried) == 1 and retried[0].endswith("40P01"), retried
