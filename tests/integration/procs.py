"""Run RM Studio roles in separate processes, kill them, and check what reached the database.

The parent side (tests, ``bench/load.py``) imports this module; the child side runs it as a script::

    python tests/integration/procs.py labeler --name amy --n 50 --log amy.jsonl [--source crowd]
    python tests/integration/procs.py reader --seconds 5 --log reader.jsonl

A labeler takes pairs from the labeling queue and submits verdicts through the Label page's code path
(:func:`show_item`, :func:`submit_label`), appending one JSON line per event to its log with ``os.write`` on an
``O_APPEND`` descriptor, so a line written before a ``kill -9`` is never lost: ``try`` (comparison, side shown
left, choice, stored outcome) before a submission, ``ok`` (with the latency) once it returned, ``err`` when it
raised. A labeler restarted with the same log skips what was acknowledged and re-submits what it tried before
with the same item and key (as a browser retrying a click would). The parent side audits the logs against the
database (:func:`audit_labels`).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # when run as a script
    sys.path.insert(0, str(REPO))

from sqlalchemy import func, select  # noqa: E402

from db import labeling, store  # noqa: E402
from db.models import Annotator, Comparison, Label, Side  # noqa: E402
from db.session import Database  # noqa: E402

SOURCES = ("expert", "crowd", "ai")
# Text an attacker could type into a prompt, a response or a name: it must be stored and shown as text.
HOSTILE = (
    "<script>alert(1)</script>",
    '<img src=x onerror="alert(2)">',
    "[click me](javascript:alert(3))",
    "<b onmouseover=alert(4)>hover</b>",
)


# ---------------------------------------------------------------------------------------------- child side


CHOICES = ("left", "right", "tie", "both_bad")


def show_item(db: Database, annotator: str, seed: int, key: str, comparison_id: int | None = None,
              left: str | None = None) -> Any:
    """What the Label page shows: ``labeling.next_pair`` for the annotator (or a given comparison, for a
    replay), with a deterministic left/right draw and the idempotency key ``key``. None when nothing is left."""
    rng = random.Random(f"{seed}:{key}")
    with db.read() as s:
        if comparison_id is None:
            item = labeling.next_pair(s, annotator, rng=rng)
        else:
            item = labeling.item_for_comparison(s, comparison_id, rng=rng)
    if item is None:
        return None
    changes: dict[str, Any] = {"key": key}
    if left is not None:
        changes["left"] = Side(left)
    return dataclasses.replace(item, **changes)


def submit_label(db: Database, item: Any, choice: str, *, annotator: str, source: str) -> bool:
    """Store one verdict exactly as the Label page does (``labeling.submit_label`` in one write transaction,
    no retry: an error here is an error the labeler would see); returns whether the label was new."""
    with db.write() as s:
        return labeling.submit_label(s, item, choice, annotator=annotator, source=source)[1]


class EventLog:
    """Append-only JSON-lines log that survives ``kill -9`` of its writer (each line is one ``write``)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def emit(self, ev: str, **kw: Any) -> None:
        os.write(self.fd, (json.dumps({"ev": ev, "t": time.time(), **kw}) + "\n").encode())


def read_log(path: Path) -> list[dict[str, Any]]:
    """Events of a log; a torn last line (never expected) is ignored."""
    out: list[dict[str, Any]] = []
    p = Path(path)
    if not p.exists():
        return out
    for line in p.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def _install_commit_pause(db: Database, log: EventLog, state: dict[str, Any], seconds: float) -> None:
    """Hold chosen write transactions open just before COMMIT (rows inserted, write lock held) for a kill."""
    from sqlalchemy import event

    @event.listens_for(db.write_engine, "commit")
    def _pause(_conn: Any) -> None:
        if state.get("pause_key"):
            log.emit("in_commit", key=state["pause_key"])
            state["pause_key"] = None
            time.sleep(seconds)


