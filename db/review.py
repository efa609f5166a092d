"""Review of labels: flags, exclusions from training, relabel requests by an expert, and the audit of every action.

* **Flags** (:class:`~db.models.ReviewFlag`): a labeler flags a pair they cannot judge (broken, offensive, needs
  expertise) with an optional comment; a researcher flags a label they think wrong. An open flag keeps its pair out
  of the labeling queue until a researcher resolves it.
* **Exclusion** (``labels.excluded``): the label stays in the database, shown as excluded, and is left out of the
  training pairs (``db/pairs.py``) and exports from then on; including it again undoes that.
* **Relabel requests** (:class:`~db.models.RelabelRequest`): the pair goes to the front of every expert's queue
  until an expert labels it.
* **Audit** (:class:`~db.models.AuditEvent`): each of these, and each team change (``db/annotators.py``), writes one
  row: who, when, what.

Every function takes an open ``Session`` and never commits: the caller owns the transaction.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, exists, func, or_, select, update
from sqlalchemy.orm import Session, aliased

from db.models import (
    Annotator,
    AuditEvent,
    Comparison,
    FlagReason,
    Label,
    Prompt,
    RelabelRequest,
    Response,
    ReviewFlag,
    Source,
    utcnow,
)

MAX_COMMENT = 2000
LABELER_REASONS = (FlagReason.broken, FlagReason.offensive, FlagReason.needs_expertise, FlagReason.other)
REASON_TEXT = {
    FlagReason.broken: "broken (empty, cut off or garbled)",
    FlagReason.offensive: "offensive",
    FlagReason.needs_expertise: "needs expertise I lack",
    FlagReason.wrong_label: "wrong label",
    FlagReason.other: "other",
}

__all__ = [
    "LABELER_REASONS", "MAX_COMMENT", "REASON_TEXT", "PairLabel", "audit", "complete_relabels", "describe",
    "exclude_label", "excluded_labels", "flag_label", "flag_pair", "has_open_flag", "has_open_relabel", "history",
    "include_label", "open_flags", "open_relabels", "pair_labels", "pair_texts", "recent_actions", "request_relabel",
    "resolve_flags", "review_counts",
]


def audit(session: Session, actor: str, action: str, *, label_id: int | None = None,
          comparison_id: int | None = None, annotator_id: int | None = None,
          detail: dict[str, Any] | None = None) -> AuditEvent:
    """Record that ``actor`` did ``action`` (to a label, a pair or an annotator) now."""
    ev = AuditEvent(actor=_who(actor), action=action, label_id=label_id, comparison_id=comparison_id,
                    annotator_id=annotator_id, detail=detail or None, created_at=utcnow())
    session.add(ev)
    session.flush()
    return ev


def _who(actor: str) -> str:
    actor = (actor or "").strip()
    if not actor:
        raise ValueError("every review action needs who did it (an empty name was given)")
    return actor[:200]


def _comment(comment: str | None) -> str | None:
    comment = (comment or "").strip()
    if len(comment) > MAX_COMMENT:
        raise ValueError(f"the comment is {len(comment):,} characters; at most {MAX_COMMENT:,} fit")
    return comment or None


def _label(session: Session, label_id: int) -> Label:
    label = session.get(Label, label_id)
    if label is None:
        raise LookupError(f"label {label_id} does not exist (it may have been undone)")
    return label


def _reason(reason: FlagReason | str) -> FlagReason:
    try:
        return FlagReason(reason)
    except ValueError:
        raise ValueError(f"unknown flag reason {reason!r}: expected one of "
                         f"{', '.join(r.value for r in FlagReason)}") from None


# ----------------------------------------------------------------------------------------------- actions


def flag_pair(session: Session, comparison_id: int, reason: FlagReason | str, *, by: str, comment: str | None = None,
              label_id: int | None = None, annotator_id: int | None = None) -> ReviewFlag:
    """Flag a pair (or one of its labels) for review; ``annotator_id``: the labeler who flagged it, if one did.
    The pair leaves the labeling queue until a researcher resolves the flag."""
    if session.get(Comparison, comparison_id) is None:
        raise LookupError(f"pair {comparison_id} does not exist")
    why, text = _reason(reason), _comment(comment)
    flag = ReviewFlag(comparison_id=comparison_id, label_id=label_id, reason=why, comment=text, created_by=_who(by),
                      annotator_id=annotator_id, created_at=utcnow())
    session.add(flag)
    session.flush()
    audit(session, by, "flag", label_id=label_id, comparison_id=comparison_id, annotator_id=annotator_id,
          detail={"flag_id": flag.id, "reason": why.value, **({"comment": text} if text else {})})
    return flag


def flag_label(session: Session, label_id: int, *, by: str, reason: FlagReason | str = FlagReason.wrong_label,
               comment: str | None = None) -> ReviewFlag:
    """A researcher flags one label (by default as a wrong verdict)."""
    label = _label(session, label_id)
    return flag_pair(session, label.comparison_id, reason, by=by, comment=comment, label_id=label.id)


def resolve_flags(session: Session, comparison_id: int, *, by: str, note: str | None = None) -> int:
    """Close every open flag of a pair (it returns to the labeling queue); returns how many were open."""
    ids = list(session.scalars(select(ReviewFlag.id).where(ReviewFlag.comparison_id == comparison_id,
                                                           ReviewFlag.resolved_at.is_(None))))
    if not ids:
        return 0
    session.execute(update(ReviewFlag).where(ReviewFlag.id.in_(ids)).values(resolved_at=utcnow(), resolved_by=_who(by)))
    text = _comment(note)
    audit(session, by, "resolve", comparison_id=comparison_id, detail={"flags": ids, **({"note": text} if text else {})})
    return len(ids)


def _set_excluded(session: Session, label_id: int, excluded: bool, by: str, reason: str | None) -> bool:
    label = _label(session, label_id)
    if label.excluded == excluded:
        return False
    label.excluded = excluded
    text = _comment(reason)
    audit(session, by, "exclude" if excluded else "include", label_id=label.id, comparison_id=label.comparison_id,
          annotator_id=label.annotator_id, detail={"reason": text} if text else None)
    return True


def exclude_label(session: Session, label_id: int, *, by: str, reason: str | None = None) -> bool:
    """Keep a label out of training and exports from the next run on (it stays stored, shown as excluded).
    Returns False when it already was excluded (nothing recorded)."""
    return _set_excluded(session, label_id, True, by, reason)


def include_label(session: Session, label_id: int, *, by: str, reason: str | None = None) -> bool:
    """Undo :func:`exclude_label`. Returns False when the label was not excluded."""
    return _set_excluded(session, label_id, False, by, reason)


def request_relabel(session: Session, comparison_id: int, *, by: str, label_id: int | None = None,
                    note: str | None = None) -> tuple[RelabelRequest, bool]:
    """Send a pair to an expert for a new label: ``(request, created)``; a pair already waiting keeps its request."""
    if session.get(Comparison, comparison_id) is None:
        raise LookupError(f"pair {comparison_id} does not exist")
    found = session.scalar(select(RelabelRequest).where(RelabelRequest.comparison_id == comparison_id,
                                                        RelabelRequest.done_at.is_(None)))
    if found is not None:
        return found, False
    text = _comment(note)
    req = RelabelRequest(comparison_id=comparison_id, label_id=label_id, note=text, created_by=_who(by),
                         created_at=utcnow())
    session.add(req)
    session.flush()
    audit(session, by, "relabel", label_id=label_id, comparison_id=comparison_id,
          detail={"request_id": req.id, **({"note": text} if text else {})})
    return req, True


def complete_relabels(session: Session, label: Label, by: str) -> int:
    """An expert's new ``label`` answers the open relabel requests of its pair; returns how many."""
    ids = list(session.scalars(select(RelabelRequest.id).where(RelabelRequest.comparison_id == label.comparison_id,
                                                               RelabelRequest.done_at.is_(None))))
    if not ids:
        return 0
    session.execute(update(RelabelRequest).where(RelabelRequest.id.in_(ids))
                    .values(done_at=utcnow(), done_label_id=label.id))
    audit(session, by, "relabelled", label_id=label.id, comparison_id=label.comparison_id,
          annotator_id=label.annotator_id, detail={"requests": ids})
    return len(ids)


