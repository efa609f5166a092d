"""How long imports and publishing hold SQLite's write lock, and what a labeler clicking meanwhile waits.

    python bench/import_lock.py --pg postgresql+psycopg://postgres@127.0.0.1:5432/test   # the same on PostgreSQL

    python bench/import_lock.py                      # HH 1,300 + a 10k synthetic file, both import paths, publish
    python bench/import_lock.py --synthetic 20000 --json out.json
    python bench/import_lock.py --only-bulk          # skip the slow per-record path

For each file, each path (``per-record``: ``import_file(..., bulk=False)``, the ``db.store`` path of the last
release; ``bulk``: ``db/bulk.py``) imports into a fresh SQLite file while a labeler process writes one label
(``store.add_label`` in its own write transaction, as the Label page does) every ``--interval-ms``. Reported:
the time inside the import's write transaction (the lock hold), the import's total time (parse, hashing,
write), and the labeler's write latency p50 / p95 / max and errors (a "database is locked" after the 30 s busy
timeout is a lost click, counted with the time it waited) for the writes it started while the import ran.

The 10k file repeats the HH records with a suffix on both compared replies (`` [copy k]``), so its prompts
repeat and its responses, comparisons and labels are new.

``--publish-responses N`` (default 20,000, 0 skips) does the same for publishing a version: one write
transaction inserting the version row and N cached scores, with the code of the last release (a ``VALUES``
list compiled per 1,000 rows) and the current ``db.versions.store_response_scores``.

By hand, not in CI. Prints the machine load (``uptime``) before and after.
"""
from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing as mp
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sqlalchemy import insert, select  # noqa: E402

from db import store, versions  # noqa: E402
from db.importer import import_file  # noqa: E402
from db.models import Prompt, Response, ResponseScore, utcnow  # noqa: E402
from db.session import Database  # noqa: E402

HH = REPO.parent / "shared" / "data" / "hh_harmless_1300.jsonl.gz"


def synthetic(hh: bytes, n: int) -> bytes:
    """``n`` HH records: the file's records, then copies with `` [copy k]`` appended to both final replies."""
    rows = [json.loads(line) for line in gzip.decompress(hh).decode("utf-8").splitlines() if line.strip()]
    out = []
    k = 0
    while len(out) < n:
        for r in rows:
            if len(out) >= n:
                break
            out.append(r if k == 0 else {"chosen": r["chosen"] + f" [copy {k}]", "rejected": r["rejected"] + f" [copy {k}]"})
        k += 1
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out).encode("utf-8")


def _labeler(url: str, comparison_id: int, interval_s: float, stop: Any, ready: Any, out: Any) -> None:
    """One label per write transaction every ``interval_s``; reports ``[(start, seconds)]`` and
    ``[(start, seconds, error)]``."""
    db = Database(url, migrate=False)
    lat: list[tuple[float, float]] = []
    errors: list[tuple[float, float, str]] = []
    ready.set()
    while not stop.is_set():
        t0 = time.monotonic()
        try:
            with db.write() as s:
                store.add_label(s, comparison_id=comparison_id, outcome="a", source="crowd", annotator="bench-labeler",
                                idempotency_key=uuid.uuid4().hex, left="a")
            lat.append((t0, time.monotonic() - t0))
        except Exception as exc:  # noqa: BLE001 - a lost click is what we measure
            errors.append((t0, time.monotonic() - t0, str(exc).splitlines()[0][:200]))
        time.sleep(max(0.0, interval_s - (time.monotonic() - t0)))
    db.dispose()
    out.put((lat, errors))


@contextmanager
def timed_writes(db: Database, spans: list[float]) -> Iterator[None]:
    """Record the duration of every ``db.write()`` transaction (lock taken at its first statement, released at
    commit) in ``spans``."""
    real = db.write

    @contextmanager
    def write() -> Iterator[Any]:
        t0 = time.monotonic()
        try:
            with real() as s:
                yield s
        finally:
            spans.append(time.monotonic() - t0)

    db.write = write  # type: ignore[method-assign]
    try:
        yield
    finally:
        db.write = real  # type: ignore[method-assign]


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


