"""The labeling queue: which pair an annotator sees next, and their progress (rankings: :mod:`db.ranking_queue`).

Queue policy (:class:`~db.queue_policy.QueuePolicy`, stored as the ``queue_policy`` app setting, set by
researchers; re-exported here):

1. **Fewest labels first, up to a target overlap**: comparisons with ``label_count < target_overlap`` come
   first (ordered by ``label_count``); once every pair has reached it, a deterministic share of the pairs
   (``agreement_share``, chosen by a hash of the comparison id) is labelled up to ``agreement_overlap``
   annotators, for inter-annotator agreement.
2. **Never the same pair twice to one annotator** (``NOT EXISTS`` on their labels), and pairs the annotator
   skipped in this session are left out, as are pairs with an open review flag (:mod:`db.review`).
   Experts are first offered the pairs a researcher sent for an expert's relabel.
3. **Active learning** (``active_learning=True``): among the eligible pairs with the fewest labels, prefer
   those the newest scored model version is least sure about: ``|sigmoid(s_a - s_b) - 0.5|`` small, with a
   bonus for a large ensemble ``std`` (cached :class:`~db.models.ResponseScore` rows).

Within the best candidates one is drawn at random, so two annotators working at once rarely get the same pair.
Which response is shown on the left is drawn here on the server, and recorded with the label.
Every function takes an open ``Session``; the caller owns the transaction. No torch, no streamlit.
"""
from __future__ import annotations

import math
import random
import statistics
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from datetime import time as dtime
from typing import Any

from sqlalchemy import and_, exists, func, select, update
from sqlalchemy.orm import Session

from db import review
from db.guidelines import guidelines_extra
from db.models import (
    Annotator,
    Comparison,
    Label,
    Outcome,
    Prompt,
    Ranking,
    Response,
    ResponseScore,
    Side,
    Source,
)
from db.queue_policy import (  # re-exported: the queue's public API lives here
    QUEUE_POLICY_KEY,
    QueuePolicy,
    bucket_sql,
    in_agreement_share,
    load_queue_policy,
    phase_conditions,
    save_queue_policy,
)
from db.store import add_label, delete_label

CHOICES = ("left", "right", "tie", "both_bad")
APP_ORIGIN = "app"  # ``origin`` of labels and rankings made on the Label page
CONTROL = "control pair"  # queue reason of a pair an expert labelled, served to measure the annotator
RELABEL = "expert relabel"  # queue reason of a pair a researcher sent to an expert
SUPERSEDES = "supersedes"  # key, in a changed verdict's ``extra``, of the id of the label it replaced

__all__ = [
    "APP_ORIGIN", "CHOICES", "CONTROL", "QUEUE_POLICY_KEY", "RELABEL", "Progress", "QueueItem", "QueuePolicy", "annotator_progress",
    "bucket_sql", "choice_of", "choice_to_outcome", "count_control_pairs", "count_rankable_prompts", "dataset_is_empty", "in_agreement_share",
    "item_for_comparison", "latest_scored_version", "load_queue_policy", "next_pair", "outcome_of", "pairs_left",
    "phase_conditions", "save_queue_policy", "submit_label", "uncertainty", "undo_last",
]


# ----------------------------------------------------------------------------------------------- pairs


@dataclass(frozen=True)
class QueueItem:
    """One comparison as shown to one annotator.

    ``left`` is the stored comparison side shown on the left; ``key`` is the idempotency key of this showing
    (a double click submits the same key twice and stores one label); ``shown_at`` is ``time.time()``.
    """

    comparison_id: int
    prompt_id: int
    prompt: str
    history: tuple[tuple[str, str], ...]
    category: str | None
    left: Side
    left_response_id: int
    right_response_id: int
    left_text: str
    right_text: str
    label_count: int
    key: str
    shown_at: float
    reason: str = "fewest labels"
    n_responses: int = 2


def _annotator_id(session: Session, name: str | None) -> int | None:
    if not name:
        return None
    return session.scalar(select(Annotator.id).where(Annotator.name == name.strip()))


def _is_expert(session: Session, ann_id: int | None) -> bool:
    return ann_id is not None and session.scalar(select(Annotator.default_source).where(Annotator.id == ann_id)) \
        is Source.expert


def _not_labelled_by(ann_id: int | None) -> list[Any]:
    if ann_id is None:
        return []
    return [~exists().where(Label.comparison_id == Comparison.id, Label.annotator_id == ann_id)]


def _has_expert_label() -> Any:
    return exists().where(Label.comparison_id == Comparison.id, Label.source == Source.expert,
                          Label.excluded.is_(False))


