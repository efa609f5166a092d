"""The job queue (db/jobs.py) against a real SQLite file and a real PostgreSQL database.

Tests whose SQL differs between the two (ON CONFLICT on the partial index, FOR UPDATE SKIP LOCKED, RETURNING,
savepoints, row counts) run on both; pure state-machine tests run on SQLite only, to keep the suite fast.
"""
from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from sqlalchemy import select

from db import jobs as jobq
from db.models import Job, JobKind, JobStatus
from db.session import Database


def _enqueue(db: Database, n: int, kind: str = "noop", **kw) -> list[int]:
    with db.write() as s:
        return [jobq.enqueue(s, kind, {"i": i}, **kw).id for i in range(n)]


def _job(db: Database, job_id: int) -> Job:
    with db.read() as s:  # detached before the read session's rollback expires it
        job = s.get(Job, job_id)
        s.expunge(job)
        return job


def test_enqueue_dedupe_only_while_queued(any_db: Database) -> None:
    with any_db.write() as s:
        first = jobq.enqueue(s, "train", {"mode": "head"}, dedupe_key="auto-retrain", created_by="t")
        again = jobq.enqueue(s, "train", {"mode": "head"}, dedupe_key="auto-retrain")
        other = jobq.enqueue(s, JobKind.train, dedupe_key="other")
    assert first is not None and other is not None
    assert again is None
    assert first.status is JobStatus.queued and first.params == {"mode": "head"} and first.created_by == "t"
    claimed = jobq.claim(any_db, "w1", 5)
    assert claimed is not None and claimed.id == first.id
    with any_db.write() as s:  # the running job no longer blocks a new queued one
        assert jobq.enqueue(s, "train", dedupe_key="auto-retrain") is not None
        assert jobq.enqueue(s, "train", dedupe_key="auto-retrain") is None


def test_enqueue_validates_kind_and_attempts(sqlite_db: Database) -> None:
    with sqlite_db.write() as s:
        with pytest.raises(ValueError, match="unknown job kind 'bake'"):
            jobq.enqueue(s, "bake")
        with pytest.raises(ValueError, match="max_attempts"):
            jobq.enqueue(s, "noop", max_attempts=0)


