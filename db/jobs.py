"""The job queue: background work stored in the ``jobs`` table and run by ``rmstudio worker`` processes.

Life of a job::

    enqueue -> queued --claim--> running --finish--> succeeded | failed | cancelled
                 ^                  |
                 +-- lease expired (requeue_expired, attempts < max) or released on SIGTERM

* **Claim** is one atomic statement: ``UPDATE jobs ... WHERE id = (SELECT ... LIMIT 1) RETURNING`` inside a
  ``BEGIN IMMEDIATE`` transaction on SQLite (one writer at a time), and the same with
  ``FOR UPDATE SKIP LOCKED`` in the sub-select on PostgreSQL, so two workers never get the same job.
* **Lease**: a claimed job carries ``lease_owner`` and ``lease_expires_at`` (epoch seconds). The worker
  renews it with ``heartbeat``; a job whose lease ran out (its worker was killed) is re-queued by
  ``requeue_expired`` up to ``max_attempts`` times, then failed with the reason. A running job whose lease
  cannot be a real one (none, NaN, or beyond ``MAX_LEASE_S`` ahead) counts as expired (:func:`lease_gone`).
* **Fencing**: every state change made by a worker (``heartbeat``, ``finish``, ``release``, ``set_device``) matches
  on ``lease_owner`` and ``status = 'running'`` (``add_to_result``, on the job it finished, on ``lease_owner``); a
  worker that lost its lease changes nothing. ``finish`` takes a session so that it can run inside the transaction
  that publishes a model version.
* **Dedupe**: at most one *queued* job per ``dedupe_key`` (a partial unique index); ``enqueue`` relies on
  ``INSERT ... ON CONFLICT DO NOTHING``, never on check-then-insert.
* **Cancel** is cooperative: a queued job is cancelled at once, a running one gets ``cancel_requested``,
  which the worker sees on its next heartbeat.
* **Automatic retrains** are enqueued by :func:`enqueue_retrain_if_due`, the policy checked under a lock.

Every statement that writes the ``jobs`` and ``job_logs`` tables is in this module (``db/policy.py`` and
``db/workers.py`` only read them); the worker, the command line and the app call these functions. Functions taking a
``Session`` run in the caller's transaction (``enqueue`` and ``finish`` belong to the transaction that publishes a
version); those taking a ``Database`` run their own short one.

Times are ``time.time()`` of the process that writes them: machines sharing a PostgreSQL queue need
synchronised clocks (leases are tens of seconds, so NTP is plenty).
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from db import policy as pol
from db.models import Job, JobKind, JobLog, JobStatus, utcnow
from db.session import Database, dialect_insert

#: Terminal states: a job in one of these never changes again.
FINAL_STATUSES = frozenset({JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled})
#: Longest log line kept (longer lines are cut, with a marker).
MAX_LOG_LINE = 4000
#: Longest lease a worker may take, in seconds (``WorkerConfig.lease_s``).
MAX_LEASE_S = 86_400.0
#: ``pg_advisory_xact_lock`` key of the automatic retrain's check-then-enqueue (:func:`enqueue_retrain_if_due`).
_PG_AUTO_RETRAIN_LOCK = 727_004


def _check_lease(lease_s: float) -> None:
    if not 0 < lease_s <= MAX_LEASE_S:  # NaN fails this too
        raise ValueError(f"lease_s must be a number of seconds > 0 and <= {MAX_LEASE_S:g}, got {lease_s!r}")


def lease_gone(now: float) -> ColumnElement[bool]:
    """SQL: a running job's lease is over at ``now``: expired, or not a lease any worker could hold (NULL, as SQLite
    stores NaN; beyond ``MAX_LEASE_S`` ahead, as infinity is, and NaN on PostgreSQL, which orders NaN above every
    number). Such a job would otherwise stay ``running`` for ever."""
    lease = Job.lease_expires_at
    return or_(lease < now, lease.is_(None), lease > now + MAX_LEASE_S)


@dataclass(frozen=True)
class HeartbeatResult:
    """What a heartbeat learned: whether this worker still holds the lease, and whether cancel was asked."""

    ok: bool
    cancel_requested: bool = False

    @property
    def lost(self) -> bool:
        """True when the lease is gone (the job was re-queued, finished or taken by another worker)."""
        return not self.ok


def _kind(kind: JobKind | str) -> JobKind:
    try:
        return JobKind(kind)
    except ValueError:
        raise ValueError(f"unknown job kind {kind!r}: expected one of {', '.join(k.value for k in JobKind)}") from None


def _status(status: JobStatus | str) -> JobStatus:
    try:
        return JobStatus(status)
    except ValueError:
        raise ValueError(
            f"unknown job status {status!r}: expected one of {', '.join(s.value for s in JobStatus)}"
        ) from None


_DEDUPE_WHERE = and_(Job.status == JobStatus.queued, Job.dedupe_key.is_not(None))


def enqueue(
    session: Session,
    kind: JobKind | str,
    params: dict[str, Any] | None = None,
    *,
    dedupe_key: str | None = None,
    max_attempts: int = 3,
    created_by: str | None = None,
) -> Job | None:
    """Add a queued job in the caller's write transaction; returns it, or None when a queued job with the
    same ``dedupe_key`` already exists (decided by the partial unique index, safe against concurrent callers).
    """
    k = _kind(kind)
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
    if dedupe_key is not None and not (0 < len(dedupe_key) <= 100):
        raise ValueError(f"dedupe_key must be 1 to 100 characters, got {len(dedupe_key)}")
    values = {
        "kind": k,
        "status": JobStatus.queued,
        "params": dict(params or {}),
        "dedupe_key": dedupe_key,
        "attempts": 0,
        "max_attempts": int(max_attempts),
        "cancel_requested": False,
        "created_by": created_by,
        "created_at": utcnow(),
    }
    stmt = dialect_insert(session)(Job).values(**values)
    if dedupe_key is not None:
        stmt = stmt.on_conflict_do_nothing(index_elements=[Job.dedupe_key], index_where=_DEDUPE_WHERE)
    new_id = session.execute(stmt.returning(Job.id)).scalar()
    if new_id is None:
        return None
    return session.get(Job, new_id)


def enqueue_retrain_if_due(session: Session, created_by: str) -> tuple[Job | None, str]:
    """Enqueue one automatic retrain (``dedupe_key`` :data:`db.policy.AUTO_RETRAIN_KEY`) in the caller's write
    transaction when the retrain policy is due. Returns the new job (None when the policy is not due or the retrain
    is already queued) and the policy's reason.

    The policy is checked under a lock held to the end of the transaction: the dedupe key cannot tell a retrain
    that a worker has just claimed (no longer queued) from none, so two workers checking at once would each
    enqueue one. SQLite's ``BEGIN IMMEDIATE`` already serialises write transactions; PostgreSQL takes a
    transaction-scoped advisory lock.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_AUTO_RETRAIN_LOCK})
    due, reason = pol.should_retrain(session)
    if not due:
        return None, reason
    job = enqueue(session, JobKind.train, pol.auto_retrain_params(session), dedupe_key=pol.AUTO_RETRAIN_KEY,
                  created_by=created_by)
    return job, reason