def _candidates(
    session: Session, where: list[Any], ann_id: int | None, exclude: Sequence[int], limit: int
) -> list[tuple[int, int, int, int]]:
    q = select(Comparison.id, Comparison.label_count, Comparison.response_a_id, Comparison.response_b_id).where(
        *where, *_not_labelled_by(ann_id), ~review.has_open_flag()
    )
    if exclude:
        q = q.where(Comparison.id.not_in(list(exclude)))
    rows = session.execute(q.order_by(Comparison.label_count, Comparison.id).limit(limit)).all()
    return [tuple(r) for r in rows]  # type: ignore[misc]


def latest_scored_version(session: Session) -> int | None:
    """The newest model version with cached response scores (the active-learning signal), or None."""
    return session.scalar(select(func.max(ResponseScore.model_version_id)))


def uncertainty(score_a: float, score_b: float, std_a: float | None = None, std_b: float | None = None) -> float:
    """How unsure the model is about a pair: 0.5 - |p - 0.5| with ``p = sigmoid(s_a - s_b)``, plus the ensemble
    spread ``sqrt(std_a^2 + std_b^2) / 4`` (capped at 0.5). Larger = less sure."""
    d = max(-60.0, min(60.0, score_a - score_b))
    p = 1.0 / (1.0 + math.exp(-d))
    spread = math.sqrt((std_a or 0.0) ** 2 + (std_b or 0.0) ** 2) / 4.0
    return (0.5 - abs(p - 0.5)) + min(0.5, spread)


def _rank_by_uncertainty(
    session: Session, cands: list[tuple[int, int, int, int]], version_id: int
) -> list[tuple[float, tuple[int, int, int, int]]]:
    ids = {c[2] for c in cands} | {c[3] for c in cands}
    scores = {
        r.response_id: (r.score, r.std)
        for r in session.execute(
            select(ResponseScore.response_id, ResponseScore.score, ResponseScore.std).where(
                ResponseScore.model_version_id == version_id, ResponseScore.response_id.in_(ids)
            )
        )
    }
    ranked = []
    for c in cands:
        sa, sb = scores.get(c[2]), scores.get(c[3])
        if sa is None or sb is None:
            continue
        ranked.append((uncertainty(sa[0], sb[0], sa[1], sb[1]), c))
    ranked.sort(key=lambda t: (-t[0], t[1][0]))
    return ranked


def next_pair(
    session: Session,
    annotator: str | None,
    policy: QueuePolicy | None = None,
    *,
    exclude: Sequence[int] = (),
    rng: random.Random | None = None,
) -> QueueItem | None:
    """The next comparison for ``annotator`` under ``policy`` (loaded from the database when None).

    An expert is first offered the pairs waiting for an expert's relabel (reason :data:`RELABEL`). With
    ``policy.control_share``, that share of the calls first offers a pair an expert labelled and the annotator did
    not (reason :data:`CONTROL`; the Label page shows it like any other pair). Pairs with an open review flag are
    never offered.

    Returns None when the annotator has nothing left to label. ``exclude`` lists comparison ids to leave out
    (e.g. the ones skipped in this session).
    """
    policy = policy or load_queue_policy(session)
    rng = rng or random.SystemRandom()
    ann_id = _annotator_id(session, annotator)
    if _is_expert(session, ann_id):
        cands = _candidates(session, [review.has_open_relabel()], ann_id, exclude, policy.pool_size)
        if cands:
            return _build_item(session, rng.choice(cands), rng, RELABEL)
    if policy.control_share > 0 and rng.random() < policy.control_share:
        cands = _candidates(session, [_has_expert_label()], ann_id, exclude, policy.pool_size)
        if cands:
            return _build_item(session, rng.choice(cands), rng, CONTROL)
    limit = max(policy.pool_size, 200 if policy.active_learning else 0)
    for where in phase_conditions(policy):
        cands = _candidates(session, where, ann_id, exclude, limit)
        if not cands:
            continue
        fewest = cands[0][1]
        cands = [c for c in cands if c[1] == fewest]
        reason = "fewest labels" if fewest < policy.target_overlap else "agreement overlap"
        if policy.active_learning:
            version = latest_scored_version(session)
            ranked = _rank_by_uncertainty(session, cands, version) if version is not None else []
            if ranked:
                top = [c for _, c in ranked[: max(1, min(5, policy.pool_size))]]
                return _build_item(session, rng.choice(top), rng, "model unsure")
        return _build_item(session, rng.choice(cands[: policy.pool_size]), rng, reason)
    return None


def _history(raw: Any) -> tuple[tuple[str, str], ...]:
    out = []
    for turn in raw or []:
        if isinstance(turn, dict):
            out.append((str(turn.get("role", "user")), str(turn.get("content", ""))))
    return tuple(out)


