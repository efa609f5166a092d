"""Worker presence: every ``rmstudio worker`` process says it is alive every few seconds (``beat``), so that the
app and the CLI can tell researchers which workers would run a queued job (hosts, devices, job kinds), or that
none would. A worker that stops cleanly says so (``forget``); a killed one is no longer live once it has missed
``LIVE_FACTOR`` beats. No torch, no streamlit.

A busy worker's main loop is inside its job: it stays live through the job's own lease heartbeat
(``jobs.heartbeat_at``), which :func:`live_workers` reads as well.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from db.models import Job, JobStatus, WorkerPresence

LIVE_FACTOR = 3  # beats a worker may miss before it counts as gone
PRUNE_AFTER_S = 86_400.0  # rows of workers silent for this long are deleted


def beat(session: Session, name: str, *, host: str, pid: int, device: str, kinds: Sequence[str] | None,
         every_s: float, now: float | None = None) -> None:
    """Record that worker ``name`` is alive now (insert or update its row)."""
    now = time.time() if now is None else now
    row = session.get(WorkerPresence, name)
    if row is None:
        session.add(WorkerPresence(name=name, host=host, pid=pid, device=device,
                                   kinds=list(kinds) if kinds else None, every_s=every_s, seen_at=now))
    else:
        row.device, row.kinds, row.every_s, row.seen_at = device, list(kinds) if kinds else None, every_s, now
    session.flush()


def forget(session: Session, name: str) -> None:
    """A worker stopping cleanly: remove its row."""
    session.execute(delete(WorkerPresence).where(WorkerPresence.name == name))


def prune(session: Session, now: float | None = None) -> int:
    """Delete the rows of workers silent for :data:`PRUNE_AFTER_S` (killed ones); returns how many."""
    now = time.time() if now is None else now
    return session.execute(delete(WorkerPresence).where(WorkerPresence.seen_at < now - PRUNE_AFTER_S)).rowcount or 0


def live_workers(session: Session, now: float | None = None) -> list[dict[str, Any]]:
    """The live workers, oldest first: ``name``, ``host``, ``pid``, ``device``, ``kinds`` (None: all),
    ``seen_s_ago`` and ``job`` (the id of the job it is running, or None when idle)."""
    now = time.time() if now is None else now
    running = {owner: (job_id, seen) for job_id, owner, seen in session.execute(
        select(Job.id, Job.lease_owner, Job.heartbeat_at).where(Job.status == JobStatus.running,
                                                                Job.lease_expires_at >= now))}
    out = []
    for w in session.scalars(select(WorkerPresence).order_by(WorkerPresence.started_at, WorkerPresence.name)):
        job_id, job_seen = running.pop(w.name, (None, None))
        seen = max(w.seen_at, job_seen or 0.0)
        if job_id is None and now - seen > LIVE_FACTOR * w.every_s:
            continue
        out.append({"name": w.name, "host": w.host, "pid": w.pid, "device": w.device, "kinds": w.kinds,
                    "seen_s_ago": round(now - seen, 1), "job": job_id})
    for owner, (job_id, seen) in running.items():  # a live lease from a worker that never beat (an older one)
        out.append({"name": owner, "host": (owner or "?").split(":")[0], "pid": None, "device": None, "kinds": None,
                    "seen_s_ago": round(now - (seen or now), 1), "job": job_id})
    return out


def _takes(worker: dict[str, Any], job: dict[str, Any]) -> bool:
    return not worker["kinds"] or job["kind"] in worker["kinds"]


def worker_status(live: Sequence[dict[str, Any]], active: Sequence[dict[str, Any]] = ()
                  ) -> tuple[dict[str, str], dict[int, str]]:
    """What each live worker is doing (by name) and what each queued job waits for (by id), from
    :func:`live_workers` and the active jobs (``db.jobs.job_to_dict`` rows). Workers claim the oldest queued job
    of their kinds, so each idle worker is matched with the first queued job it can take: it is "taking" that job
    (at its next poll), never "idle" while a job it could run waits."""
    queued = [j for j in active if j["status"] == "queued" and not j["cancel_requested"]]
    taking: dict[str, int] = {}
    waits: dict[int, str] = {}
    for j in queued:
        free = next((w for w in live if w["job"] is None and w["name"] not in taking and _takes(w, j)), None)
        if free is not None:
            taking[free["name"]] = j["id"]
            waits[j["id"]] = f"waiting for a worker: {free['host']} takes it at its next poll"
            continue
        able = [w for w in live if _takes(w, j)]
        if not live:
            waits[j["id"]] = "waiting for a worker: none is running"
        elif not able:
            waits[j["id"]] = f"waiting for a worker: none of the running ones takes {j['kind']} jobs"
        else:
            busy = ", ".join(f"{w['host']} (job #{w['job'] or taking.get(w['name'])})" for w in able)
            waits[j["id"]] = f"waiting for a worker: next free one of {busy}"
    doing: dict[str, str] = {}
    for w in live:
        if w["job"]:
            doing[w["name"]] = f"running job #{w['job']}"
        elif w["name"] in taking:
            doing[w["name"]] = f"taking job #{taking[w['name']]}"
        elif any(_takes(w, j) for j in queued):
            doing[w["name"]] = "free, the waiting jobs go to other workers"
        elif queued:
            doing[w["name"]] = "free, no waiting job is of its kinds"
        else:
            doing[w["name"]] = "idle"
    return doing, waits


def describe(workers: Sequence[dict[str, Any]], active: Sequence[dict[str, Any]] = ()) -> str:
    """One line for people: ``2 workers: gpu-1 (cuda, running job #12); laptop (cpu, taking job #13, train jobs
    only)``; ``active``: the active jobs (see :func:`worker_status`)."""
    if not workers:
        return "no worker is running"
    doing, _ = worker_status(workers, active)
    parts = []
    for w in workers:
        what = [w["device"] or "device unknown", doing[w["name"]]]
        if w["kinds"]:
            what.append(f"{', '.join(w['kinds'])} jobs only")
        parts.append(f"{w['host']} ({', '.join(what)})")
    return f"{len(workers)} worker{'s' if len(workers) != 1 else ''}: " + "; ".join(parts)


__all__ = ["LIVE_FACTOR", "PRUNE_AFTER_S", "beat", "describe", "forget", "live_workers", "prune", "worker_status"]