def claim(
    db: Database, owner: str, lease_s: float, kinds: Iterable[JobKind | str] | None = None
) -> Job | None:
    """Take the oldest queued job (of ``kinds``, if given) for ``owner`` with a lease of ``lease_s`` seconds.

    Runs its own short write transaction. The job comes back ``running`` with ``attempts`` incremented,
    or None when nothing is queued. Jobs whose ``cancel_requested`` is set are never claimed.
    """
    _check_lease(lease_s)
    kind_list = [_kind(k) for k in kinds] if kinds is not None else None
    now = time.time()
    with db.write() as s:
        pick = select(Job.id).where(Job.status == JobStatus.queued, Job.cancel_requested.is_(False))
        if kind_list is not None:
            pick = pick.where(Job.kind.in_(kind_list))
        pick = pick.order_by(Job.id).limit(1)
        if not db.is_sqlite:
            pick = pick.with_for_update(skip_locked=True)
        stmt = (
            update(Job)
            .where(Job.id == pick.scalar_subquery(), Job.status == JobStatus.queued)
            .values(
                status=JobStatus.running,
                lease_owner=owner,
                lease_expires_at=now + lease_s,
                heartbeat_at=now,
                attempts=Job.attempts + 1,
                started_at=utcnow(),
                finished_at=None,
            )
            .returning(Job.id)
            .execution_options(synchronize_session=False)
        )
        job_id = s.execute(stmt).scalar()
        if job_id is None:
            return None
        return s.get(Job, job_id)