def _build_item(session: Session, cand: tuple[int, int, int, int], rng: random.Random, reason: str,
                left: Side | None = None) -> QueueItem:
    cid, count, a_id, b_id = cand
    comp = session.get(Comparison, cid)
    if comp is None:
        raise LookupError(f"comparison {cid} does not exist")
    prompt = session.get(Prompt, comp.prompt_id)
    texts = dict(session.execute(select(Response.id, Response.text).where(Response.id.in_([a_id, b_id]))).all())
    n_resp = session.scalar(select(func.count()).select_from(Response).where(Response.prompt_id == comp.prompt_id))
    if left is None:
        left = Side.a if rng.random() < 0.5 else Side.b
    lid, rid = (a_id, b_id) if left is Side.a else (b_id, a_id)
    assert prompt is not None
    return QueueItem(
        comparison_id=cid,
        prompt_id=prompt.id,
        prompt=prompt.text,
        history=_history(prompt.history),
        category=prompt.category,
        left=left,
        left_response_id=lid,
        right_response_id=rid,
        left_text=texts[lid],
        right_text=texts[rid],
        label_count=count,
        key=uuid.uuid4().hex,
        shown_at=time.time(),
        reason=reason,
        n_responses=int(n_resp or 2),
    )


def item_for_comparison(session: Session, comparison_id: int, rng: random.Random | None = None, *,
                        left: Side | None = None) -> QueueItem:
    """Show a given comparison again (e.g. after an undo), with a fresh key; ``left``: the side to show on the left
    (None: a fresh draw)."""
    comp = session.get(Comparison, comparison_id)
    if comp is None:
        raise LookupError(f"comparison {comparison_id} does not exist")
    cand = (comp.id, comp.label_count, comp.response_a_id, comp.response_b_id)
    return _build_item(session, cand, rng or random.SystemRandom(), "undone", left)


def choice_to_outcome(item: QueueItem, choice: str) -> Outcome:
    """Translate what the annotator clicked (``left``/``right``/``tie``/``both_bad``) into the stored outcome."""
    return outcome_of(item.left, choice)


def outcome_of(left: Side, choice: str) -> Outcome:
    """The stored outcome of ``choice`` (``left``/``right``/``tie``/``both_bad``) when side ``left`` was shown on the
    left."""
    if choice not in CHOICES:
        raise ValueError(f"choice must be one of {', '.join(CHOICES)}, got {choice!r}")
    if choice == "left":
        return Outcome(left.value)
    if choice == "right":
        return Outcome.b if left is Side.a else Outcome.a
    return Outcome(choice)


def choice_of(left: Side, outcome: Outcome) -> str:
    """What the annotator clicked to store ``outcome`` with side ``left`` on the left (inverse of :func:`outcome_of`)."""
    if outcome in (Outcome.a, Outcome.b):
        return "left" if outcome.value == left.value else "right"
    return outcome.value


def submit_label(
    session: Session,
    item: QueueItem,
    choice: str,
    *,
    annotator: str | Annotator,
    source: Source | str | None = None,
    strength: int | None = None,
    now: float | None = None,
) -> tuple[Label, bool]:
    """Store the annotator's verdict on ``item`` with its key; returns ``(label, created)``.

    ``source`` None (the app): the annotator's tier on record, read in this transaction (the annotator must exist).
    The time spent is ``now - item.shown_at``; ``strength`` (1 slightly, 2 clearly) only applies to a
    preference, not to a tie or both-bad. ``extra`` records the queue phase and the labeling guidelines' revision
    in force (``db/guidelines.py``), so labels made under older guidelines can be told apart. An expert's label
    answers the pair's open relabel requests.
    """
    if source is None:
        if isinstance(annotator, str):
            found = session.scalar(select(Annotator).where(Annotator.name == annotator.strip()))
            if found is None:
                raise LookupError(f"no annotator named {annotator!r}")
            annotator = found
        source = Source(annotator.default_source)
    outcome = choice_to_outcome(item, choice)
    spent = int(max(0.0, ((now if now is not None else time.time()) - item.shown_at)) * 1000)
    label, created = add_label(
        session,
        comparison_id=item.comparison_id,
        outcome=outcome,
        source=source,
        annotator=annotator,
        idempotency_key=item.key,
        left=item.left,
        strength=strength if outcome in (Outcome.a, Outcome.b) else None,
        time_spent_ms=spent,
        origin=APP_ORIGIN,
        extra={"queue": item.reason, **guidelines_extra(session)},
    )
    if created and Source(label.source) is Source.expert:
        review.complete_relabels(session, label, label.annotator.name)
    return label, created


def undo_last(session: Session, annotator: str, key: str) -> int | None:
    """Delete the label this browser session stored under ``key``, if it is the annotator's and was made in the app;
    returns its comparison id (to show it again), None when there is no such label.

    The key is required: the page passes only the keys its own session stored, newest first, so an undo never
    reaches a label made elsewhere, whoever's name the session carries. Imported labels (``origin`` other than
    ``app``) are never undone from the Label page, nor a label whose verdict was changed since (it is kept, superseded,
    for the record); undoing a changed verdict's new label brings the one it replaced back into use.
    """
    label = _own_app_row(session, Label, annotator, key)
    if label is None or label.superseded_by_id is not None:
        return None
    cid = label.comparison_id
    restore_superseded(session, label)
    delete_label(session, label)
    return cid