@contextmanager
def fresh_database(pg: str | None) -> Iterator[str]:
    """The URL of an empty database: a SQLite file in a temp dir, or (``pg``: a PostgreSQL server's URL) a new
    database on that server, dropped afterwards."""
    if pg is None:
        with tempfile.TemporaryDirectory(prefix="rm-import-lock-") as d:
            yield f"sqlite:///{Path(d) / 'bench.db'}"
        return
    from sqlalchemy import create_engine, make_url, text

    admin = create_engine(pg, isolation_level="AUTOCOMMIT")
    name = f"rm_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(pg).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def run_case(name: str, op: Callable[[Database], Any], interval_ms: float, seed: Callable[[Database], int],
             pg: str | None = None) -> dict[str, Any]:
    """A fresh database, a labeler process, then ``op(db)`` timed; the labeler's writes during ``op``."""
    with fresh_database(pg) as url:
        db = Database(url)
        cid = seed(db)
        ctx = mp.get_context("spawn")
        stop, ready, out = ctx.Event(), ctx.Event(), ctx.Queue()
        p = ctx.Process(target=_labeler, args=(url, cid, interval_ms / 1000, stop, ready, out), daemon=True)
        p.start()
        ready.wait(60)
        time.sleep(1.0)  # a few writes before, to see the unloaded latency
        spans: list[float] = []
        t0 = time.monotonic()
        with timed_writes(db, spans):
            result = op(db)
        t1 = time.monotonic()
        time.sleep(0.5)
        stop.set()
        lat, errors = out.get(timeout=120)
        p.join(30)
        db.dispose()
    # a failed write (the 30 s busy timeout ran out: a lost click) counts with the time it waited
    during = [s for t, s in lat if t0 <= t <= t1] + [s for t, s, _ in errors if t0 <= t <= t1]
    before = [s for t, s in lat if t < t0]
    err_during = [e for t, _, e in errors if t0 <= t <= t1]
    return {
        "case": name,
        "lock_hold_s": round(max(spans), 3) if spans else None,
        "write_transactions": len(spans),
        "total_s": round(t1 - t0, 3),
        "labeler_writes": len(during),
        "labeler_p50_ms": round(1000 * _pct(during, 0.5), 1),
        "labeler_p95_ms": round(1000 * _pct(during, 0.95), 1),
        "labeler_max_ms": round(1000 * max(during), 1) if during else None,
        "labeler_waits_over_1s": sum(1 for x in during if x > 1.0),
        "labeler_errors": len(err_during),
        "labeler_error_example": err_during[0] if err_during else None,
        "labeler_p50_ms_before": round(1000 * _pct(before, 0.5), 1),
        "result": result,
    }


def seed_comparison(db: Database) -> int:
    with db.write() as s:
        p = store.get_or_create_prompt(s, "bench: the labeler's prompt")
        a = store.get_or_create_response(s, p, "left answer")
        b = store.get_or_create_response(s, p, "right answer")
        return store.get_or_create_comparison(s, a, b).comparison.id


def import_op(data: bytes, filename: str, bulk: bool) -> Callable[[Database], Any]:
    def op(db: Database) -> Any:
        rep = import_file(db, data, filename=filename, bulk=bulk)
        return {"records": rep.records, "labels_added": rep.labels_added, "seconds": round(rep.seconds, 3)}
    return op


def _old_store_response_scores(session: Any, version_id: int, scores: dict[int, tuple[float, float | None]]) -> int:
    """``store_response_scores`` of the last release: a multi-row VALUES list compiled per 1,000 rows."""
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    rows = [{"model_version_id": int(version_id), "response_id": int(r), "score": float(a), "std": None if b is None else float(b)}
            for r, (a, b) in scores.items()]
    for i in range(0, len(rows), 1000):
        stmt = sqlite_insert(ResponseScore).values(rows[i:i + 1000])
        stmt = stmt.on_conflict_do_update(index_elements=["model_version_id", "response_id"],
                                          set_={"score": stmt.excluded.score, "std": stmt.excluded.std})
        session.execute(stmt)
    return len(rows)