def has_queued(session: Session, kinds: Iterable[JobKind | str] | None = None) -> bool:
    """Whether a claimable job is queued (a cheap read, so that idle workers poll without taking a write lock)."""
    q = select(Job.id).where(Job.status == JobStatus.queued, Job.cancel_requested.is_(False))
    if kinds is not None:
        q = q.where(Job.kind.in_([_kind(k) for k in kinds]))
    return session.scalar(q.limit(1)) is not None


def heartbeat(
    db: Database, job_id: int, owner: str, lease_s: float, progress: dict[str, Any] | None = None
) -> HeartbeatResult:
    """Renew ``owner``'s lease on a running job (and store ``progress`` when given).

    Returns ``ok=False`` when the lease is lost; ``cancel_requested`` tells the worker to stop.
    """
    _check_lease(lease_s)
    now = time.time()
    values: dict[str, Any] = {"lease_expires_at": now + lease_s, "heartbeat_at": now}
    if progress is not None:
        values["progress"] = dict(progress)
    with db.write() as s:
        stmt = (
            update(Job)
            .where(Job.id == job_id, Job.lease_owner == owner, Job.status == JobStatus.running)
            .values(**values)
            .returning(Job.cancel_requested)
            .execution_options(synchronize_session=False)
        )
        row = s.execute(stmt).first()
    if row is None:
        return HeartbeatResult(ok=False)
    return HeartbeatResult(ok=True, cancel_requested=bool(row[0]))


def request_cancel(db: Database, job_id: int) -> JobStatus:
    """Ask a job to stop. A queued job is cancelled at once; a running one is flagged and stops at the
    worker's next check (it publishes nothing). Returns the job's status after the request.

    Raises ``LookupError`` for an unknown id. A job already finished is left as it is.
    """
    with db.write() as s:
        job = s.get(Job, job_id)
        if job is None:
            raise LookupError(f"no job with id {job_id}")
        if job.status is JobStatus.queued:
            job.status = JobStatus.cancelled
            job.cancel_requested = True
            job.finished_at = utcnow()
            job.error = "cancelled before it started"
        elif job.status is JobStatus.running:
            job.cancel_requested = True
        return job.status


