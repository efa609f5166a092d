"""Settings stored in ``app_settings``: the automatic-retrain policy and generic JSON settings.

The retrain policy says when the worker enqueues a retrain by itself: when it is enabled, at least
``min_new_labels`` labels (or rankings) arrived since the newest model version was trained, no training job
is queued or running, and ``min_interval_s`` seconds passed since the newest version (or the last automatic
retrain). The worker then enqueues one ``train`` job with ``dedupe_key="auto-retrain"`` (the partial unique
index keeps it to one queued job, whatever the number of workers).

"New labels" are counted against a *watermark*: the highest label and ranking ids that existed when the
newest version's training started (the ``label_watermark`` the worker stores in the training job's
``result``), or, for versions trained outside the worker, the version's creation time. After a failed automatic retrain, labels are counted from that job's watermark, so
a retrain that cannot succeed (too few usable pairs) is not retried until more labels arrive.
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.bounds import bounded, check_fields
from db.models import AppSetting, Job, JobKind, JobStatus, Label, ModelVersion, Ranking, utcnow
from db.session import dialect_insert

RETRAIN_POLICY_KEY = "retrain_policy"
#: ``dedupe_key`` of automatic retrain jobs.
AUTO_RETRAIN_KEY = "auto-retrain"
TRAIN_MODES = ("head", "finetune")


@dataclass(frozen=True)
class RetrainPolicy:
    """When the worker retrains by itself.

    Attributes:
        enabled: automatic retraining on or off.
        mode: training mode of automatic retrains, ``head`` (frozen backbone, fast on CPU) or ``finetune``.
        min_new_labels: labels (and rankings) since the newest version that trigger a retrain (default 20,
            small enough that a demo labeler sees the model change).
        min_interval_s: seconds to wait after the newest version (or the last automatic retrain) before
            another automatic retrain.
        train_params: extra ``TrainConfig`` fields for automatic retrains (e.g. ``{"epochs": 3}``); the CLI and
            the Train page check them as the worker will (``rm_engine.config.policy_train_config``) before storing.
        rescore: enqueue a rescore of stored responses after each new version.
    """

    enabled: bool = True
    mode: str = "head"
    min_new_labels: int = field(default=20, metadata=bounded(
        1, 10**9, integer=True, help="new labels (and rankings) that trigger a retrain"))
    min_interval_s: float = field(default=30.0, metadata=bounded(
        0, 366 * 86_400, help="seconds between automatic retrains"))
    train_params: dict[str, Any] = field(default_factory=dict)
    rescore: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ValueError(f"retrain policy field 'enabled' must be true or false, got {self.enabled!r}")
        if self.mode not in TRAIN_MODES:
            raise ValueError(f"retrain policy field 'mode' must be one of {', '.join(TRAIN_MODES)}, got {self.mode!r}")
        check_fields(self, lambda name: f"retrain policy field {name!r}")  # finite and in range
        if not isinstance(self.train_params, dict) or not all(isinstance(k, str) for k in self.train_params):
            raise ValueError(
                f"retrain policy field 'train_params' must be an object with string keys, got {self.train_params!r}"
            )
        if "mode" in self.train_params:
            raise ValueError("retrain policy field 'train_params' must not set 'mode': use the policy's own 'mode'")
        if not isinstance(self.rescore, bool):
            raise ValueError(f"retrain policy field 'rescore' must be true or false, got {self.rescore!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, strict: bool = True) -> RetrainPolicy:
        """Build from stored JSON. ``strict`` rejects unknown fields (naming them); otherwise they are ignored."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown and strict:
            raise ValueError(f"unknown retrain policy field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        kw = {k: v for k, v in data.items() if k in known}
        if "min_interval_s" in kw and isinstance(kw["min_interval_s"], int) and not isinstance(kw["min_interval_s"], bool):
            kw["min_interval_s"] = float(kw["min_interval_s"])
        if "train_params" in kw and isinstance(kw["train_params"], dict):
            kw["train_params"] = dict(kw["train_params"])
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return asdict(self)

    def train_job_params(self) -> dict[str, Any]:
        """Parameters of the ``train`` job this policy enqueues."""
        return {"mode": self.mode, **self.train_params, "auto": True}


# ---------------------------------------------------------------- generic settings


def get_setting(session: Session, key: str, default: Any = None) -> Any:
    """The JSON value stored under ``key``, or ``default`` when absent."""
    row = session.get(AppSetting, key)
    return default if row is None else row.value


def set_setting(session: Session, key: str, value: Any) -> None:
    """Store a JSON value under ``key`` (insert or replace; safe against concurrent writers)."""
    if not key or len(key) > 100:
        raise ValueError(f"setting key must be 1 to 100 characters, got {key!r}")
    now = utcnow()
    stmt = dialect_insert(session)(AppSetting).values(key=key, value=value, updated_at=now)
    stmt = stmt.on_conflict_do_update(index_elements=[AppSetting.key], set_={"value": value, "updated_at": now})
    session.execute(stmt)
    if (AppSetting, (key,), None) in session.identity_map:  # refresh a copy this session already holds
        session.get(AppSetting, key, populate_existing=True)


# ---------------------------------------------------------------- retrain policy


def get_policy(session: Session) -> RetrainPolicy:
    """The stored retrain policy (defaults for missing fields and for values it refuses; unknown stored fields are
    ignored)."""
    stored = get_setting(session, RETRAIN_POLICY_KEY, None)
    if not isinstance(stored, dict):
        return RetrainPolicy()
    try:
        return RetrainPolicy.from_dict(stored, strict=False)
    except ValueError:  # a value stored before it was checked: that field's default, the others kept
        kept: dict[str, Any] = {}
        for key, value in stored.items():
            try:
                RetrainPolicy.from_dict({**kept, key: value}, strict=False)
                kept[key] = value
            except ValueError:
                pass
        return RetrainPolicy.from_dict(kept, strict=False)


def set_policy(session: Session, **changes: Any) -> RetrainPolicy:
    """Change some fields of the retrain policy (validated; an unknown field raises ``ValueError``)."""
    current = get_policy(session)
    merged = RetrainPolicy.from_dict({**current.to_dict(), **changes}, strict=True)
    set_setting(session, RETRAIN_POLICY_KEY, merged.to_dict())
    return merged


@dataclass(frozen=True)
class Watermark:
    """The newest label and ranking ids that a training run saw (0 = none)."""

    max_label_id: int = 0
    max_ranking_id: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"max_label_id": self.max_label_id, "max_ranking_id": self.max_ranking_id}

    @classmethod
    def from_any(cls, data: Any) -> Watermark | None:
        if not isinstance(data, dict) or not isinstance(data.get("max_label_id"), int):
            return None
        mr = data.get("max_ranking_id")
        return cls(int(data["max_label_id"]), int(mr) if isinstance(mr, int) else 0)