def restore_superseded(session: Session, label: Label) -> int | None:
    """Before ``label`` is deleted: the label it superseded (a verdict its annotator changed into ``label``) is current
    again and counts on its pair again; returns that label's id, None when ``label`` replaced none."""
    old_id = (label.extra or {}).get(SUPERSEDES)
    old = session.get(Label, old_id) if isinstance(old_id, int) else None
    if old is None or old.superseded_by_id != label.id:
        return None
    old.superseded_by_id = None
    session.execute(update(Comparison).where(Comparison.id == old.comparison_id)
                    .values(label_count=Comparison.label_count + 1))
    return old.id


def _own_app_row(session: Session, model: type[Label] | type[Ranking], annotator: str, key: str) -> Any:
    """The annotator's label/ranking made in the app under ``key``; None if there is none."""
    ann_id = _annotator_id(session, annotator)
    if ann_id is None or not key:
        return None
    return session.scalar(select(model).where(model.annotator_id == ann_id, model.origin == APP_ORIGIN,
                                              model.idempotency_key == key))


# ----------------------------------------------------------------------------------------------- progress


@dataclass(frozen=True)
class Progress:
    """An annotator's progress: labels (and rankings) since UTC midnight, pairs still needing labels under the
    policy (for everyone), the median seconds per label over the annotator's last ``window`` labels, and their
    labels (and rankings) of all time."""

    labels_today: int
    rankings_today: int
    pairs_left: int
    median_seconds: float | None
    total_labels: int
    total_rankings: int = 0


def pairs_left(session: Session, policy: QueuePolicy) -> int:
    """How many comparisons still need a label under ``policy`` (both phases)."""
    n = session.scalar(select(func.count()).select_from(Comparison).where(Comparison.label_count < policy.target_overlap))
    total = int(n or 0)
    if policy.has_agreement_phase:
        m = session.scalar(
            select(func.count())
            .select_from(Comparison)
            .where(
                and_(
                    Comparison.label_count >= policy.target_overlap,
                    Comparison.label_count < policy.agreement_overlap,
                    bucket_sql() < policy.agreement_percent,
                )
            )
        )
        total += int(m or 0)
    return total


def annotator_progress(session: Session, annotator: str, policy: QueuePolicy | None = None, *, window: int = 200) -> Progress:
    """Progress of one annotator (see :class:`Progress`)."""
    policy = policy or load_queue_policy(session)
    left = pairs_left(session, policy)
    ann_id = _annotator_id(session, annotator)
    if ann_id is None:
        return Progress(0, 0, left, None, 0)
    midnight = datetime.combine(datetime.now(timezone.utc).date(), dtime(0), tzinfo=timezone.utc)
    today = session.scalar(
        select(func.count()).select_from(Label).where(Label.annotator_id == ann_id, Label.created_at >= midnight)
    )
    rtoday = session.scalar(
        select(func.count()).select_from(Ranking).where(Ranking.annotator_id == ann_id, Ranking.created_at >= midnight)
    )
    total = session.scalar(select(func.count()).select_from(Label).where(Label.annotator_id == ann_id))
    rtotal = session.scalar(select(func.count()).select_from(Ranking).where(Ranking.annotator_id == ann_id))
    times = [
        t
        for t in session.scalars(
            select(Label.time_spent_ms)
            .where(Label.annotator_id == ann_id)
            .order_by(Label.created_at.desc())
            .limit(window)
        )
        if t is not None
    ]
    med = statistics.median(times) / 1000.0 if times else None
    return Progress(int(today or 0), int(rtoday or 0), left, med, int(total or 0), int(rtotal or 0))


def count_control_pairs(session: Session) -> int:
    """Pairs an expert labelled: what control pairs (``QueuePolicy.control_share``) are drawn from."""
    return int(session.scalar(select(func.count()).select_from(Comparison).where(_has_expert_label())) or 0)


def count_rankable_prompts(session: Session) -> int:
    """Prompts with at least three responses (the ones ranking mode can show)."""
    sub = select(Response.prompt_id).group_by(Response.prompt_id).having(func.count() >= 3).subquery()
    return int(session.scalar(select(func.count()).select_from(sub)) or 0)


def dataset_is_empty(session: Session) -> bool:
    """True when there is nothing at all to label (no comparisons and no prompts with 3+ responses)."""
    if session.scalar(select(Comparison.id).limit(1)) is not None:
        return False
    return count_rankable_prompts(session) == 0
