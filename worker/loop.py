"""The background worker: ``rmstudio worker`` claims jobs from the database and runs them.

One loop, one job at a time:

1. housekeeping: re-queue jobs whose lease expired (their worker died); when the retrain policy is met,
   enqueue one automatic retrain (``dedupe_key="auto-retrain"``; the partial unique index keeps it single);
   every ``SWEEP_EVERY_S``, remove orphaned model folders (files whose version row never appeared);
2. claim the oldest queued job under a lease (``db.jobs.claim``);
3. run it while a heartbeat thread renews the lease about every ``lease_s / 3`` seconds, writes progress at
   most once per ``progress_interval_s`` (step, total, loss, validation accuracy, ETA, phase and
   ``loss_history``: the last 200 ``[step, loss]`` points) and learns about cancel requests or a lost lease;
4. finish it, fenced on the lease. A training job is marked succeeded inside the transaction that inserts
   the model version (``publish_guard``), which also enqueues the rescore of stored responses, so the
   version, the job's success and the follow-up rescore appear together or not at all.

What happens inside one job (its context, the heartbeat thread, the work of each kind) is in
``worker/job_run.py``.

Stopping: ``should_stop`` is True after a cancel request, a lost lease, or SIGTERM/SIGINT. A cancelled job is
finished as ``cancelled`` and publishes nothing; on SIGTERM the job is released back to the queue (the
attempt is not counted) and the worker exits 0. A second signal exits at once; the lease then expires and
another worker re-runs the job.
"""
from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from typing import Any

from db import jobs as jobq
from db import policy as pol
from db import workers
from db.bounds import FieldError, bounded, check_fields
from db.config import Settings
from db.models import Job, JobKind, JobStatus
from db.session import Database
from db.versions import version_paths
from rm_engine.config import MAX_GPUS
from rm_engine.device import DEVICES, device_label, resolve_device
from rm_engine.versions.registry import sweep_orphans
from worker.job_run import (
    HANDLERS,
    LOSS_HISTORY_POINTS,
    TRAINS,
    Handler,
    Heartbeat,
    JobContext,
    JobEnv,
    JobStopped,
    is_cancelled,
    job_gpus,
    log,
)

__all__ = ["Worker", "WorkerConfig", "main", "JobStopped", "JobContext", "JobEnv", "LOSS_HISTORY_POINTS"]

#: Seconds between sweeps of orphaned model folders (``registry.sweep_orphans``); folders younger than
#: this are kept, since a publisher may sit between its ``os.replace`` and its row insert.
SWEEP_EVERY_S = 600.0