def current_watermark(session: Session) -> Watermark:
    """The newest label and ranking ids now in the database."""
    ml = session.scalar(select(func.max(Label.id))) or 0
    mr = session.scalar(select(func.max(Ranking.id))) or 0
    return Watermark(int(ml), int(mr))


def latest_version(session: Session) -> ModelVersion | None:
    """The newest model version, or None."""
    return session.scalar(select(ModelVersion).order_by(ModelVersion.id.desc()).limit(1))


def version_watermark(session: Session, version: ModelVersion) -> Watermark | None:
    """The newest label and ranking ids that existed when ``version``'s training started, when known.

    Read from the training job (``result`` then ``params``, key ``label_watermark``, written by the worker).
    The version's ``data_snapshot`` is not used: its ids cover only the labels that became pairs (``both_bad``
    and source-filtered labels are left out), so such labels would count as new forever.
    """
    if version.job_id is None:
        return None
    job = session.get(Job, version.job_id)
    if job is None:
        return None
    wm = Watermark.from_any((job.result or {}).get("label_watermark"))
    return wm if wm is not None else Watermark.from_any((job.params or {}).get("label_watermark"))


def _count_since(session: Session, wm: Watermark | None, since: datetime | None) -> int:
    if wm is not None:
        n = session.scalar(select(func.count()).select_from(Label).where(Label.id > wm.max_label_id)) or 0
        n += session.scalar(select(func.count()).select_from(Ranking).where(Ranking.id > wm.max_ranking_id)) or 0
        return int(n)
    ql = select(func.count()).select_from(Label)
    qr = select(func.count()).select_from(Ranking)
    if since is not None:
        ql, qr = ql.where(Label.created_at > since), qr.where(Ranking.created_at > since)
    return int((session.scalar(ql) or 0) + (session.scalar(qr) or 0))


def labels_since_last_version(session: Session) -> int:
    """Labels plus rankings added since the newest model version was trained (all of them if none)."""
    v = latest_version(session)
    if v is None:
        return _count_since(session, None, None)
    return _count_since(session, version_watermark(session, v), v.created_at)


def _epoch(now: float | datetime | None) -> float:
    if now is None:
        return time.time()
    if isinstance(now, datetime):
        return (now if now.tzinfo else now.replace(tzinfo=timezone.utc)).timestamp()
    return float(now)


def should_retrain(session: Session, now: float | datetime | None = None) -> tuple[bool, str]:
    """Whether the worker should enqueue an automatic retrain now, and why (or why not), in one line."""
    policy = get_policy(session)
    if not policy.enabled:
        return False, "automatic retraining is off"
    active = session.scalar(
        select(Job.id)
        .where(Job.kind == JobKind.train, Job.status.in_([JobStatus.queued, JobStatus.running]))
        .order_by(Job.id)
        .limit(1)
    )
    if active is not None:
        return False, f"training job #{active} is already queued or running"
    t = _epoch(now)
    v = latest_version(session)
    wm = version_watermark(session, v) if v is not None else None
    since = v.created_at if v is not None else None
    basis = f"version #{v.id}" if v is not None else "the start (no version yet)"
    last_auto = session.scalar(
        select(Job).where(Job.dedupe_key == AUTO_RETRAIN_KEY).order_by(Job.id.desc()).limit(1)
    )
    if last_auto is not None and last_auto.status is JobStatus.failed:
        auto_wm = Watermark.from_any((last_auto.params or {}).get("label_watermark"))
        newer = auto_wm is not None and (wm is None or auto_wm.max_label_id >= wm.max_label_id)
        if newer:
            wm, basis = auto_wm, f"failed automatic retrain #{last_auto.id}"
    n = _count_since(session, wm, since)
    if n < policy.min_new_labels:
        return False, f"{n} new labels since {basis}; the policy needs {policy.min_new_labels}"
    stamps = []
    if v is not None and v.created_at is not None:
        stamps.append(v.created_at.timestamp())
    if last_auto is not None and last_auto.created_at is not None:
        stamps.append(last_auto.created_at.timestamp())
    if stamps:
        waited = t - max(stamps)
        if waited < policy.min_interval_s:
            return False, (
                f"{n} new labels since {basis}, but only {waited:.0f} s since the last retrain; "
                f"the policy waits {policy.min_interval_s:.0f} s"
            )
    return True, f"{n} new labels since {basis} (policy: {policy.min_new_labels})"


def auto_retrain_params(session: Session) -> dict[str, Any]:
    """Parameters for an automatic retrain job: the policy's training parameters plus the current watermark."""
    return {**get_policy(session).train_job_params(), "label_watermark": current_watermark(session).to_dict()}

