"""What runs inside one claimed job: its context (progress, stop checks, log), the heartbeat thread that
keeps its lease, and the work of each job kind.

* :class:`JobContext` is what the engine's callbacks see. ``progress`` and ``log`` only touch memory; the
  :class:`Heartbeat` thread writes them to the database at most once per ``progress_interval_s`` and renews
  the lease every ``heartbeat_s``, learning there about cancel requests and a lost lease.
* ``progress`` keeps ``loss_history``: the last ``LOSS_HISTORY_POINTS`` ``[step, loss]`` points, for the
  Train page's live loss curve; the ETA is extrapolated from the current phase's pace when the engine gives none.
* Job kinds: ``noop`` (tests and health checks), ``train`` (``rm_engine.training.train_and_publish`` under a
  publish guard that marks the job succeeded and enqueues the rescore in the version's own transaction),
  ``rescore`` (``rm_engine.serving.scoring.rescore_stored``) and ``cv`` (``rm_engine.crossval.cross_validate``).
  Each handler gets the job, its :class:`JobEnv` (database, settings, lease owner) and its context: the worker
  itself stays out of reach. Every statement on the job's row goes through ``db.jobs``.
* The handlers import the training and scoring code when a job first needs it: it loads torch and transformers
  (seconds), which the worker imports in a background thread after it starts (``worker/loop.py``'s preload).
"""
from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy.orm import Session

from db import jobs as jobq
from db import policy as pol
from db.config import Settings
from db.models import Job, JobKind, JobStatus
from db.session import Database
from db.versions import count_responses, count_scores, version_of_job
from rm_engine.config import Cancelled, TrainConfig
from rm_engine.device import device_label
from rm_engine.progress import eta_s

LOSS_HISTORY_POINTS = 200
# Job parameters the worker adds for itself; not TrainConfig fields.
_WORKER_PARAMS = ("auto", "label_watermark")


class JobStopped(Exception):
    """Raised inside a job when it must stop (cancel requested, lease lost, or the worker is shutting down)."""


def log(msg: str) -> None:
    """A worker-level line on stderr with a UTC timestamp."""
    ts = datetime.now(timezone.utc).strftime("%H:%M:%S")
    print(f"[worker {ts}] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class JobEnv:
    """What a job runs against: the database, the process settings, the lease owner (the worker's name) and the
    worker's ``--gpus`` (for finetune jobs whose parameters do not set ``gpus``)."""

    db: Database
    settings: Settings
    owner: str
    gpus: int = 1


class JobContext:
    """What a running job sees: ``progress``, ``should_stop`` and ``log`` callbacks, and the lease state.

    ``stopping`` tells whether the worker is shutting down. The job's own thread only touches memory; the
    heartbeat thread does the database writes.
    """

    def __init__(self, job: Job, stopping: Callable[[], bool] = lambda: False) -> None:
        self._stopping = stopping
        self.job_id = job.id
        self.params: dict[str, Any] = dict(job.params or {})
        self.lost = False
        self.published = False  # set once the job was marked succeeded with its version (lease released)
        self.cancel_requested = bool(job.cancel_requested)
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._progress: dict[str, Any] = {}
        self._dirty = False
        self._history: deque[list[float]] = deque(maxlen=LOSS_HISTORY_POINTS)
        self._logs: list[tuple[datetime, str]] = []
        self._phase: str | None = None
        self._phase_started = self.started

    # ---- callbacks handed to the engine
    def should_stop(self) -> bool:
        """True when the job must stop: cancel requested, lease lost, or the worker is shutting down."""
        return self.cancel_requested or self.lost or self._stopping()

    def check(self) -> None:
        """Raise ``JobStopped`` when ``should_stop()``."""
        if self.should_stop():
            raise JobStopped(self.stop_reason())

    def stop_reason(self) -> str:
        if self.lost:
            return "lease lost"
        if self.cancel_requested:
            return "cancel requested"
        return "worker shutting down"

    def progress(self, update: dict[str, Any]) -> None:
        """Record progress (any of step, total, loss, val_accuracy, eta_s, phase); written by the heartbeat.

        The ETA, when the engine gives none, is extrapolated from the current phase's own pace."""
        with self._lock:
            p = self._progress
            now = time.monotonic()
            phase = update.get("phase")
            if phase and phase != self._phase:
                self._phase, self._phase_started = phase, now
                p.pop("eta_s", None)
                self._logs.append((datetime.now(timezone.utc), f"phase: {phase}"))
            p.update({k: v for k, v in update.items() if v is not None})
            step, loss = update.get("step"), update.get("loss")
            if step is not None and loss is not None:
                if self._history and self._history[-1][0] == step:
                    self._history[-1] = [step, float(loss)]
                else:
                    self._history.append([step, float(loss)])
            total = p.get("total")
            left = eta_s(now - self._phase_started, float(step), float(total)) if step and total else None
            if update.get("eta_s") is None and left is not None:
                p["eta_s"] = round(left, 1)
            p["elapsed_s"] = round(now - self.started, 1)
            self._dirty = True

    def log(self, line: str) -> None:
        """Queue one line for the job's log (stamped now, written by the heartbeat thread)."""
        with self._lock:
            self._logs.append((datetime.now(timezone.utc), line))

    # ---- used by the heartbeat thread
    def take_progress(self) -> dict[str, Any] | None:
        with self._lock:
            if not self._dirty:
                return None
            self._dirty = False
            out = dict(self._progress)
            out["loss_history"] = [list(x) for x in self._history]
            out["updated_at"] = time.time()
            return out

    def peek_progress(self) -> dict[str, Any] | None:
        """The latest progress (with the loss history), without marking it written."""
        with self._lock:
            if not self._progress:
                return None
            return {**self._progress, "loss_history": [list(x) for x in self._history], "updated_at": time.time()}

    def take_logs(self) -> list[tuple[datetime, str]]:
        with self._lock:
            out, self._logs = self._logs, []
            return out


class Heartbeat(threading.Thread):
    """Renews the lease, writes progress and logs, and watches for cancel requests while a job runs."""

    def __init__(self, env: JobEnv, ctx: JobContext, *, lease_s: float, every_s: float, progress_s: float) -> None:
        super().__init__(name=f"heartbeat-{ctx.job_id}", daemon=True)
        self.env, self.ctx = env, ctx
        self.lease_s, self.every_s, self.tick_s = lease_s, every_s, min(progress_s, every_s)
        self.done = threading.Event()

    def run(self) -> None:
        last_beat = time.monotonic()
        while not self.done.wait(self.tick_s):
            prog = self.ctx.take_progress()
            if prog is None and time.monotonic() - last_beat < self.every_s:
                self.flush_logs()
                continue
            try:
                hb = jobq.heartbeat(self.env.db, self.ctx.job_id, self.env.owner, self.lease_s, progress=prog)
                last_beat = time.monotonic()
            except Exception as exc:  # noqa: BLE001 - a busy or unreachable database: retry on the next tick
                log(f"job {self.ctx.job_id}: heartbeat failed ({type(exc).__name__}: {str(exc)[:200]}); retrying")
                continue
            if hb.lost:
                if self.ctx.published:  # the publishing transaction finished the job: nothing is lost
                    return
                self.ctx.lost = True
                log(f"job {self.ctx.job_id}: lease lost; stopping it without publishing")
                return
            if hb.cancel_requested and not self.ctx.cancel_requested:
                self.ctx.cancel_requested = True
                self.ctx.log("cancel requested")
            self.flush_logs()

    def flush_logs(self) -> None:
        try:
            jobq.append_logs(self.env.db, self.ctx.job_id, self.ctx.take_logs())
        except Exception:  # noqa: BLE001 - logs are best effort
            pass

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=30)
        prog = self.ctx.take_progress()
        if prog is not None and not self.ctx.lost:
            try:
                jobq.heartbeat(self.env.db, self.ctx.job_id, self.env.owner, self.lease_s, prog)
            except Exception:  # noqa: BLE001
                pass
        self.flush_logs()