def run_labeler(args: argparse.Namespace, shared: Database | None = None) -> int:
    """One labeler's loop (see the module docstring). ``shared``: use this database (a thread of a process that
    serves many labelers, like the app server's sessions) instead of opening one."""
    db = shared or Database(args.url or _env_url(), migrate=False)
    log = EventLog(Path(args.log))
    events = read_log(Path(args.log))
    acked = {e["key"] for e in events if e["ev"] == "ok"}
    tried = {e["key"]: e for e in events if e["ev"] == "try"}
    state: dict[str, Any] = {"pause_key": None}
    if args.pause_every:
        _install_commit_pause(db, log, state, args.pause_seconds)
    log.emit("start", pid=os.getpid())
    errors = 0
    fixed: list[int] = []
    if args.fixed:  # every key names one comparison, whoever submits it (replays from several processes)
        with db.read() as s:
            fixed = list(s.scalars(select(Comparison.id).order_by(Comparison.id)))

    for i in range(args.n):
        key = f"{args.name}-{i}"
        if key in acked:
            continue
        prev = tried.get(key)  # tried before a crash: the browser re-submits the same item with the same key
        t0 = time.perf_counter()
        try:
            cid = prev["comparison"] if prev else (fixed[int(random.Random(f"{args.seed}:{key}").random() * len(fixed))] if fixed else None)
            item = show_item(db, args.name, args.seed, key, cid, prev and prev["left"])
            if item is None:
                log.emit("empty", key=key)
                break
            choice = prev["choice"] if prev else random.Random(f"{args.seed}:{key}:c").choice(CHOICES)
            if args.pause_every and (i + 1) % args.pause_every == 0:
                state["pause_key"] = key
            log.emit("try", key=key, comparison=item.comparison_id, left=item.left.value, choice=choice,
                     outcome=labeling.choice_to_outcome(item, choice).value)
            t1 = time.perf_counter()
            created = submit_label(db, item, choice, annotator=args.name, source=args.source)
        except Exception as exc:  # noqa: BLE001 - an error a labeler would see: recorded, counted
            errors += 1
            log.emit("err", key=key, error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}")
            continue
        t2 = time.perf_counter()
        log.emit("ok", key=key, ms=(t2 - t1) * 1000, page_ms=(t2 - t0) * 1000, created=created)
        if args.think_ms:
            time.sleep(random.uniform(0, 2 * args.think_ms) / 1000)
    log.emit("done", errors=errors)
    if shared is None:
        db.dispose()
    return 0


def dashboard_read(db: Database) -> dict[str, Any]:
    """One dashboard refresh: label counts by source and the latest labels with their annotators."""
    try:
        from db import analytics  # the dashboard's service, when present
    except ImportError:
        analytics = None  # type: ignore[assignment]
    fn = getattr(analytics, "overview", None) if analytics else None
    if fn is not None:
        res = fn(db)
        return res if isinstance(res, dict) else {"overview": str(type(res))}
    with db.read() as s:
        by_source = dict(s.execute(select(Label.source, func.count()).group_by(Label.source)).all())
        latest = s.execute(
            select(Label.id, Annotator.name).join(Annotator, Label.annotator_id == Annotator.id).order_by(Label.id.desc()).limit(20)
        ).all()
    return {"by_source": {str(getattr(k, "value", k)): v for k, v in by_source.items()}, "latest": len(latest)}


def run_reader(args: argparse.Namespace) -> int:
    db = Database(args.url or _env_url(), migrate=False)
    log = EventLog(Path(args.log))
    log.emit("start", pid=os.getpid())
    end = time.time() + args.seconds
    lat: list[float] = []
    errors: list[str] = []
    while time.time() < end and not Path(args.stop_file or "/nonexistent").exists():
        t0 = time.perf_counter()
        try:
            dashboard_read(db)
            lat.append((time.perf_counter() - t0) * 1000)
        except Exception as exc:  # noqa: BLE001
            errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")
        time.sleep(args.interval_ms / 1000)
    log.emit("done", reads=len(lat), errors=errors[:20], n_errors=len(errors), ms=percentiles(lat))
    db.dispose()
    return 0


def _env_url() -> str:
    from db.config import Settings

    return Settings.from_env().db_url