# ----------------------------------------------------------------------------------------------- queue filters


def has_open_flag() -> ColumnElement[bool]:
    """SQL: the comparison in the enclosing query has an open flag."""
    return exists().where(ReviewFlag.comparison_id == Comparison.id, ReviewFlag.resolved_at.is_(None))


def has_open_relabel() -> ColumnElement[bool]:
    """SQL: the comparison in the enclosing query waits for an expert's relabel."""
    return exists().where(RelabelRequest.comparison_id == Comparison.id, RelabelRequest.done_at.is_(None))


# ----------------------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class PairLabel:
    """One label of a pair, as the review panels show it (``verdict`` in the stored comparison's a/b terms)."""

    label_id: int
    annotator: str
    source: str
    verdict: str
    excluded: bool
    origin: str | None
    created_at: datetime
    open_flags: int


def pair_texts(session: Session, comparison_id: int) -> tuple[str, str, str]:
    """``(prompt, response a, response b)`` of a stored pair."""
    ra, rb = aliased(Response), aliased(Response)
    row = session.execute(
        select(Prompt.text, ra.text, rb.text).select_from(Comparison)
        .join(Prompt, Comparison.prompt_id == Prompt.id)
        .join(ra, Comparison.response_a_id == ra.id).join(rb, Comparison.response_b_id == rb.id)
        .where(Comparison.id == comparison_id)
    ).first()
    if row is None:
        raise LookupError(f"pair {comparison_id} does not exist")
    return row[0], row[1], row[2]