@dataclass(frozen=True)
class WorkerConfig:
    """How one worker process behaves.

    Attributes:
        owner: lease owner name, unique per process (default ``host:pid:random``).
        lease_s: lease length; a worker silent for longer loses its job to the others.
        heartbeat_s: seconds between lease renewals (default ``lease_s / 3``).
        poll_interval_s: sleep when the queue is empty.
        progress_interval_s: progress is written at most this often.
        device: ``auto`` (GPU for finetune jobs when available, else CPU), ``cpu`` or ``cuda``.
        gpus: data-parallel processes for finetune jobs whose parameters do not set ``gpus`` (DDP through
            ``rm_engine.finetune.ddp``; without CUDA, gloo CPU processes). Head-mode jobs always train in one process.
        kinds: job kinds this worker takes (None: all).
        once: run at most one job, then exit (exits at once when the queue is empty).
        preload: import the training and scoring code in a background thread at start, so that the first
            training job does not wait for torch and transformers to load (only when train or rescore jobs
            are taken; such a job waits for the preload to finish, since transformers' lazy imports are
            not thread-safe).
        auto_retrain: apply the retrain policy (enqueue automatic retrains).
        max_jobs: exit after this many jobs (None: run until stopped).
        presence_s: seconds between the worker's "alive" beats (``db/workers.py``; the app lists live workers).
    """

    owner: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}")
    lease_s: float = field(default=30.0, metadata=bounded(
        0, jobq.MAX_LEASE_S, lo_open=True, help="lease length in seconds; a silent worker loses its job after this"))
    heartbeat_s: float | None = field(default=None, metadata=bounded(
        0, jobq.MAX_LEASE_S, lo_open=True, optional=True, help="seconds between lease renewals (lease / 3)"))
    poll_interval_s: float = field(default=1.0, metadata=bounded(
        0.01, 3600, help="seconds between queue and policy checks when idle (idle checks only read)"))
    progress_interval_s: float = field(default=1.0, metadata=bounded(0.01, 3600, help="seconds between progress writes"))
    device: str = "auto"
    gpus: int = field(default=1, metadata=bounded(
        1, MAX_GPUS, integer=True, help="data-parallel processes for finetune jobs that do not set gpus (DDP)"))
    kinds: tuple[str, ...] | None = None
    once: bool = False
    preload: bool = True
    auto_retrain: bool = True
    max_jobs: int | None = field(default=None, metadata=bounded(
        1, 1 << 31, integer=True, optional=True, help="exit after this many jobs"))
    presence_s: float = field(default=10.0, metadata=bounded(0.01, 3600, help="seconds between the worker's beats"))

    def __post_init__(self) -> None:
        check_fields(self, lambda name: f"WorkerConfig.{name}")  # finite and in range
        if self.heartbeat_s is not None and not self.heartbeat_s < self.lease_s:
            raise FieldError("WorkerConfig.heartbeat_s", f"must be shorter than the lease ({self.lease_s:g} s)",
                             self.heartbeat_s, field="heartbeat_s")
        if self.device not in DEVICES:
            raise ValueError(f"WorkerConfig.device must be auto, cpu or cuda, got {self.device!r}")
        if self.kinds is not None:
            for k in self.kinds:
                JobKind(k)

    @property
    def heartbeat_every(self) -> float:
        return self.heartbeat_s if self.heartbeat_s is not None else self.lease_s / 3


