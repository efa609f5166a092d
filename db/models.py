"""The whole schema, as typed SQLAlchemy 2.0 models. Alembic migrations in ``db/migrations`` follow it."""
from __future__ import annotations

import enum
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, synonym


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class Source(str, enum.Enum):
    """Who produced a judgment, best first."""

    expert = "expert"
    crowd = "crowd"
    ai = "ai"


class Outcome(str, enum.Enum):
    """Verdict on a comparison, relative to the comparison's own ``a`` and ``b``."""

    a = "a"
    b = "b"
    tie = "tie"
    both_bad = "both_bad"


class Side(str, enum.Enum):
    a = "a"
    b = "b"


class Split(str, enum.Enum):
    """``test`` labels are never trained on; they are reported apart."""

    train = "train"
    test = "test"


class JobStatus(str, enum.Enum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


class JobKind(str, enum.Enum):
    train = "train"
    rescore = "rescore"
    import_ = "import"
    noop = "noop"  # used by tests and health checks: runs a few steps and succeeds
    cv = "cv"  # cross-validation of a training configuration: measures, publishes nothing


def _enum(e: type[enum.Enum], name: str) -> Enum:
    # Strings plus a CHECK constraint: portable between SQLite and PostgreSQL, no native ENUM types to migrate.
    return Enum(e, name=name, native_enum=False, create_constraint=True, length=16, values_callable=lambda x: [m.value for m in x])


NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON}


class FlagReason(str, enum.Enum):
    """Why a pair or a label was flagged for review."""

    broken = "broken"  # a response is empty, truncated or garbled
    offensive = "offensive"
    needs_expertise = "needs_expertise"  # the labeler cannot judge it
    wrong_label = "wrong_label"  # a researcher thinks the verdict is wrong
    other = "other"


class Campaign(Base):
    """A shared crowd link (``db/annotators.py``): each worker who opens it with their id (Prolific's
    ``PROLIFIC_PID`` or a ``worker_id``) becomes a crowd-tier annotator. Only a sha256 of its token is stored."""

    __tablename__ = "campaigns"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    token_hash: Mapped[str | None] = mapped_column(String(64), nullable=True, unique=True, index=True)
    created_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    closed_at: Mapped[datetime | None] = mapped_column(nullable=True)


