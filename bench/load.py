"""Load bench: N labeler processes submit labels through the Label page's code path while a worker retrains
and a dashboard reader polls, against SQLite and PostgreSQL.

    python bench/load.py                              # 20 labelers x 50 labels, both backends
    python bench/load.py --backend sqlite --labelers 8 --labels 30 --no-worker
    python bench/load.py --json results.json

``--threads`` runs the labelers as threads of one process sharing one ``Database`` (as the app server's
sessions do) instead of as processes. Reports labels/s, submit latency p50/p95/p99 (the write transaction alone, and the whole page step: next pair
plus submit), dashboard reads and their latency, and verifies that every acknowledged label is in the
database exactly once with its source and annotator, that ``comparisons.label_count`` matches, and that no
error reached a labeler. Exit code 1 when any check fails.

The worker runs with the automatic retrain policy (head mode on the bundled MiniLM by default; ``--train-params``
overrides) when ``rm_engine.training`` is present, else noop jobs that heartbeat and write progress.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.integration import procs  # noqa: E402

PG_URL = os.environ.get("RMSTUDIO_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@dataclass(frozen=True)
class BenchConfig:
    """One bench run's knobs."""

    labelers: int = 20
    labels: int = 50
    think_ms: float = 100.0
    reader_interval_ms: float = 100.0
    worker: bool = True
    min_new_labels: int = 200
    train_params: dict[str, Any] = field(default_factory=dict)
    drain_s: float = 600.0
    threads: bool = False


@dataclass
class BenchResult:
    """What one backend did under load."""

    backend: str
    mode: str
    labelers: int
    acked: int
    seconds: float
    labels_per_s: float
    submit_ms: dict[str, float]
    page_step_ms: dict[str, float]
    labeler_errors: int
    reads: int
    read_errors: int
    read_ms: dict[str, float]
    jobs: dict[str, int]
    versions: int
    train_seconds: list[float]
    trains_started_during_labeling: int
    integrity: str
    audit_ok: bool
    audit: str