class Worker:
    """A worker process's loop. ``run()`` returns the exit code."""

    def __init__(self, db: Database, settings: Settings, config: WorkerConfig | None = None) -> None:
        self.db, self.settings = db, settings
        self.config = config or WorkerConfig()
        self.stopping = threading.Event()
        self._signals = 0
        self.jobs_run = 0
        self._next_sweep = 0.0
        self._next_presence = 0.0
        self._preloading: threading.Thread | None = None
        self.handlers: dict[JobKind, Handler] = dict(HANDLERS)
        self.env = JobEnv(db, settings, self.config.owner, self.config.gpus)

    # ---- signals
    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT: stop after releasing the current job; a second signal exits at once."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self._signals += 1
        if self._signals > 1:
            log(f"second signal {signum}: exiting now (the job's lease will expire and it will be re-run)")
            os._exit(128 + signum)
        log(f"signal {signum}: stopping after releasing the current job")
        self.stopping.set()

    # ---- the loop
    def run(self) -> int:
        """Claim and run jobs until stopped (or one job with ``once``). Returns the process exit code."""
        cfg = self.config
        log(f"{cfg.owner} started (lease {cfg.lease_s:g} s, device {cfg.device}, kinds {cfg.kinds or 'all'})")
        if cfg.preload and not cfg.once and (cfg.kinds is None or {"train", "rescore"} & set(cfg.kinds)):
            self._preloading = threading.Thread(target=_preload, name="preload", daemon=True)
            self._preloading.start()
        while not self.stopping.is_set():
            self.say_alive()
            self.housekeeping()
            try:
                with self.db.read() as s:  # idle polls only read; the claim takes the write lock
                    work = jobq.has_queued(s, cfg.kinds)
                job = jobq.claim(self.db, cfg.owner, cfg.lease_s, kinds=cfg.kinds) if work else None
            except Exception as exc:  # noqa: BLE001 - database busy or unreachable: keep polling
                log(f"cannot poll the queue: {type(exc).__name__}: {str(exc)[:300]}")
                job = None
                if cfg.once:
                    return 1
            if job is None:
                if cfg.once:
                    break
                self.stopping.wait(cfg.poll_interval_s)
                continue
            try:
                self.run_job(job)
            except Exception as exc:  # noqa: BLE001 - e.g. the database went away while finishing
                log(f"job {job.id}: could not be concluded ({type(exc).__name__}: {str(exc)[:300]}); "
                    "its lease will expire and it will be re-queued")
            self.jobs_run += 1
            if cfg.once or (cfg.max_jobs is not None and self.jobs_run >= cfg.max_jobs):
                break
        self.say_alive(stopping=True)
        log(f"{cfg.owner} stopped after {self.jobs_run} job(s)")
        return 0

    def say_alive(self, *, stopping: bool = False) -> None:
        """Beat the worker's presence row at most every ``presence_s`` (remove it when ``stopping``); never fatal."""
        if not stopping and time.monotonic() < self._next_presence:
            return
        self._next_presence = time.monotonic() + self.config.presence_s
        cfg = self.config
        try:
            with self.db.write() as s:
                if stopping:
                    workers.forget(s, cfg.owner)
                else:
                    workers.beat(s, cfg.owner, host=socket.gethostname(), pid=os.getpid(), device=self.device_label(),
                                 kinds=cfg.kinds, every_s=cfg.presence_s)
        except Exception as exc:  # noqa: BLE001 - presence is informative: a busy database must not stop work
            log(f"cannot record presence: {type(exc).__name__}: {str(exc)[:200]}")

    def device_label(self) -> str:
        """What this worker trains on: the configured device, ``auto`` resolved once torch is loaded."""
        device = self.config.device
        preloading = self._preloading is not None and self._preloading.is_alive()
        if device == "auto" and "torch" in sys.modules and not preloading:  # never import beside the preload
            device = resolve_device(device)
        return device_label(device, self.config.gpus)

    def housekeeping(self) -> None:
        """Re-queue expired jobs and apply the retrain policy (errors are logged, never fatal)."""
        try:
            now = time.time()
            with self.db.read() as s:  # a cheap read first: requeue_expired takes the write lock
                expired = jobq.has_expired(s, now)
            if expired:
                for job_id, status in jobq.requeue_expired(self.db, now):
                    log(f"job {job_id}: lease expired -> {status}")
                    jobq.append_log(self.db, job_id, f"lease expired; {status} by {self.config.owner}")
            if self.config.auto_retrain:
                self.maybe_enqueue_retrain()
            if time.monotonic() >= self._next_sweep:
                self._next_sweep = time.monotonic() + SWEEP_EVERY_S
                self.sweep_model_folders()
                with self.db.write() as s:
                    workers.prune(s)
        except Exception as exc:  # noqa: BLE001
            log(f"housekeeping failed: {type(exc).__name__}: {str(exc)[:300]}")

    def sweep_model_folders(self) -> list[str]:
        """Remove model folders older than ``SWEEP_EVERY_S`` that no version row points to."""
        with self.db.read() as s:
            known = version_paths(s)
        removed = sweep_orphans(self.settings, known, min_age_s=SWEEP_EVERY_S)
        if removed:
            log(f"removed {len(removed)} orphaned model folder(s): {', '.join(removed[:5])}")
        return removed

    def maybe_enqueue_retrain(self) -> Job | None:
        """Enqueue one automatic retrain when the policy says so; returns the new job or None."""
        with self.db.read() as s:  # a cheap read first: idle workers poll the policy without the write lock
            due, _ = pol.should_retrain(s)
        if not due:
            return None
        with self.db.write() as s:
            job, reason = jobq.enqueue_retrain_if_due(s, created_by=f"retrain policy ({self.config.owner})")
        if job is not None:
            log(f"job {job.id}: automatic retrain enqueued: {reason}")
            jobq.append_log(self.db, job.id, f"enqueued by the retrain policy: {reason}")
        return job

    def resolve_device(self, job: Job) -> str:
        """``cpu`` or ``cuda``: the worker's ``--device``, else GPU for finetune jobs when one is present."""
        params = job.params or {}
        want = self.config.device
        if want == "auto" and params.get("device") in ("cpu", "cuda"):
            want = params["device"]
        if job.kind is JobKind.noop or (want == "auto" and not (job.kind in TRAINS and params.get("mode") == "finetune")):
            return "cpu"
        return resolve_device(want)

    def run_job(self, job: Job) -> None:
        """Run one claimed job to a final state (or back to the queue on shutdown)."""
        owner = self.config.owner
        ctx = JobContext(job, stopping=self.stopping.is_set)
        log(f"job {job.id} ({job.kind.value}) claimed, attempt {job.attempts}/{job.max_attempts}")
        jobq.append_log(self.db, job.id, f"claimed by {owner} (attempt {job.attempts}/{job.max_attempts})")
        cfg = self.config
        beat = Heartbeat(self.env, ctx, lease_s=cfg.lease_s, every_s=cfg.heartbeat_every, progress_s=cfg.progress_interval_s)
        beat.start()
        status, result, error = JobStatus.failed, None, None
        try:
            handler = self.handlers.get(job.kind)
            if handler is None:
                raise RuntimeError(f"this worker cannot run {job.kind.value!r} jobs")
            if self._preloading is not None and job.kind is not JobKind.noop:
                # transformers' lazy imports are not thread-safe: never import beside the preload
                self._preloading.join()
                self._preloading = None
            device = self.resolve_device(job)
            ctx.params["device"] = device
            gpus = job_gpus(job.params or {}, self.config.gpus) if job.kind in TRAINS else 1
            shown = device_label(device, gpus)
            jobq.set_device(self.db, job.id, owner, shown)
            ctx.log(f"device: {shown}")
            result = handler(self.env, job, ctx)
            status = JobStatus.succeeded
        except Exception as exc:  # noqa: BLE001 - every failure ends up in the job row
            if ctx.should_stop() or is_cancelled(exc):
                status = None  # decided below
            else:
                error = f"{type(exc).__name__}: {exc}".strip()
                ctx.log("error: " + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-3000:])
        finally:
            beat.stop()
        self._conclude(job, ctx, status, result, error)

    def _conclude(self, job: Job, ctx: JobContext, status: JobStatus | None, result: Any, error: str | None) -> None:
        owner = self.config.owner
        if status is JobStatus.succeeded and isinstance(result, dict) and result.get("_published"):
            log(f"job {job.id}: succeeded ({_short(result)})")
            return
        if ctx.lost:
            log(f"job {job.id}: lease lost; nothing published")
            return
        if status is None:
            if ctx.cancel_requested:
                status, error = JobStatus.cancelled, "cancelled while running; nothing was published"
            else:
                new = jobq.release(self.db, job.id, owner, "worker shutting down")
                log(f"job {job.id}: released on shutdown -> {new}")
                jobq.append_log(self.db, job.id, f"released by {owner} on shutdown -> {new}")
                return
        with self.db.write() as s:
            done = jobq.finish(s, job.id, owner, status, result=result, error=error, progress=ctx.peek_progress())
        log(f"job {job.id}: {status.value if done else 'lease lost before finishing'}"
            + (f": {error}" if error else ""))
        if done:
            jobq.append_log(self.db, job.id, f"{status.value}" + (f": {error}" if error else ""))


