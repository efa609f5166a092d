"""A labeler's own recent labels, and changing the verdict of one of them.

A change never edits a label: the new verdict is stored as a new label (same pair, same sides as shown, the
annotator's tier now, a fresh idempotency key, ``extra["supersedes"]`` = the old label's id) and the old label gets
``superseded_by_id`` = the new one. The old label stays stored for the record; training pairs (``db/pairs.py``) and
exports leave it out, and the pair's ``label_count`` still counts one verdict of this annotator. Each change writes
an audit row (``supersede``: who, when, from which verdict to which). Only the annotator's own labels made in the
app can be changed, and not one a researcher excluded in review (their decision stands).

Every function takes an open ``Session``; the caller owns the transaction. No torch, no streamlit.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session, aliased

from db import review
from db.guidelines import guidelines_extra
from db.labeling import APP_ORIGIN, SUPERSEDES, _history, choice_of, outcome_of
from db.models import Annotator, Comparison, Label, Outcome, Prompt, Response, Side, Source
from db.store import add_label

__all__ = ["RECENT", "ChangeRefused", "RecentLabel", "change_label", "recent_labels"]

RECENT = 20  # how far back a labeler can step through their labels


class ChangeRefused(ValueError):
    """The label cannot be changed (not yours, changed already, excluded in review); the message says which."""


@dataclass(frozen=True)
class RecentLabel:
    """One of a labeler's current labels as they saw it: the pair with the same sides, and their verdict."""

    label_id: int
    comparison_id: int
    prompt: str
    history: tuple[tuple[str, str], ...]
    category: str | None
    left: Side
    left_text: str
    right_text: str
    outcome: Outcome
    strength: int | None
    created_at: datetime
    changed: bool  # this label replaced an earlier verdict of theirs

    @property
    def choice(self) -> str:
        """The verdict as the labeler clicked it: ``left``, ``right``, ``tie`` or ``both_bad``."""
        return choice_of(self.left, self.outcome)


def recent_labels(session: Session, annotator_id: int, limit: int = RECENT) -> list[RecentLabel]:
    """The annotator's current labels made in the app, newest first (at most ``limit``)."""
    ra, rb = aliased(Response), aliased(Response)
    rows = session.execute(
        select(Label.id, Label.comparison_id, Prompt.text, Prompt.history, Prompt.category, Label.left, ra.text,
               rb.text, Label.outcome, Label.strength, Label.created_at, Label.extra)
        .join(Comparison, Label.comparison_id == Comparison.id)
        .join(Prompt, Comparison.prompt_id == Prompt.id)
        .join(ra, Comparison.response_a_id == ra.id)
        .join(rb, Comparison.response_b_id == rb.id)
        .where(Label.annotator_id == annotator_id, Label.origin == APP_ORIGIN, Label.superseded_by_id.is_(None))
        .order_by(Label.created_at.desc(), Label.id.desc())
        .limit(limit)
    ).all()
    out = []
    for lid, cid, prompt, hist, cat, left, a_text, b_text, outcome, strength, at, extra in rows:
        left = Side(left) if left is not None else Side.a
        lt, rt = (a_text, b_text) if left is Side.a else (b_text, a_text)
        out.append(RecentLabel(lid, cid, prompt, _history(hist), cat, left, lt, rt, Outcome(outcome), strength, at,
                               SUPERSEDES in (extra or {})))
    return out


def change_label(
    session: Session,
    label_id: int,
    choice: str,
    *,
    annotator: Annotator,
    key: str,
    strength: int | None = None,
) -> tuple[Label, bool]:
    """Store ``choice`` (``left``/``right``/``tie``/``both_bad``, as the pair was shown) as the new verdict of the
    annotator's label ``label_id``: ``(new label, created)``. A second call with the same ``key`` returns the label
    the first one stored (``created`` False). Raises :class:`ChangeRefused` naming why when the label is not the
    annotator's own app label, was changed already, or was excluded in review, or when the verdict is the same."""
    done = session.scalar(select(Label).where(Label.idempotency_key == key))
    if done is not None:
        return done, False
    old = session.get(Label, label_id)
    if old is None or old.annotator_id != annotator.id or old.origin != APP_ORIGIN:
        raise ChangeRefused(f"label {label_id} is not one of your labels made here")
    if old.superseded_by_id is not None:
        raise ChangeRefused(f"label {label_id} was changed already (now label {old.superseded_by_id})")
    if old.excluded:
        raise ChangeRefused(f"label {label_id} was excluded from training by a researcher's review: it stays as it is")
    left = Side(old.left) if old.left is not None else Side.a
    outcome = outcome_of(left, choice)
    strength = strength if outcome in (Outcome.a, Outcome.b) else None
    if outcome is Outcome(old.outcome) and strength == old.strength:
        raise ChangeRefused("that is the verdict already stored")
    new, created = add_label(
        session, comparison_id=old.comparison_id, outcome=outcome, source=Source(annotator.default_source),
        annotator=annotator, idempotency_key=key, left=left, strength=strength, split=old.split,
        origin=APP_ORIGIN, extra={"queue": "changed", SUPERSEDES: old.id, **guidelines_extra(session)},
    )
    # Claimed in one statement: of two changes racing on one label, one stores its label, the other rolls back.
    claimed = session.execute(update(Label).where(Label.id == old.id, Label.superseded_by_id.is_(None))
                              .values(superseded_by_id=new.id).execution_options(synchronize_session=False))
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        raise ChangeRefused(f"label {label_id} was changed already")
    session.execute(update(Comparison).where(Comparison.id == old.comparison_id)
                    .values(label_count=Comparison.label_count - 1))  # the old verdict no longer counts
    session.refresh(old)
    review.audit(session, annotator.name, "supersede", label_id=new.id, comparison_id=old.comparison_id,
                 annotator_id=annotator.id,
                 detail={"replaces": old.id, "from": Outcome(old.outcome).value, "to": outcome.value,
                         "strength_from": old.strength, "strength_to": strength})
    if created and Source(new.source) is Source.expert:
        review.complete_relabels(session, new, annotator.name)
    return new, created