def pair_labels(session: Session, comparison_id: int) -> list[PairLabel]:
    """Every label of a pair, oldest first, with its review state."""
    flags = (select(func.count()).where(ReviewFlag.label_id == Label.id, ReviewFlag.resolved_at.is_(None))
             .correlate(Label).scalar_subquery())
    rows = session.execute(
        select(Label.id, Annotator.name, Label.source, Label.outcome, Label.excluded, Label.origin, Label.created_at,
               flags)
        .join(Annotator, Label.annotator_id == Annotator.id)
        .where(Label.comparison_id == comparison_id).order_by(Label.id)
    ).all()
    return [PairLabel(lid, ann, Source(src).value, str(getattr(out, "value", out)), bool(exc), origin, at, int(n or 0))
            for lid, ann, src, out, exc, origin, at, n in rows]


def review_counts(session: Session) -> dict[str, int]:
    """``open_flags`` (pairs with an open flag), ``waiting_for_expert`` (open relabel requests), ``excluded``."""
    return {
        "open_flags": int(session.scalar(select(func.count(func.distinct(ReviewFlag.comparison_id)))
                                         .where(ReviewFlag.resolved_at.is_(None))) or 0),
        "waiting_for_expert": int(session.scalar(select(func.count()).select_from(RelabelRequest)
                                                 .where(RelabelRequest.done_at.is_(None))) or 0),
        "excluded": int(session.scalar(select(func.count()).select_from(Label).where(Label.excluded.is_(True))) or 0),
    }


def open_flags(session: Session, limit: int = 500) -> list[dict[str, Any]]:
    """Open flags, newest first: ``pair``, ``label`` (None: the whole pair), ``reason``, ``comment``, ``by``, ``at``."""
    rows = session.execute(
        select(ReviewFlag).where(ReviewFlag.resolved_at.is_(None)).order_by(ReviewFlag.id.desc()).limit(limit)
    ).scalars()
    return [{"pair": f.comparison_id, "label": f.label_id, "reason": f.reason.value, "comment": f.comment or "",
             "by": f.created_by, "at": f.created_at} for f in rows]


def open_relabels(session: Session, limit: int = 500) -> list[dict[str, Any]]:
    """Pairs waiting for an expert, oldest first: ``pair``, ``label`` (the one doubted), ``note``, ``by``, ``at``."""
    rows = session.execute(
        select(RelabelRequest).where(RelabelRequest.done_at.is_(None)).order_by(RelabelRequest.id).limit(limit)
    ).scalars()
    return [{"pair": r.comparison_id, "label": r.label_id, "note": r.note or "", "by": r.created_by,
             "at": r.created_at} for r in rows]