def build_parser() -> argparse.ArgumentParser:
    """The child side's command line (``labeler`` and ``reader``)."""
    p = argparse.ArgumentParser(prog="procs.py")
    sub = p.add_subparsers(dest="role", required=True)
    lab = sub.add_parser("labeler")
    lab.add_argument("--name", required=True)
    lab.add_argument("--n", type=int, default=20)
    lab.add_argument("--log", required=True)
    lab.add_argument("--source", default="crowd", choices=SOURCES)
    lab.add_argument("--seed", type=int, default=0)
    lab.add_argument("--url", default=None)
    lab.add_argument("--fixed", action="store_true", help="each key's comparison derives from the key, not the queue")
    lab.add_argument("--think-ms", type=float, default=0.0, help="mean pause between labels")
    lab.add_argument("--pause-every", type=int, default=0, help="hold every Nth write open before COMMIT")
    lab.add_argument("--pause-seconds", type=float, default=60.0)
    lab.set_defaults(func=run_labeler)
    rd = sub.add_parser("reader")
    rd.add_argument("--seconds", type=float, default=5.0)
    rd.add_argument("--interval-ms", type=float, default=50.0)
    rd.add_argument("--log", required=True)
    rd.add_argument("--stop-file", default=None)
    rd.add_argument("--url", default=None)
    rd.set_defaults(func=run_reader)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


# ---------------------------------------------------------------------------------------------- parent side


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a child: the current one, one torch thread, the repository importable."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra or {})
    return env


def spawn(args: Sequence[str], *, out_dir: Path, name: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``args`` in its own process group, stdout+stderr to ``out_dir/<name>.out``."""
    out = open(Path(out_dir) / f"{name}.out", "ab")  # noqa: SIM115 - owned by the child
    return subprocess.Popen(
        list(args), cwd=REPO, env=child_env(env), stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
    )


def spawn_role(role: str, *args: str, out_dir: Path, name: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start one of this module's roles (``labeler``, ``reader``) as a child process."""
    return spawn([sys.executable, str(Path(__file__).resolve()), role, *args], out_dir=out_dir, name=name, env=env)


def kill9(proc: subprocess.Popen[bytes]) -> None:
    """``kill -9`` a child's whole process group and reap it; a child already reaped is left alone (its id may
    belong to someone else's process by now)."""
    if proc.poll() is None:  # not reaped yet, so its process group id is still ours even if it just exited
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)


def wait_all(procs: Iterable[subprocess.Popen[bytes]], timeout: float) -> list[int]:
    """Wait for children; any still running at the deadline is killed and reported as -9."""
    end = time.time() + timeout
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=max(0.1, end - time.time())))
        except subprocess.TimeoutExpired:
            kill9(p)
            codes.append(-9)
    return codes


def wait_for(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``pred`` until it returns something truthy; fail naming ``what`` at the deadline."""
    end = time.time() + timeout
    while time.time() < end:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def wait_for_event(log: Path, ev: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> dict[str, Any]:
    """The first ``ev`` event in ``log``; fails early if ``proc`` exits first."""

    def _find() -> dict[str, Any] | None:
        for e in read_log(log):
            if e["ev"] == ev:
                return e
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{log.name}: process exited with {proc.returncode} before '{ev}'")
        return None

    return wait_for(_find, timeout, f"event '{ev}' in {log}")


def percentiles(xs: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/max of latencies (nearest rank), 0 for an empty list."""
    if not xs:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0}
    s = sorted(xs)

    def q(p: float) -> float:
        return float(s[min(len(s) - 1, max(0, int(round(p * len(s) + 0.5)) - 1))])

    return {"p50": q(0.50), "p95": q(0.95), "p99": q(0.99), "max": float(s[-1])}


def seed_comparisons(db: Database, n: int, hostile: bool = True, overlap: int = 100) -> list[int]:
    """Store ``n`` prompts with two responses each (some carrying hostile markup); returns comparison ids.

    The queue policy lets every pair take ``overlap`` labels, so each labeler can label every pair once."""
    ids = []
    with db.write() as s:
        labeling.save_queue_policy(s, labeling.QueuePolicy(target_overlap=overlap))
        for i in range(n):
            bad = HOSTILE[i % len(HOSTILE)] if hostile else ""
            p = store.get_or_create_prompt(s, f"Prompt {i}: explain item {i}. {bad}")
            ra = store.get_or_create_response(s, p, f"Answer A to {i}. {bad}", model="m1")
            rb = store.get_or_create_response(s, p, f"Answer B to {i}.", model="m2")
            ids.append(store.get_or_create_comparison(s, ra, rb).comparison.id)
    return ids