def finish(
    session: Session,
    job_id: int,
    owner: str,
    status: JobStatus | str,
    result: dict[str, Any] | None = None,
    error: str | None = None,
    *,
    progress: dict[str, Any] | None = None,
) -> bool:
    """Move ``owner``'s running job to a final status, in the caller's transaction (``progress``, when
    given, replaces the stored progress in the same statement).

    Fenced: returns False (and changes nothing) unless ``owner`` still holds the job and it is running.
    The worker calls this inside the transaction that inserts a new model version, so the version row
    and ``succeeded`` appear together or not at all.
    """
    st = _status(status)
    if st not in FINAL_STATUSES:
        raise ValueError(f"finish needs a final status (succeeded, failed, cancelled), got {st.value!r}")
    values: dict[str, Any] = {"status": st, "result": result, "error": error, "finished_at": utcnow(), "lease_expires_at": None}
    if progress is not None:
        values["progress"] = progress
    stmt = (
        update(Job)
        .where(Job.id == job_id, Job.lease_owner == owner, Job.status == JobStatus.running)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return bool(session.execute(stmt).rowcount)


def add_to_result(session: Session, job_id: int, owner: str, values: dict[str, Any]) -> bool:
    """Merge ``values`` into the result of a job ``owner`` ran, in the caller's transaction (a train job learns its
    version's id only after the transaction that inserted the version and finished the job has committed).

    Fenced on ``owner``, which a finished job keeps: returns False (and changes nothing) for a job another worker
    ran. A finished job changes state no more, so reading and writing its result needs no lock.
    """
    job = session.get(Job, job_id)
    if job is None or job.lease_owner != owner:
        return False
    job.result = {**(job.result or {}), **values}
    return True


def _requeue_one(s: Session, job: Job, reason: str, *, count_attempt: bool) -> str:
    """Put one running job back in the queue (or fail it when out of attempts). Returns the new status."""
    attempts = job.attempts if count_attempt else max(0, job.attempts - 1)
    if count_attempt and attempts >= job.max_attempts:
        job.status = JobStatus.failed
        job.error = f"{reason}; gave up after {attempts} of {job.max_attempts} attempts"
        job.finished_at = utcnow()
        job.lease_expires_at = None
        return JobStatus.failed.value
    try:
        with s.begin_nested():
            job.status = JobStatus.queued
            job.attempts = attempts
            job.lease_owner = None
            job.lease_expires_at = None
            job.error = reason
            s.flush()
    except IntegrityError:
        # Another job with the same dedupe key is already queued: it does the same work.
        s.refresh(job)
        job.status = JobStatus.cancelled
        job.error = f"{reason}; superseded by an equivalent queued job (dedupe key {job.dedupe_key!r})"
        job.finished_at = utcnow()
        job.lease_expires_at = None
        return JobStatus.cancelled.value
    return JobStatus.queued.value


def has_expired(session: Session, now: float | None = None) -> bool:
    """Whether a running job's lease is over (:func:`lease_gone`): a cheap read, so that idle workers take the write
    lock of :func:`requeue_expired` only when there is something to re-queue."""
    now = time.time() if now is None else now
    q = select(Job.id).where(Job.status == JobStatus.running, lease_gone(now)).limit(1)
    return session.scalar(q) is not None


def requeue_expired(db: Database, now: float | None = None) -> list[tuple[int, str]]:
    """Re-queue running jobs whose lease has expired (their worker died), or fail those out of attempts.

    A job whose cancel was requested is cancelled instead. Returns ``[(job_id, new_status), ...]``.
    """
    now = time.time() if now is None else now
    out: list[tuple[int, str]] = []
    with db.write() as s:
        q = select(Job).where(Job.status == JobStatus.running, lease_gone(now)).order_by(Job.id)
        if not db.is_sqlite:
            q = q.with_for_update(skip_locked=True)
        for job in s.scalars(q).all():
            owner = job.lease_owner
            if job.cancel_requested:
                job.status = JobStatus.cancelled
                job.error = f"cancelled; its worker {owner} stopped responding"
                job.finished_at = utcnow()
                job.lease_expires_at = None
                out.append((job.id, JobStatus.cancelled.value))
                continue
            reason = f"lease expired: worker {owner} stopped heartbeating (attempt {job.attempts})"
            out.append((job.id, _requeue_one(s, job, reason, count_attempt=True)))
    return out


def release(db: Database, job_id: int, owner: str, reason: str = "worker stopped") -> str | None:
    """Give a running job back to the queue without counting the attempt (clean shutdown on SIGTERM).

    Fenced on ``owner``; returns the job's new status, or None if this worker no longer held it.
    """
    with db.write() as s:
        job = s.scalar(select(Job).where(Job.id == job_id, Job.lease_owner == owner, Job.status == JobStatus.running))
        if job is None:
            return None
        if job.cancel_requested:
            job.status = JobStatus.cancelled
            job.finished_at = utcnow()
            job.lease_expires_at = None
            return JobStatus.cancelled.value
        return _requeue_one(s, job, f"released: {reason}", count_attempt=False)


def set_device(db: Database, job_id: int, owner: str, device: str) -> bool:
    """Record the device (``cpu``, ``cuda:0``) a running job uses; fenced on ``owner``."""
    with db.write() as s:
        stmt = (
            update(Job)
            .where(Job.id == job_id, Job.lease_owner == owner, Job.status == JobStatus.running)
            .values(device=device)
            .execution_options(synchronize_session=False)
        )
        return bool(s.execute(stmt).rowcount)


def get_job(session: Session, job_id: int) -> Job | None:
    """One job by id, or None."""
    return session.get(Job, job_id)


def list_jobs(
    session: Session,
    limit: int | None = 50,
    *,
    statuses: Sequence[JobStatus | str] | None = None,
    kinds: Sequence[JobKind | str] | None = None,
) -> list[Job]:
    """Jobs, newest first (the newest ``limit``; None: all), optionally filtered by status and kind."""
    q = select(Job)
    if statuses:
        q = q.where(Job.status.in_([_status(x) for x in statuses]))
    if kinds:
        q = q.where(Job.kind.in_([_kind(k) for k in kinds]))
    return list(session.scalars(q.order_by(Job.id.desc()).limit(limit)))


def active_jobs(session: Session, kinds: Sequence[JobKind | str] | None = None) -> list[Job]:
    """Queued and running jobs, oldest first."""
    q = select(Job).where(Job.status.in_([JobStatus.queued, JobStatus.running]))
    if kinds:
        q = q.where(Job.kind.in_([_kind(k) for k in kinds]))
    return list(session.scalars(q.order_by(Job.id)))


def job_to_dict(job: Job) -> dict[str, Any]:
    """A JSON-ready view of a job (what ``rmstudio jobs --json`` prints and the Train page shows)."""
    return {
        "id": job.id,
        "kind": job.kind.value,
        "status": job.status.value,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "progress": job.progress,
        "result": job.result,
        "error": job.error,
        "params": job.params,
        "dedupe_key": job.dedupe_key,
        "device": job.device,
        "lease_owner": job.lease_owner,
        "lease_expires_at": job.lease_expires_at,
        "heartbeat_at": job.heartbeat_at,
        "cancel_requested": job.cancel_requested,
        "created_by": job.created_by,
        "created_at": job.created_at.isoformat() if job.created_at else None,
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
    }


def _log_line(line: str) -> str:
    text = str(line).rstrip("\n")
    return text[:MAX_LOG_LINE] + " ...[cut]" if len(text) > MAX_LOG_LINE else text


def append_log(db: Database, job_id: int, line: str, *, at: datetime | None = None) -> None:
    """Add one line to a job's log (its own short transaction); ``at`` is when it happened (default now)."""
    append_logs(db, job_id, [(at or utcnow(), line)])


def append_logs(db: Database, job_id: int, entries: Sequence[tuple[datetime, str]]) -> None:
    """Add several ``(time, line)`` entries to a job's log in one transaction."""
    if not entries:
        return
    with db.write() as s:
        s.add_all([JobLog(job_id=job_id, line=_log_line(line), created_at=at) for at, line in entries])


def job_logs(session: Session, job_id: int, limit: int | None = None) -> list[JobLog]:
    """A job's log lines, oldest first (the last ``limit`` lines when given)."""
    q = select(JobLog).where(JobLog.job_id == job_id)
    if limit is None:
        return list(session.scalars(q.order_by(JobLog.id)))
    rows = list(session.scalars(q.order_by(JobLog.id.desc()).limit(limit)))
    return rows[::-1]