class Annotator(Base):
    """Whoever labels: a person's account, a campaign worker, or a machine labeler or import's name.

    ``default_source`` (also ``tier``) is the tier on record: the source the labels this annotator makes in the app
    are stored with. Researchers assign it (``db/annotators.py``); people are ``expert`` or ``crowd``, ``ai`` is
    for machine labelers and imports. ``token_hash`` is the sha256 of their personal link's token (None: no
    valid link); ``revoked_at`` set: they may not label in the app.
    """

    __tablename__ = "annotators"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    default_source: Mapped[Source] = mapped_column(_enum(Source, "source"), default=Source.crowd)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    token_hash: Mapped[str | None] = mapped_column(String(64), nullable=True, unique=True, index=True)
    invited_at: Mapped[datetime | None] = mapped_column(nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(nullable=True)
    # campaigns.id, a plain column: adding or dropping a foreign key would rebuild this table on SQLite, which
    # labels and rankings reference
    campaign_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    worker_id: Mapped[str | None] = mapped_column(String(100), nullable=True)  # their id in the campaign

    tier = synonym("default_source")


class Prompt(Base):
    """A prompt; ``history`` holds earlier chat turns (``[{"role": ..., "content": ...}]``) for multi-turn data."""

    __tablename__ = "prompts"

    id: Mapped[int] = mapped_column(primary_key=True)
    content_hash: Mapped[str] = mapped_column(String(64), unique=True)
    text: Mapped[str] = mapped_column(Text)
    history: Mapped[list[Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    category: Mapped[str | None] = mapped_column(String(100), nullable=True, index=True)
    tags: Mapped[list[Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    responses: Mapped[list[Response]] = relationship(back_populates="prompt", order_by="Response.id")


class Response(Base):
    __tablename__ = "responses"
    __table_args__ = (UniqueConstraint("prompt_id", "content_hash", name="uq_responses_prompt_content"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"), index=True)
    content_hash: Mapped[str] = mapped_column(String(64))
    text: Mapped[str] = mapped_column(Text)
    model: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    prompt: Mapped[Prompt] = relationship(back_populates="responses")


class Comparison(Base):
    """A prompt and two of its responses. Stored once per unordered pair: ``response_a_id < response_b_id``.

    What was shown on the left is a property of each label, not of the comparison.
    """

    __tablename__ = "comparisons"
    __table_args__ = (
        UniqueConstraint("response_a_id", "response_b_id", name="uq_comparisons_pair"),
        Index("ix_comparisons_label_count", "label_count"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"), index=True)
    response_a_id: Mapped[int] = mapped_column(ForeignKey("responses.id", ondelete="CASCADE"))
    response_b_id: Mapped[int] = mapped_column(ForeignKey("responses.id", ondelete="CASCADE"))
    # Denormalized count of labels, kept by the label store; the labeling queue orders by it.
    label_count: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    prompt: Mapped[Prompt] = relationship()
    response_a: Mapped[Response] = relationship(foreign_keys=[response_a_id])
    response_b: Mapped[Response] = relationship(foreign_keys=[response_b_id])


class Label(Base):
    """One judgment of one comparison by one annotator."""

    __tablename__ = "labels"
    __table_args__ = (Index("ix_labels_annotator_created", "annotator_id", "created_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    comparison_id: Mapped[int] = mapped_column(ForeignKey("comparisons.id", ondelete="CASCADE"), index=True)
    outcome: Mapped[Outcome] = mapped_column(_enum(Outcome, "outcome"))
    # 1 = slightly better, 2 = clearly better; None when not asked. Used as a margin by the trainer.
    strength: Mapped[int | None] = mapped_column(Integer, nullable=True)
    source: Mapped[Source] = mapped_column(_enum(Source, "source"), index=True)
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id"), index=True)
    # Which of the comparison's responses was shown on the left (or first, for imports).
    left: Mapped[Side | None] = mapped_column(_enum(Side, "side"), nullable=True)
    time_spent_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    split: Mapped[Split] = mapped_column(_enum(Split, "split"), default=Split.train)
    # Identifies the judgment: a UI submission's key, or the hash of an imported source record.
    idempotency_key: Mapped[str] = mapped_column(String(128), unique=True)
    origin: Mapped[str | None] = mapped_column(String(300), nullable=True)
    extra: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    # Kept out of training and exports by a researcher's review (db/review.py); reversible, never deleted.
    excluded: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # The label that replaced this verdict when its annotator changed it (db/label_history.py); such a label stays
    # stored, audited, and is left out of training pairs and exports. A plain column: undoing the new label clears it.
    superseded_by_id: Mapped[int | None] = mapped_column(Integer, nullable=True)

    comparison: Mapped[Comparison] = relationship()
    annotator: Mapped[Annotator] = relationship()


class ReviewFlag(Base):
    """A pair (or one label of it, ``label_id``) flagged for review, by a labeler who cannot judge it or by a
    researcher; open until ``resolved_at``. Open flags keep the pair out of the labeling queue."""

    __tablename__ = "review_flags"

    id: Mapped[int] = mapped_column(primary_key=True)
    comparison_id: Mapped[int] = mapped_column(ForeignKey("comparisons.id", ondelete="CASCADE"), index=True)
    label_id: Mapped[int | None] = mapped_column(ForeignKey("labels.id", ondelete="SET NULL"), nullable=True, index=True)
    reason: Mapped[FlagReason] = mapped_column(_enum(FlagReason, "flag_reason"))
    comment: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_by: Mapped[str] = mapped_column(String(200))
    annotator_id: Mapped[int | None] = mapped_column(ForeignKey("annotators.id"), nullable=True)  # a labeler's flag
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    resolved_at: Mapped[datetime | None] = mapped_column(nullable=True)
    resolved_by: Mapped[str | None] = mapped_column(String(200), nullable=True)


class RelabelRequest(Base):
    """A pair sent to an expert for a new label; experts are offered it first. Done when an expert labels it
    (``done_label_id``)."""

    __tablename__ = "relabel_requests"

    id: Mapped[int] = mapped_column(primary_key=True)
    comparison_id: Mapped[int] = mapped_column(ForeignKey("comparisons.id", ondelete="CASCADE"), index=True)
    label_id: Mapped[int | None] = mapped_column(ForeignKey("labels.id", ondelete="SET NULL"), nullable=True)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    done_at: Mapped[datetime | None] = mapped_column(nullable=True)
    done_label_id: Mapped[int | None] = mapped_column(ForeignKey("labels.id", ondelete="SET NULL"), nullable=True)


class AuditEvent(Base):
    """Who did what to which label, pair or annotator, and when: review actions (flag, exclude, include, relabel
    requests) and team changes (tiers, links). Ids are plain columns, not foreign keys: the record outlives
    what it names."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(32))
    label_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    comparison_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    annotator_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)


class Ranking(Base):
    """An ordering of several responses to one prompt by one annotator."""

    __tablename__ = "rankings"

    id: Mapped[int] = mapped_column(primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"), index=True)
    source: Mapped[Source] = mapped_column(_enum(Source, "source"))
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id"), index=True)
    split: Mapped[Split] = mapped_column(_enum(Split, "split"), default=Split.train)
    idempotency_key: Mapped[str] = mapped_column(String(128), unique=True)
    time_spent_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    origin: Mapped[str | None] = mapped_column(String(300), nullable=True)
    extra: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    prompt: Mapped[Prompt] = relationship()
    annotator: Mapped[Annotator] = relationship()
    items: Mapped[list[RankingItem]] = relationship(
        back_populates="ranking", order_by="RankingItem.position", cascade="all, delete-orphan"
    )


class RankingItem(Base):
    """``position`` orders the items as given; ``rank`` (1 = best) may repeat for tied responses."""

    __tablename__ = "ranking_items"
    __table_args__ = (UniqueConstraint("ranking_id", "response_id", name="uq_ranking_items_response"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    ranking_id: Mapped[int] = mapped_column(ForeignKey("rankings.id", ondelete="CASCADE"), index=True)
    response_id: Mapped[int] = mapped_column(ForeignKey("responses.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    rank: Mapped[int] = mapped_column(Integer)

    ranking: Mapped[Ranking] = relationship(back_populates="items")
    response: Mapped[Response] = relationship()


class Job(Base):
    """A unit of background work, claimed by a worker under a lease."""

    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_status_created", "status", "id"),
        # At most one queued job per dedupe key (e.g. the automatic retrain): a constraint, not a check-then-insert.
        Index(
            "uq_jobs_queued_dedupe",
            "dedupe_key",
            unique=True,
            sqlite_where=text("status = 'queued' AND dedupe_key IS NOT NULL"),
            postgresql_where=text("status = 'queued' AND dedupe_key IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[JobKind] = mapped_column(_enum(JobKind, "job_kind"))
    status: Mapped[JobStatus] = mapped_column(_enum(JobStatus, "job_status"), default=JobStatus.queued)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    dedupe_key: Mapped[str | None] = mapped_column(String(100), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    lease_owner: Mapped[str | None] = mapped_column(String(200), nullable=True)
    lease_expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)  # epoch seconds
    heartbeat_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    device: Mapped[str | None] = mapped_column(String(50), nullable=True)
    created_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)


class WorkerPresence(Base):
    """A live ``rmstudio worker`` process, as it last said (``db/workers.py``): where it runs and what it takes."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)  # the worker's lease owner name
    host: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    device: Mapped[str] = mapped_column(String(50))
    kinds: Mapped[list[Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)  # None: every kind
    every_s: Mapped[float] = mapped_column(Float)  # seconds between its beats
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    seen_at: Mapped[float] = mapped_column(Float)  # epoch seconds of its last beat


class ServedPrompt(Base):
    """A prompt the reward server scored responses to (``db/served.py``): what an RL policy is actually asked, for
    the Dashboard's Coverage tab to check against the labelled prompts."""

    __tablename__ = "served_prompts"

    hash: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 of the text
    text: Mapped[str] = mapped_column(Text)
    count: Mapped[int] = mapped_column(Integer, default=1)  # responses scored to it
    first_seen: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class JobLog(Base):
    __tablename__ = "job_logs"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    line: Mapped[str] = mapped_column(Text)


class ModelVersion(Base):
    """A trained reward model. Its files live under ``RMSTUDIO_HOME/<path>``; the row appears only after they do."""

    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    mode: Mapped[str] = mapped_column(String(20))
    backbone: Mapped[str] = mapped_column(String(500))
    path: Mapped[str] = mapped_column(String(500))
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    data_snapshot: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    norm_stats: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    n_pairs: Mapped[int] = mapped_column(Integer, default=0)
    n_labels: Mapped[int] = mapped_column(Integer, default=0)
    ensemble_size: Mapped[int] = mapped_column(Integer, default=1)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), nullable=True)
    device: Mapped[str | None] = mapped_column(String(50), nullable=True)


class ModelVersionArchive(Base):
    """A copy of a version's files in the database (a zip of its folder, manifest included), so that processes on
    other machines sharing a PostgreSQL database but not ``RMSTUDIO_HOME`` can restore and load it
    (``rm_engine/versions/model_store.py``). At most one per version; written in the version's publishing transaction."""

    __tablename__ = "model_version_archives"

    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ResponseScore(Base):
    """Cached score of a stored response under one model version (for dashboards and active learning)."""

    __tablename__ = "response_scores"
    __table_args__ = (UniqueConstraint("model_version_id", "response_id", name="uq_response_scores_version_response"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"), index=True)
    response_id: Mapped[int] = mapped_column(ForeignKey("responses.id", ondelete="CASCADE"), index=True)
    score: Mapped[float] = mapped_column(Float)
    std: Mapped[float | None] = mapped_column(Float, nullable=True)


class AppSetting(Base):
    """Small JSON settings edited from the UI and CLI: ``retrain_policy``, ``queue_policy``, ``local_annotator``."""

    __tablename__ = "app_settings"

    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
