"""The labeling-queue policy: how many annotators label each pair, the agreement share, active learning.

Stored as the ``queue_policy`` app setting (``db.policy.get_setting``/``set_setting``) and set by researchers on
the Data page. :func:`phase_conditions` turns it into the SQL conditions of the queue's phases
(used by :mod:`db.labeling`). No torch, no streamlit.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from sqlalchemy.orm import Session

from db.bounds import FieldError, bounded, check_fields
from db.models import Comparison
from db.policy import get_setting, set_setting

QUEUE_POLICY_KEY = "queue_policy"
# Bucket of a comparison (0..99) = ((id % 100) * 19) % 100: a permutation of the last two digits (19 is coprime
# with 100), so consecutive ids land 19 buckets apart. Reduced before multiplying: no integer overflow in SQL.
_HASH_MUL = 19


def bucket_sql() -> Any:
    """The comparison's agreement bucket (0..99) as a SQL expression; see :func:`in_agreement_share`."""
    return ((Comparison.id % 100) * _HASH_MUL) % 100


# ----------------------------------------------------------------------------------------------- policy


@dataclass(frozen=True)
class QueuePolicy:
    """How the labeling queue picks the next pair.

    Attributes:
        target_overlap: labels every pair gets before any pair gets more (1 = every pair labelled once).
        agreement_share: share of pairs (0..1) that get ``agreement_overlap`` labels, for agreement statistics.
        agreement_overlap: annotators per pair in the agreement share (Potato and OpenAssistant use 3).
        active_learning: prefer pairs the newest scored model version is least sure about.
        pool_size: how many best candidates one pair is drawn from (spreads concurrent annotators).
        ranking_max_responses: at most this many responses are shown in one ranking task.
        control_share: share (0..0.5) of each annotator's pairs drawn from pairs an expert has labelled (control
            pairs, shown like any other), so that everyone is measured against the experts early
            (``agrees_with_experts`` in ``rmstudio annotators`` and the Dashboard); 0 turns it off.
    """

    target_overlap: int = field(default=1, metadata=bounded(1, 100, integer=True, help="labels every pair gets first"))
    agreement_share: float = field(default=0.1, metadata=bounded(
        0, 1, help="share of pairs labelled by the agreement overlap's annotators"))
    agreement_overlap: int = field(default=3, metadata=bounded(
        1, 100, integer=True, help="annotators per pair in the agreement share"))
    active_learning: bool = False
    pool_size: int = field(default=20, metadata=bounded(
        1, 1000, integer=True, help="best candidates one pair is drawn from"))
    ranking_max_responses: int = field(default=6, metadata=bounded(
        3, 20, integer=True, help="most responses shown in one ranking task"))
    control_share: float = field(default=0.0, metadata=bounded(
        0, 0.5, help="share of each labeler's pairs drawn from expert-labelled ones (control pairs)"))

    def __post_init__(self) -> None:
        check_fields(self, lambda name: f"queue_policy.{name}")  # finite and in range
        if not isinstance(self.active_learning, bool):
            raise FieldError("queue_policy.active_learning", "must be true or false", self.active_learning,
                             field="active_learning")

    @property
    def agreement_percent(self) -> int:
        """The agreement share as whole hash buckets out of 100."""
        return int(round(self.agreement_share * 100))

    @property
    def has_agreement_phase(self) -> bool:
        return self.agreement_overlap > self.target_overlap and self.agreement_percent > 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> QueuePolicy:
        """Build from a stored dict; unknown keys are an error naming them, missing keys take defaults."""
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"queue_policy: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**data)


def in_agreement_share(comparison_id: int, policy: QueuePolicy) -> bool:
    """Whether a comparison belongs to the share labelled by ``agreement_overlap`` annotators (same rule as SQL)."""
    return ((comparison_id % 100) * _HASH_MUL) % 100 < policy.agreement_percent


def load_queue_policy(session: Session) -> QueuePolicy:
    """The stored queue policy (defaults when none was saved)."""
    return QueuePolicy.from_dict(get_setting(session, QUEUE_POLICY_KEY))


def save_queue_policy(session: Session, policy: QueuePolicy) -> None:
    """Store the queue policy (in the caller's write transaction)."""
    set_setting(session, QUEUE_POLICY_KEY, policy.to_dict())


def phase_conditions(policy: QueuePolicy) -> list[list[Any]]:
    """The WHERE clauses of the queue's phases, in order (the first phase that has candidates wins):
    every pair up to ``target_overlap`` labels, then the agreement share up to ``agreement_overlap``."""
    phases: list[list[Any]] = [[Comparison.label_count < policy.target_overlap]]
    if policy.has_agreement_phase:
        phases.append([Comparison.label_count < policy.agreement_overlap, bucket_sql() < policy.agreement_percent])
    return phases