def test_concurrent_enqueue_with_one_key_keeps_one(any_db: Database) -> None:
    """Eight threads race to enqueue the same dedupe key: the unique index lets exactly one through."""
    results: list[object] = []
    barrier = threading.Barrier(8)

    def go() -> None:
        barrier.wait()
        with any_db.write() as s:
            j = jobq.enqueue(s, "train", dedupe_key="auto-retrain")
            results.append(j.id if j else None)

    ts = [threading.Thread(target=go) for _ in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert sum(r is not None for r in results) == 1
    with any_db.read() as s:
        assert len(s.scalars(select(Job).where(Job.dedupe_key == "auto-retrain")).all()) == 1


def test_claim_is_fifo_filtered_and_exclusive(sqlite_db: Database) -> None:
    ids = _enqueue(sqlite_db, 3)
    train = _enqueue(sqlite_db, 1, kind="train")[0]
    j = jobq.claim(sqlite_db, "w1", 10, kinds=["train"])
    assert j is not None and j.id == train and j.status is JobStatus.running
    assert j.lease_owner == "w1" and j.attempts == 1 and j.lease_expires_at > time.time() + 5
    assert jobq.claim(sqlite_db, "w2", 10, kinds=["train"]) is None
    assert [jobq.claim(sqlite_db, "w2", 10).id for _ in range(3)] == ids
    assert jobq.claim(sqlite_db, "w2", 10) is None


def test_threads_racing_to_claim_get_each_job_once(any_db: Database) -> None:
    ids = _enqueue(any_db, 20)
    got: list[tuple[str, int]] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        while True:
            j = jobq.claim(any_db, name, 30)
            if j is None:
                return
            with lock:
                got.append((name, j.id))

    ts = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    counts = Counter(job_id for _, job_id in got)
    assert sorted(counts) == ids and set(counts.values()) == {1}


def test_heartbeat_renews_stores_progress_and_reports_cancel(any_db: Database) -> None:
    (jid,) = _enqueue(any_db, 1)
    j = jobq.claim(any_db, "w1", 1.0)
    before = j.lease_expires_at
    time.sleep(0.05)
    hb = jobq.heartbeat(any_db, jid, "w1", 30, progress={"step": 3, "total": 10})
    assert hb.ok and not hb.cancel_requested and not hb.lost
    after = _job(any_db, jid)
    assert after.lease_expires_at > before + 20 and after.progress == {"step": 3, "total": 10}
    assert jobq.heartbeat(any_db, jid, "intruder", 30).lost
    assert jobq.request_cancel(any_db, jid) is JobStatus.running
    assert jobq.heartbeat(any_db, jid, "w1", 30).cancel_requested


def test_finish_is_fenced_on_the_lease_owner(any_db: Database) -> None:
    (jid,) = _enqueue(any_db, 1)
    jobq.claim(any_db, "w1", 30)
    with any_db.write() as s:
        assert not jobq.finish(s, jid, "w2", "succeeded")
    with any_db.write() as s:
        assert jobq.finish(s, jid, "w1", JobStatus.succeeded, result={"x": 1}, progress={"step": 9})
    with any_db.write() as s:  # a second finish changes nothing
        assert not jobq.finish(s, jid, "w1", "failed", error="late")
    j = _job(any_db, jid)
    assert j.status is JobStatus.succeeded and j.result == {"x": 1} and j.error is None
    assert j.progress == {"step": 9} and j.finished_at is not None
    with any_db.write() as s, pytest.raises(ValueError, match="final status"):
        jobq.finish(s, jid, "w1", "running")


def test_finish_rolled_back_with_its_transaction(sqlite_db: Database) -> None:
    """The worker's publish guard finishes inside the version transaction: a rollback undoes the success."""
    (jid,) = _enqueue(sqlite_db, 1)
    jobq.claim(sqlite_db, "w1", 30)
    with pytest.raises(RuntimeError):
        with sqlite_db.write() as s:
            assert jobq.finish(s, jid, "w1", "succeeded")
            raise RuntimeError("version insert failed")
    assert _job(sqlite_db, jid).status is JobStatus.running


def test_requeue_expired_then_fail_after_max_attempts(sqlite_db: Database) -> None:
    with sqlite_db.write() as s:
        jid = jobq.enqueue(s, "noop", max_attempts=2).id
    for attempt in (1, 2):
        j = jobq.claim(sqlite_db, f"w{attempt}", 0.05)
        assert j.id == jid and j.attempts == attempt
        assert jobq.requeue_expired(sqlite_db) == []  # not expired yet
        time.sleep(0.1)
        (moved,) = jobq.requeue_expired(sqlite_db)
        assert moved[0] == jid
    j = _job(sqlite_db, jid)
    assert j.status is JobStatus.failed and j.attempts == 2
    assert "lease expired" in j.error and "w2" in j.error and "2 of 2 attempts" in j.error
    assert jobq.claim(sqlite_db, "w3", 5) is None
    # The dead worker's late finish is refused.
    with sqlite_db.write() as s:
        assert not jobq.finish(s, jid, "w2", "succeeded")


def test_requeue_expired_requeues_and_cancels(sqlite_db: Database) -> None:
    a, b = _enqueue(sqlite_db, 2)
    jobq.claim(sqlite_db, "w1", 0.05)
    jobq.claim(sqlite_db, "w2", 0.05)
    jobq.request_cancel(sqlite_db, b)
    time.sleep(0.1)
    assert sorted(jobq.requeue_expired(sqlite_db)) == [(a, "queued"), (b, "cancelled")]
    ja = _job(sqlite_db, a)
    assert ja.status is JobStatus.queued and ja.lease_owner is None and "w1" in ja.error
    assert jobq.claim(sqlite_db, "w3", 5).id == a


def test_requeue_superseded_by_queued_duplicate(any_db: Database) -> None:
    with any_db.write() as s:
        jid = jobq.enqueue(s, "train", dedupe_key="auto-retrain").id
    jobq.claim(any_db, "w1", 0.05)
    with any_db.write() as s:
        newer = jobq.enqueue(s, "train", dedupe_key="auto-retrain").id
    time.sleep(0.1)
    assert jobq.requeue_expired(any_db) == [(jid, "cancelled")]
    assert "superseded" in _job(any_db, jid).error
    assert _job(any_db, newer).status is JobStatus.queued


def test_release_gives_the_job_back_without_counting_the_attempt(sqlite_db: Database) -> None:
    (jid,) = _enqueue(sqlite_db, 1)
    jobq.claim(sqlite_db, "w1", 30)
    assert jobq.release(sqlite_db, jid, "w2") is None
    assert jobq.release(sqlite_db, jid, "w1", "SIGTERM") == "queued"
    j = _job(sqlite_db, jid)
    assert j.status is JobStatus.queued and j.attempts == 0 and j.lease_owner is None
    assert jobq.claim(sqlite_db, "w2", 30).attempts == 1


def test_cancel_queued_and_unknown(sqlite_db: Database) -> None:
    (jid,) = _enqueue(sqlite_db, 1)
    assert jobq.request_cancel(sqlite_db, jid) is JobStatus.cancelled
    assert jobq.claim(sqlite_db, "w1", 5) is None
    with pytest.raises(LookupError, match="no job with id 999"):
        jobq.request_cancel(sqlite_db, 999)


def test_logs_list_and_dict(sqlite_db: Database) -> None:
    a, b = _enqueue(sqlite_db, 2)
    jobq.append_log(sqlite_db, a, "first")
    jobq.append_log(sqlite_db, a, "second\n")
    jobq.append_log(sqlite_db, b, "x" * (jobq.MAX_LOG_LINE + 10))
    with sqlite_db.read() as s:
        assert [r.line for r in jobq.job_logs(s, a)] == ["first", "second"]
        assert [r.line for r in jobq.job_logs(s, a, limit=1)] == ["second"]
        assert jobq.job_logs(s, b)[0].line.endswith("[cut]")
        listed = jobq.list_jobs(s)
        assert [j.id for j in listed] == [b, a]
        assert jobq.list_jobs(s, statuses=["running"]) == []
        d = jobq.job_to_dict(listed[0])
    for key in ("id", "kind", "status", "attempts", "progress", "error"):
        assert key in d
    assert d["kind"] == "noop" and d["status"] == "queued"


def test_has_expired_sees_only_leases_that_ran_out(any_db: Database) -> None:
    a, b = _enqueue(any_db, 2)
    with any_db.read() as s:
        assert not jobq.has_expired(s)  # queued jobs hold no lease
    jobq.claim(any_db, "w1", 0.05)
    jobq.claim(any_db, "w2", 30)
    with any_db.read() as s:
        assert not jobq.has_expired(s)
        assert jobq.has_expired(s, now=time.time() + 1)
    time.sleep(0.1)
    with any_db.read() as s:
        assert jobq.has_expired(s)
    assert jobq.requeue_expired(any_db) == [(a, "queued")]
    with any_db.read() as s:
        assert not jobq.has_expired(s)
        assert [j.id for j in jobq.list_jobs(s, None, statuses=["running"])] == [b]


def test_add_to_result_merges_only_for_the_worker_that_ran_the_job(any_db: Database) -> None:
    (jid,) = _enqueue(any_db, 1, kind="train")
    jobq.claim(any_db, "w1", 30)
    with any_db.write() as s:
        assert jobq.finish(s, jid, "w1", "succeeded", result={"mode": "head"})
    with any_db.write() as s:
        assert not jobq.add_to_result(s, jid, "w2", {"version_id": 99})
        assert not jobq.add_to_result(s, jid + 1, "w1", {"version_id": 99})
        assert jobq.add_to_result(s, jid, "w1", {"version_id": 7})
    job = _job(any_db, jid)
    assert job.result == {"mode": "head", "version_id": 7} and job.status is JobStatus.succeeded


def test_the_version_a_train_job_published(any_db: Database) -> None:
    from db.versions import insert_version, version_of_job

    a, b = _enqueue(any_db, 2, kind="train")
    with any_db.write() as s:
        vid = insert_version(s, mode="head", backbone="minilm", path="models/v-a", config={}, job_id=a).id
    with any_db.read() as s:
        assert version_of_job(s, a) == vid
        assert version_of_job(s, b) is None


def test_racing_workers_enqueue_one_automatic_retrain(any_db: Database) -> None:
    """Eight workers find the policy due at once: one retrain is enqueued; none while it runs."""
    from db import policy as pol
    from tests.integration.test_autoretrain import label, seed

    pairs = seed(any_db, 3)
    with any_db.write() as s:
        pol.set_policy(s, min_new_labels=2, min_interval_s=0)
        assert jobq.enqueue_retrain_if_due(s, "w0") == (None, "0 new labels since the start (no version yet); "
                                                            "the policy needs 2")
    label(any_db, pairs, range(2))
    results: list[tuple[int | None, str]] = []
    barrier = threading.Barrier(8)

    def go(i: int) -> None:
        barrier.wait()
        with any_db.write() as s:
            job, why = jobq.enqueue_retrain_if_due(s, f"w{i}")
            results.append((job.id if job is not None else None, why))

    threads = [threading.Thread(target=go, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    made = [jid for jid, _ in results if jid is not None]
    assert len(made) == 1 and len(results) == 8
    job = _job(any_db, made[0])
    assert job.kind is JobKind.train and job.dedupe_key == pol.AUTO_RETRAIN_KEY and job.created_by.startswith("w")
    assert jobq.claim(any_db, "w1", 30).id == made[0]
    with any_db.write() as s:  # claimed: no longer queued, so only the policy's check keeps a second one out
        assert jobq.enqueue_retrain_if_due(s, "w9") == (None, f"training job #{made[0]} is already queued or running")