def excluded_labels(session: Session, limit: int = 500) -> list[dict[str, Any]]:
    """Excluded labels, newest first: ``label``, ``pair``, ``annotator``, ``source``, ``verdict``."""
    rows = session.execute(
        select(Label.id, Label.comparison_id, Annotator.name, Label.source, Label.outcome)
        .join(Annotator, Label.annotator_id == Annotator.id)
        .where(Label.excluded.is_(True)).order_by(Label.id.desc()).limit(limit)
    ).all()
    return [{"label": lid, "pair": cid, "annotator": ann, "source": Source(src).value,
             "verdict": str(getattr(out, "value", out))} for lid, cid, ann, src, out in rows]


def describe(ev: AuditEvent) -> str:
    """One line saying what an audit row records."""
    d = ev.detail or {}
    what = {
        "flag": f"flagged {'label ' + str(ev.label_id) if ev.label_id else 'pair ' + str(ev.comparison_id)}"
                f" ({d.get('reason')})" + (f": {d['comment']}" if d.get("comment") else ""),
        "resolve": f"resolved {len(d.get('flags', []))} flag(s) on pair {ev.comparison_id}",
        "exclude": f"excluded label {ev.label_id} from training",
        "include": f"included label {ev.label_id} in training again",
        "relabel": f"asked an expert to relabel pair {ev.comparison_id}",
        "relabelled": f"relabelled pair {ev.comparison_id} (label {ev.label_id})",
        "supersede": f"changed their verdict on pair {ev.comparison_id} from {d.get('from')} to {d.get('to')} "
                     f"(label {ev.label_id} replaces label {d.get('replaces')})",
        "tier": f"changed the tier from {d.get('from')} to {d.get('to')}"
                + (f", re-tagging {d.get('retagged', 0)} earlier label(s)" if d.get("retag") else
                   ", earlier labels kept their tier"),
        "add": f"added the annotator as {d.get('tier')}",
        "invite": "created a personal link",
        "revoke": "revoked the personal link",
        "join": f"joined campaign {d.get('campaign')} as a crowd worker",
        "campaign_open": f"opened campaign {d.get('campaign')}",
        "campaign_close": f"closed campaign {d.get('campaign')}",
    }.get(ev.action, ev.action)
    if ev.action in ("exclude", "include") and d.get("reason"):
        what += f" ({d['reason']})"
    return what


def _events(session: Session, where: list[ColumnElement[bool]], limit: int) -> list[dict[str, Any]]:
    rows = list(session.scalars(select(AuditEvent).where(*where).order_by(AuditEvent.id.desc()).limit(limit)))
    ids = {ev.annotator_id for ev in rows if ev.annotator_id is not None}
    names = dict(session.execute(select(Annotator.id, Annotator.name).where(Annotator.id.in_(ids))).all()) if ids else {}
    return [{"at": ev.created_at, "who": ev.actor, "what": describe(ev), "label": ev.label_id, "pair": ev.comparison_id,
             "annotator": names.get(ev.annotator_id) if ev.annotator_id else None} for ev in rows]


def history(session: Session, *, label_id: int | None = None, comparison_id: int | None = None,
            annotator_id: int | None = None, limit: int = 200) -> list[dict[str, Any]]:
    """Audit rows about a label (and the pair-wide actions on its pair), a pair, or an annotator; newest first."""
    conds: list[ColumnElement[bool]] = []
    if label_id is not None:
        label = session.get(Label, label_id)
        conds.append(AuditEvent.label_id == label_id)
        if label is not None:
            conds.append((AuditEvent.comparison_id == label.comparison_id) & AuditEvent.label_id.is_(None))
    if comparison_id is not None:
        conds.append(AuditEvent.comparison_id == comparison_id)
    if annotator_id is not None:
        conds.append(AuditEvent.annotator_id == annotator_id)
    if not conds:
        raise ValueError("history needs a label, a pair or an annotator")
    return _events(session, [or_(*conds)], limit)


def recent_actions(session: Session, limit: int = 100) -> list[dict[str, Any]]:
    """The newest audit rows, newest first."""
    return _events(session, [], limit)