@dataclass
class LabelAudit:
    """What a set of labeler logs says against what the database holds."""

    acked: set[str] = field(default_factory=set)
    tried: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # acknowledged but not stored
    phantom: list[str] = field(default_factory=list)  # stored but never tried
    wrong: list[str] = field(default_factory=list)  # stored with another annotator/source/comparison/outcome
    duplicated: list[str] = field(default_factory=list)
    count_mismatch: list[int] = field(default_factory=list)  # comparisons whose label_count is wrong
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.errors or self.missing or self.phantom or self.wrong or self.duplicated or self.count_mismatch)

    def summary(self) -> str:
        return (
            f"acked={len(self.acked)} tried={len(self.tried)} errors={self.errors[:3]} missing={self.missing[:5]} "
            f"phantom={self.phantom[:5]} wrong={self.wrong[:5]} duplicated={self.duplicated[:5]} "
            f"label_count_mismatch={self.count_mismatch[:5]}"
        )


def audit_labels(db: Database, logs: dict[str, tuple[Path, str]], *, seed: int = 0) -> LabelAudit:
    """Check every labeler's log against the database.

    ``logs`` maps annotator name -> (log path, source). Every acknowledged key must be stored exactly once with
    its annotator, source, comparison and outcome; nothing that was never tried may exist; each comparison's
    ``label_count`` must equal its labels.
    """
    a = LabelAudit()
    planned: dict[str, tuple[str, str, int, str]] = {}
    for name, (path, source) in logs.items():
        for e in read_log(path):
            if e["ev"] == "try":
                a.tried.add(e["key"])
                planned[e["key"]] = (name, source, e["comparison"], e["outcome"])
            elif e["ev"] == "ok":
                a.acked.add(e["key"])
                a.latencies_ms.append(float(e["ms"]))
            elif e["ev"] == "err":
                a.errors.append(f"{e['key']}: {e['error']}")
    with db.read() as s:
        rows = s.execute(
            select(Label.idempotency_key, Annotator.name, Label.source, Label.comparison_id, Label.outcome)
            .join(Annotator, Label.annotator_id == Annotator.id)
            .where(Annotator.name.in_(list(logs)))
        ).all()
        counts = dict(s.execute(select(Label.comparison_id, func.count()).group_by(Label.comparison_id)).all())
        stored_counts = dict(s.execute(select(Comparison.id, Comparison.label_count)).all())
    seen: dict[str, int] = {}
    for key, name, source, cid, outcome in rows:
        seen[key] = seen.get(key, 0) + 1
        want = planned.get(key)
        if want is None:
            a.phantom.append(key)
            continue
        got = (name, getattr(source, "value", source), cid, getattr(outcome, "value", outcome))
        if got != want:
            a.wrong.append(f"{key}: stored {got}, submitted {want}")
    a.duplicated = sorted(k for k, n in seen.items() if n > 1)
    a.missing = sorted(a.acked - set(seen))
    a.count_mismatch = sorted(c for c, n in stored_counts.items() if counts.get(c, 0) != n)
    return a


def sqlite_integrity(path: Path) -> str:
    """``PRAGMA integrity_check`` of a SQLite file through a fresh connection (``"ok"`` when sound)."""
    import sqlite3

    con = sqlite3.connect(str(path), timeout=30)
    try:
        return ",".join(r[0] for r in con.execute("PRAGMA integrity_check").fetchall())
    finally:
        con.close()


def sqlite_path(url: str) -> Path | None:
    """The file behind a ``sqlite:///`` URL, else None."""
    from sqlalchemy.engine import make_url

    u = make_url(url)
    return Path(u.database) if u.get_backend_name() == "sqlite" and u.database else None


if __name__ == "__main__":
    sys.exit(main())