def _preload() -> None:
    """Import the heavy modules (torch, transformers, the engine) ahead of the first job."""
    import importlib

    t0 = time.monotonic()
    try:
        for name in ("rm_engine.training", "rm_engine.serving.scoring", "rm_engine.head.features", "rm_engine.head.train",
                     "rm_engine.versions.registry"):
            importlib.import_module(name)
        import transformers

        # transformers loads its model classes lazily, on first use: touch the ones a head retrain on the
        # default backbone (MiniLM, a BERT) needs, so the first job does not pay for them.
        _ = (transformers.AutoConfig, transformers.AutoModel, transformers.AutoTokenizer)
        importlib.import_module("transformers.models.bert.modeling_bert")
        log(f"engine preloaded in {time.monotonic() - t0:.1f} s")
    except Exception as exc:  # noqa: BLE001 - the job itself will report the real error
        log(f"preload failed: {type(exc).__name__}: {str(exc)[:200]}")


def _short(result: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in result.items() if not k.startswith("_") and not isinstance(v, (dict, list)))


def main(config: WorkerConfig, settings: Settings | None = None) -> int:
    """Entry point of ``rmstudio worker``: one ``Database``, signal handlers, the loop."""
    settings = settings or Settings.from_env()  # an entry point: the settings are read here and passed down
    db = Database(settings.db_url)
    worker = Worker(db, settings, config)
    worker.install_signal_handlers()
    try:
        return worker.run()
    finally:
        db.dispose()