def is_cancelled(exc: BaseException) -> bool:
    """Whether ``exc`` means the job stopped on request (cancel, lost lease, shutdown) rather than failed."""
    return isinstance(exc, (JobStopped, Cancelled))


def run_noop(env: JobEnv, job: Job, ctx: JobContext) -> dict[str, Any]:
    """``params``: ``steps`` (5), ``sleep`` seconds per step (0.1), ``fail_at`` (raise at that step),
    ``marker_file`` (append ``"<job id> <owner>"`` there when the job starts, for exactly-once checks)."""
    p = job.params or {}
    steps, pause = int(p.get("steps", 5)), float(p.get("sleep", 0.1))
    marker = p.get("marker_file")
    if marker:
        fd = os.open(marker, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{job.id} {env.owner}\n".encode())
        finally:
            os.close(fd)
    for i in range(steps):
        ctx.check()
        time.sleep(pause)
        if p.get("fail_at") is not None and i + 1 == int(p["fail_at"]):
            raise RuntimeError(f"noop job asked to fail at step {i + 1}")
        ctx.progress({"step": i + 1, "total": steps, "loss": 1.0 / (i + 1), "phase": "noop"})
    return {"steps": steps, "owner": env.owner}


def job_gpus(params: dict[str, Any], default_gpus: int = 1) -> int:
    """Data-parallel processes of a train job: its ``gpus`` parameter, else the worker's ``default_gpus`` for
    finetune jobs (head-mode jobs train in one process)."""
    if params.get("gpus") is not None:
        return int(params["gpus"])
    return default_gpus if params.get("mode") == "finetune" else 1


def train_config_from_params(params: dict[str, Any], device: str, default_gpus: int = 1) -> TrainConfig:
    """A ``TrainConfig`` from a train job's parameters (worker-added keys removed; unknown fields named);
    ``default_gpus`` (the worker's ``--gpus``) applies to finetune jobs whose parameters do not set ``gpus``."""
    clean = {k: v for k, v in params.items() if k not in _WORKER_PARAMS}
    clean["device"] = device
    clean["gpus"] = job_gpus(clean, default_gpus)
    return TrainConfig.from_dict(clean)


def run_train(env: JobEnv, job: Job, ctx: JobContext) -> dict[str, Any]:
    """Train and publish a version under the lease; enqueue the rescore in the same transaction."""
    from rm_engine.training import train_and_publish

    owner = env.owner
    cfg = train_config_from_params(ctx.params, ctx.params["device"], env.gpus)
    with env.db.read() as s:
        watermark = pol.current_watermark(s).to_dict()
        rescore = pol.get_policy(s).rescore
    outcome: dict[str, Any] = {"label_watermark": watermark, "mode": cfg.mode,
                               "device": device_label(cfg.device, cfg.gpus)}

    def publish_guard(session: Session) -> bool:
        if ctx.should_stop():
            return False
        final = {**(ctx.peek_progress() or {}), "phase": "done", "step": 1, "total": 1, "eta_s": 0.0}
        if not jobq.finish(session, job.id, owner, JobStatus.succeeded, result=outcome, progress=final):
            return False
        ctx.published = True  # provisional: undone below if the transaction does not commit
        if rescore:
            jobq.enqueue(session, JobKind.rescore, {"after_job": job.id}, dedupe_key=f"rescore-after-{job.id}",
                         created_by=f"job {job.id}")
        return True

    try:
        version = train_and_publish(
            env.db, env.settings, cfg, progress=ctx.progress, should_stop=ctx.should_stop,
            publish_guard=publish_guard, job_id=job.id,
        )
    except BaseException:
        ctx.published = False  # the publishing transaction rolled back
        raise
    if version is None:
        if ctx.should_stop():
            raise JobStopped(ctx.stop_reason())
        ctx.lost = True  # the guard refused: another worker or the queue owns the job now
        return {}
    vid = getattr(version, "id", None)
    with env.db.write() as s:  # the job is already succeeded; add the version id to its result
        jobq.add_to_result(s, job.id, owner, {"version_id": vid})
    ctx.log(f"published version {vid}")
    return {**outcome, "version_id": vid, "_published": True}


def run_rescore(env: JobEnv, job: Job, ctx: JobContext) -> dict[str, Any]:
    """Cache scores of stored responses under a version (``version_id``, or the version of ``after_job``).

    Skipped when every stored response already has a score under that version (training caches the scores of
    the responses in its pair set when it publishes; the rescore covers the others, e.g. unlabelled ones)."""
    from rm_engine.serving.scoring import rescore_stored

    p = job.params or {}
    vid = p.get("version_id")
    if vid is None and p.get("after_job") is not None:
        with env.db.read() as s:
            vid = version_of_job(s, int(p["after_job"]))
        if vid is None:
            raise RuntimeError(f"rescore job: training job {p['after_job']} published no version")
    if vid is None:
        with env.db.read() as s:
            v = pol.latest_version(s)
        if v is None:
            raise RuntimeError("rescore job: there is no model version to score with")
        vid = v.id
    with env.db.read() as s:
        stored, scored = count_responses(s), count_scores(s, int(vid))
    if scored >= stored:  # training already cached a score for every stored response when it published
        ctx.progress({"phase": "rescore", "step": stored, "total": stored})
        ctx.log(f"all {stored} stored responses already scored under version {vid}")
        return {"version_id": int(vid), "rows": 0, "already_scored": stored}
    rows = rescore_stored(env.db, env.settings, int(vid), progress=ctx.progress, should_stop=ctx.should_stop)
    if ctx.should_stop():
        raise JobStopped(ctx.stop_reason())
    return {"version_id": int(vid), "rows": int(rows or 0)}


def run_cv(env: JobEnv, job: Job, ctx: JobContext) -> dict[str, Any]:
    """Cross-validate a training configuration on the stored labels (``params``: a train job's, plus ``folds``,
    default 5): the result is ``rm_engine.crossval.cross_validate``'s (pooled accuracy, its standard error, the
    folds); nothing is published."""
    from rm_engine.crossval import cross_validate, fold_line
    from rm_engine.training import load_pair_set

    params = dict(ctx.params)
    folds = int(params.pop("folds", 5))
    cfg = train_config_from_params(params, params["device"], env.gpus)
    res = cross_validate(env.settings, cfg, load_pair_set(env.db, cfg), folds, progress=ctx.progress,
                         should_stop=ctx.should_stop, on_fold=lambda f: ctx.log(fold_line(f)))
    if ctx.should_stop():
        raise JobStopped(ctx.stop_reason())
    return res


Handler = Callable[[JobEnv, Job, JobContext], "dict[str, Any] | None"]

#: What each job kind runs (``import`` jobs have no handler yet: they fail, naming the kind).
HANDLERS: dict[JobKind, Handler] = {JobKind.noop: run_noop, JobKind.train: run_train, JobKind.rescore: run_rescore,
                                    JobKind.cv: run_cv}
#: The kinds that train models (their device and GPU count follow the training configuration in their params).
TRAINS = (JobKind.train, JobKind.cv)