def publish_seed(n: int) -> Callable[[Database], int]:
    def seed(db: Database) -> int:
        cid = seed_comparison(db)
        with db.write() as s:
            pid = s.scalar(select(Prompt.id))
            s.execute(insert(Response.__table__), [
                {"prompt_id": pid, "content_hash": f"bench-{i}", "text": f"response {i}", "created_at": utcnow()} for i in range(n)
            ])
        return cid
    return seed


def publish_op(old: bool) -> Callable[[Database], Any]:
    def op(db: Database) -> Any:
        with db.read() as s:
            ids = list(s.scalars(select(Response.id)))
        rng = random.Random(0)
        scores = {r: (rng.gauss(0, 1), rng.random()) for r in ids}  # computed before the transaction, as training does
        write = _old_store_response_scores if old else versions.store_response_scores
        with db.write() as s:
            v = versions.insert_version(s, mode="head", backbone="bench", path=f"models/v-{uuid.uuid4().hex}", config={})
            n = write(s, v.id, scores)
        return {"scores": n}
    return op


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return f"load average {os.getloadavg()}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hh", type=Path, default=HH)
    ap.add_argument("--synthetic", type=int, default=10_000, help="records in the synthetic file (0: skip it)")
    ap.add_argument("--interval-ms", type=float, default=50.0)
    ap.add_argument("--publish-responses", type=int, default=20_000)
    ap.add_argument("--only-bulk", action="store_true", help="skip the per-record path (and the old publish code)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--pg", metavar="URL", help="run on this PostgreSQL server (a fresh database per case) instead of "
                    "SQLite files, e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test")
    args = ap.parse_args(argv)

    hh = args.hh.read_bytes()
    files = [("hh_harmless_1300.jsonl.gz", hh)]
    if args.synthetic:
        files.append((f"hh_synthetic_{args.synthetic}.jsonl", synthetic(hh, args.synthetic)))
    load_before = uptime()
    print(f"# {load_before}", flush=True)
    results = []
    for fname, data in files:
        for bulk in ([True] if args.only_bulk else [False, True]):
            r = run_case(f"import {fname} ({'bulk' if bulk else 'per-record'})", import_op(data, fname, bulk), args.interval_ms, seed_comparison,
                         args.pg)
            results.append(r)
            print(json.dumps(r), flush=True)
    if args.publish_responses:
        for old in ([False] if args.only_bulk or args.pg else [True, False]):  # the old code was SQLite-only
            r = run_case(f"publish {args.publish_responses} scores ({'VALUES per 1000 rows' if old else 'executemany'})",
                         publish_op(old), args.interval_ms, publish_seed(args.publish_responses), args.pg)
            results.append(r)
            print(json.dumps(r), flush=True)
    load_after = uptime()
    print(f"# {load_after}\n")
    cols = ("lock_hold_s", "total_s", "labeler_writes", "labeler_p50_ms", "labeler_p95_ms", "labeler_max_ms",
            "labeler_waits_over_1s", "labeler_errors")
    print("| case | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for r in results:
        print(f"| {r['case']} | " + " | ".join(str(r[c]) for c in cols) + " |")
    if not args.only_bulk:
        print()
        pairs = [(results[i], results[i + 1]) for i in range(0, len(results) - 1, 2)]
        for old, new in pairs:
            if old["lock_hold_s"] and new["lock_hold_s"]:
                print(f"{new['case']}: lock hold {old['lock_hold_s']} s -> {new['lock_hold_s']} s "
                      f"({old['lock_hold_s'] / new['lock_hold_s']:.1f}x shorter); total {old['total_s']} s -> {new['total_s']} s "
                      f"({old['total_s'] / new['total_s']:.1f}x)")
    if args.json:
        args.json.write_text(json.dumps({"uptime_before": load_before, "uptime_after": load_after, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