def pg_database() -> tuple[str, Any]:
    """A fresh PostgreSQL database; returns its URL and a function that drops it."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    name = f"rmstudio_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with admin.connect() as c:
            c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()

    return make_url(PG_URL).set(database=name).render_as_string(hide_password=False), drop


def _busy(db: Any) -> bool:
    from db import jobs

    with db.read() as s:
        return bool(jobs.active_jobs(s))


def _train_runs(db: Any, before: float) -> tuple[list[float], int]:
    """Seconds each succeeded train job ran, and how many of them started before ``before``."""
    from db import jobs

    with db.read() as s:
        rows = [(j.started_at, j.finished_at) for j in jobs.list_jobs(s, None, statuses=["succeeded"], kinds=["train"])]
    return ([round((f - st).total_seconds(), 1) for st, f in rows if st and f],
            sum(1 for st, _ in rows if st and st.timestamp() < before))


def _job_counts(db: Any) -> tuple[dict[str, int], int]:
    from collections import Counter

    from sqlalchemy import func, select

    from db import jobs
    from db.models import ModelVersion

    with db.read() as s:
        counts = Counter(f"{j.kind.value}:{j.status.value}" for j in jobs.list_jobs(s, None))
        versions = int(s.scalar(select(func.count()).select_from(ModelVersion)) or 0)
    return dict(counts), versions


def run_backend(backend: str, cfg: BenchConfig, work: Path) -> BenchResult:
    """Run the whole scenario on one backend in ``work``; returns the measurements."""
    from db import policy
    from db.session import Database

    home = work / backend
    home.mkdir(parents=True)
    drop = None
    if backend == "sqlite":
        url = f"sqlite:///{home / 'rmstudio.db'}"
    else:
        url, drop = pg_database()
    env = {"RMSTUDIO_HOME": str(home), "RMSTUDIO_DB": url}
    os.environ.update(env)
    db = Database(url)
    try:
        procs.seed_comparisons(db, cfg.labels + 10, overlap=cfg.labelers)
        worker = None
        if cfg.worker:
            try:
                import rm_engine.training  # noqa: F401

                trains = True
            except ImportError:
                trains = False
            with db.write() as s:
                if trains:
                    policy.set_policy(s, enabled=True, mode="head", min_new_labels=cfg.min_new_labels,
                                      min_interval_s=0.0, train_params=dict(cfg.train_params), rescore=True)
                else:
                    policy.set_policy(s, enabled=False)
                    from db import jobs

                    for _ in range(cfg.labelers):
                        jobs.enqueue(s, "noop", {"steps": 20, "sleep": 0.05})
            worker = procs.spawn([sys.executable, "-m", "cli", "worker", "--poll-interval", "0.5"],
                                 out_dir=home, name="worker", env=env)
            # labelers start once the worker is up, so that it retrains while they work
            procs.wait_for(lambda: " started (lease" in (home / "worker.out").read_text(errors="replace"), 300,
                           "the worker to start")
        stop = home / "stop"
        rlog = home / "reader.jsonl"
        reader = procs.spawn_role("reader", "--seconds", "3600", "--interval-ms", str(cfg.reader_interval_ms),
                                  "--log", str(rlog), "--stop-file", str(stop), "--url", url,
                                  out_dir=home, name="reader", env=env)
        logs: dict[str, tuple[Path, str]] = {}
        argvs = []
        t0 = time.time()
        for i in range(cfg.labelers):
            name, source = f"bench{i}", procs.SOURCES[i % 3]
            logs[name] = (home / f"{name}.jsonl", source)
            argvs.append(["labeler", "--name", name, "--n", str(cfg.labels), "--log", str(logs[name][0]),
                          "--source", source, "--url", url, "--think-ms", str(cfg.think_ms)])
        if cfg.threads:  # one process, one shared Database: the app server's sessions
            shared = Database(url, migrate=False)
            codes = []
            threads = [threading.Thread(target=lambda a=a: codes.append(procs.run_labeler(
                procs.build_parser().parse_args(a), shared))) for a in argvs]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            shared.dispose()
        else:
            kids = [procs.spawn_role(*a, out_dir=home, name=a[2], env=env) for a in argvs]
            codes = procs.wait_all(kids, timeout=3600)
        labels_done = time.time()
        stop.touch()
        procs.wait_all([reader], timeout=60)
        if worker is not None:
            try:  # let the worker finish the retrains the labels triggered
                procs.wait_for(lambda: not _busy(db), cfg.drain_s, "the worker to drain its queue", interval=1.0)
            except TimeoutError:
                pass
            worker.send_signal(signal.SIGTERM)
            procs.wait_all([worker], timeout=120)
        audit = procs.audit_labels(db, logs)
        events = [e for p, _ in logs.values() for e in procs.read_log(p)]
        tries = [e["t"] for e in events if e["ev"] == "try"]
        oks = [e for e in events if e["ev"] == "ok"]
        seconds = (max(e["t"] for e in oks) - min(tries)) if oks and tries else time.time() - t0
        rdone = [e for e in procs.read_log(rlog) if e["ev"] == "done"]
        rd = rdone[0] if rdone else {"reads": 0, "n_errors": -1, "ms": procs.percentiles([])}
        jobs_, versions = _job_counts(db)
        train_s, trained_during = _train_runs(db, labels_done)
        integrity = procs.sqlite_integrity(home / "rmstudio.db") if backend == "sqlite" else "n/a (PostgreSQL)"
        bad_exit = [c for c in codes if c != 0]
        return BenchResult(
            backend=backend, mode="threads of one process" if cfg.threads else "processes", labelers=cfg.labelers, acked=len(audit.acked), seconds=round(seconds, 2),
            labels_per_s=round(len(audit.acked) / max(seconds, 1e-9), 1),
            submit_ms={k: round(v, 1) for k, v in procs.percentiles(audit.latencies_ms).items()},
            page_step_ms={k: round(v, 1) for k, v in procs.percentiles([e["page_ms"] for e in oks]).items()},
            labeler_errors=len(audit.errors) + len(bad_exit), reads=int(rd["reads"]), read_errors=int(rd["n_errors"]),
            read_ms={k: round(v, 1) for k, v in rd["ms"].items()}, jobs=jobs_, versions=versions,
            train_seconds=train_s, trains_started_during_labeling=trained_during,
            integrity=integrity, audit_ok=audit.ok and not bad_exit and len(audit.acked) == cfg.labelers * cfg.labels,
            audit=audit.summary(),
        )
    finally:
        db.dispose()
        if drop is not None:
            drop()


def _print(r: BenchResult) -> None:
    print(f"\n== {r.backend}: {r.labelers} labelers ({r.mode}) ==")
    print(f"labels acknowledged   {r.acked} in {r.seconds:.1f} s = {r.labels_per_s:.1f} labels/s")
    print(f"submit latency (ms)   p50 {r.submit_ms['p50']}  p95 {r.submit_ms['p95']}  p99 {r.submit_ms['p99']}  max {r.submit_ms['max']}")
    print(f"page step (ms)        p50 {r.page_step_ms['p50']}  p95 {r.page_step_ms['p95']}  p99 {r.page_step_ms['p99']}")
    print(f"dashboard reads       {r.reads} ({r.read_errors} errors), p50 {r.read_ms['p50']} ms, p99 {r.read_ms['p99']} ms")
    print(f"jobs                  {r.jobs}; model versions published: {r.versions}")
    print(f"retrains              {len(r.train_seconds)} ran ({r.trains_started_during_labeling} started while labelers "
          f"worked), seconds each: {r.train_seconds}")
    print(f"labeler errors        {r.labeler_errors}")
    print(f"integrity_check       {r.integrity}")
    print(f"exactly once          {'OK' if r.audit_ok else 'FAILED: ' + r.audit}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    ap.add_argument("--labelers", type=int, default=20)
    ap.add_argument("--labels", type=int, default=50, help="labels per labeler")
    ap.add_argument("--think-ms", type=float, default=100.0, help="mean pause between a labeler's labels (100)")
    ap.add_argument("--drain", type=float, default=600.0, help="seconds to wait for the worker's jobs at the end")
    ap.add_argument("--no-worker", action="store_true")
    ap.add_argument("--threads", action="store_true",
                    help="labelers as threads of one process sharing one Database (as in the app server)")
    ap.add_argument("--min-new-labels", type=int, default=200, help="automatic retrain every N new labels")
    ap.add_argument("--train-params", default="{}", help="JSON TrainConfig fields for the automatic retrains")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (logs) and print its path")
    ap.add_argument("--json", default=None, help="write the results to this file")
    args = ap.parse_args(argv)
    cfg = BenchConfig(labelers=args.labelers, labels=args.labels, think_ms=args.think_ms, worker=not args.no_worker,
                      min_new_labels=args.min_new_labels, train_params=json.loads(args.train_params),
                      drain_s=args.drain, threads=args.threads)
    work = Path(tempfile.mkdtemp(prefix="rmstudio-load-"))
    results = []
    try:
        for backend in (("sqlite", "postgres") if args.backend == "both" else (args.backend,)):
            r = run_backend(backend, cfg, work)
            _print(r)
            results.append(r)
    finally:
        if args.keep:
            print(f"\nlogs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"config": asdict(cfg), "results": [asdict(r) for r in results]}, indent=2))
    return 0 if all(r.audit_ok and r.labeler_errors == 0 and r.read_errors == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
