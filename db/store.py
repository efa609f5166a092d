"""Content-addressed storage of prompts, responses, comparisons, labels and rankings.

The same prompt or response text is stored once; a label or ranking is identified by its idempotency key
(a UI submission's key, or the hash of an imported source record), so storing it twice adds nothing.
Every function takes an open write ``Session`` and never commits: the caller owns the transaction.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from db.models import (
    Annotator,
    Comparison,
    Label,
    Outcome,
    Prompt,
    Ranking,
    RankingItem,
    Response,
    Side,
    Source,
    Split,
    utcnow,
)
from db.session import dialect_insert


def sha256(data: str) -> str:
    return hashlib.sha256(data.encode("utf-8")).hexdigest()


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)


def prompt_hash(text: str, history: Sequence[dict[str, Any]] | None = None) -> str:
    return sha256(canonical_json({"history": list(history or []), "text": text}))


def _insert_ignore(session: Session, model: type, values: dict[str, Any], conflict: list[str]) -> bool:
    """INSERT ... ON CONFLICT DO NOTHING on SQLite and PostgreSQL (safe against concurrent writers).

    Returns whether a row was inserted."""
    stmt = dialect_insert(session)(model).values(**values).on_conflict_do_nothing(index_elements=conflict)
    # RETURNING, not rowcount: psycopg reports rowcount -1 for this statement, which read as "inserted" and let
    # two concurrent submissions of one label both bump comparisons.label_count on PostgreSQL.
    res = session.execute(stmt.returning(*model.__table__.primary_key.columns))
    return res.first() is not None


def get_or_create_annotator(session: Session, name: str, default_source: Source | str = Source.crowd) -> Annotator:
    name = name.strip()
    if not name:
        raise ValueError("annotator name is empty")
    found = session.scalar(select(Annotator).where(Annotator.name == name))
    if found is not None:
        return found
    _insert_ignore(session, Annotator, {"name": name, "default_source": Source(default_source), "created_at": utcnow()}, ["name"])
    return session.scalars(select(Annotator).where(Annotator.name == name)).one()


def get_or_create_prompt(
    session: Session,
    text: str,
    *,
    history: Sequence[dict[str, Any]] | None = None,
    category: str | None = None,
    tags: Sequence[str] | None = None,
) -> Prompt:
    """The prompt with this text and history; created if new. A category is filled in if it was missing."""
    h = prompt_hash(text, history)
    found = session.scalar(select(Prompt).where(Prompt.content_hash == h))
    if found is None:
        _insert_ignore(
            session,
            Prompt,
            {
                "content_hash": h,
                "text": text,
                "history": list(history) if history else None,
                "category": category,
                "tags": list(tags) if tags else None,
                "created_at": utcnow(),
            },
            ["content_hash"],
        )
        found = session.scalars(select(Prompt).where(Prompt.content_hash == h)).one()
    elif category and not found.category:
        found.category = category
    return found


def get_or_create_response(session: Session, prompt: Prompt | int, text: str, model: str | None = None) -> Response:
    prompt_id = prompt if isinstance(prompt, int) else prompt.id
    h = sha256(text)
    q = select(Response).where(Response.prompt_id == prompt_id, Response.content_hash == h)
    found = session.scalar(q)
    if found is None:
        _insert_ignore(
            session,
            Response,
            {"prompt_id": prompt_id, "content_hash": h, "text": text, "model": model, "created_at": utcnow()},
            ["prompt_id", "content_hash"],
        )
        found = session.scalars(q).one()
    elif model and not found.model:
        found.model = model
    return found


@dataclass(frozen=True)
class OrientedComparison:
    """A stored comparison plus whether the caller's (first, second) order is the stored (a, b) order."""

    comparison: Comparison
    swapped: bool

    def to_stored(self, side: str) -> Side:
        """Translate the caller's ``a``/``b`` (first/second) into the stored comparison's side."""
        s = Side(side)
        return (Side.b if s is Side.a else Side.a) if self.swapped else s

    def outcome_to_stored(self, outcome: Outcome | str) -> Outcome:
        o = Outcome(outcome)
        if o in (Outcome.a, Outcome.b):
            return Outcome(self.to_stored(o.value).value)
        return o


def get_or_create_comparison(session: Session, first: Response, second: Response) -> OrientedComparison:
    """The comparison of two responses to one prompt, stored once per unordered pair."""
    if first.id == second.id:
        raise ValueError("a comparison needs two different responses")
    if first.prompt_id != second.prompt_id:
        raise ValueError("both responses of a comparison must answer the same prompt")
    a, b = (first, second) if first.id < second.id else (second, first)
    q = select(Comparison).where(Comparison.response_a_id == a.id, Comparison.response_b_id == b.id)
    found = session.scalar(q)
    if found is None:
        _insert_ignore(
            session,
            Comparison,
            {"prompt_id": a.prompt_id, "response_a_id": a.id, "response_b_id": b.id, "label_count": 0, "created_at": utcnow()},
            ["response_a_id", "response_b_id"],
        )
        found = session.scalars(q).one()
    return OrientedComparison(found, swapped=first.id != a.id)


def add_label(
    session: Session,
    *,
    comparison_id: int,
    outcome: Outcome | str,
    source: Source | str,
    annotator: Annotator | str,
    idempotency_key: str,
    left: Side | str | None = None,
    strength: int | None = None,
    time_spent_ms: int | None = None,
    split: Split | str = Split.train,
    origin: str | None = None,
    extra: dict[str, Any] | None = None,
) -> tuple[Label, bool]:
    """Store one label; returns ``(label, created)``. A second call with the same key returns the first label.

    ``outcome`` and ``left`` are relative to the stored comparison's ``a``/``b``.
    """
    if not idempotency_key:
        raise ValueError("idempotency_key is required")
    if strength is not None and strength not in (1, 2):
        raise ValueError(f"strength must be 1 (slightly) or 2 (clearly), got {strength!r}")
    if isinstance(annotator, str):
        annotator = get_or_create_annotator(session, annotator, source)
    existing = session.scalar(select(Label).where(Label.idempotency_key == idempotency_key))
    if existing is not None:
        return existing, False
    values = {
        "comparison_id": comparison_id,
        "outcome": Outcome(outcome),
        "strength": strength,
        "source": Source(source),
        "annotator_id": annotator.id,
        "left": Side(left) if left is not None else None,
        "time_spent_ms": time_spent_ms,
        "split": Split(split),
        "idempotency_key": idempotency_key,
        "origin": origin,
        "extra": extra or None,
        "created_at": utcnow(),
    }
    created = _insert_ignore(session, Label, values, ["idempotency_key"])
    if created:
        session.execute(
            update(Comparison).where(Comparison.id == comparison_id).values(label_count=Comparison.label_count + 1)
        )
    label = session.scalars(select(Label).where(Label.idempotency_key == idempotency_key)).one()
    return label, created


def delete_label(session: Session, label: Label) -> None:
    session.execute(update(Comparison).where(Comparison.id == label.comparison_id).values(label_count=Comparison.label_count - 1))
    session.delete(label)


def undo_label(session: Session, annotator_name: str, idempotency_key: str) -> Label | None:
    """Delete the label stored under ``idempotency_key`` if ``annotator_name`` made it; returns it, or None.

    The key names the label (the caller passes a key it stored itself), the name only confirms it is theirs: knowing
    someone's name never lets anyone delete their labels."""
    if not idempotency_key:
        return None
    label = session.scalar(
        select(Label).join(Annotator, Label.annotator_id == Annotator.id)
        .where(Label.idempotency_key == idempotency_key, Annotator.name == (annotator_name or "").strip())
    )
    if label is not None:
        delete_label(session, label)
    return label


def add_ranking(
    session: Session,
    *,
    prompt_id: int,
    response_ids: Sequence[int],
    source: Source | str,
    annotator: Annotator | str,
    idempotency_key: str,
    ranks: Sequence[int] | None = None,
    split: Split | str = Split.train,
    time_spent_ms: int | None = None,
    origin: str | None = None,
    extra: dict[str, Any] | None = None,
) -> tuple[Ranking, bool]:
    """Store an ordering of responses (best first). ``ranks`` (1 = best, repeats = ties) defaults to 1..K."""
    ids = list(response_ids)
    if len(ids) < 2:
        raise ValueError("a ranking needs at least two responses")
    if len(set(ids)) != len(ids):
        raise ValueError("a ranking lists each response once")
    ranks = list(ranks) if ranks is not None else list(range(1, len(ids) + 1))
    if len(ranks) != len(ids):
        raise ValueError("ranks and responses differ in length")
    if isinstance(annotator, str):
        annotator = get_or_create_annotator(session, annotator, source)
    existing = session.scalar(select(Ranking).where(Ranking.idempotency_key == idempotency_key))
    if existing is not None:
        return existing, False
    ranking = Ranking(
        prompt_id=prompt_id,
        source=Source(source),
        annotator_id=annotator.id,
        split=Split(split),
        idempotency_key=idempotency_key,
        time_spent_ms=time_spent_ms,
        origin=origin,
        extra=extra or None,
    )
    ranking.items = [RankingItem(response_id=r, position=i, rank=int(k)) for i, (r, k) in enumerate(zip(ids, ranks))]
    session.add(ranking)
    session.flush()
    return ranking, True


def all_pairs(items: Iterable[int]) -> list[tuple[int, int]]:
    xs = list(items)
    return [(xs[i], xs[j]) for i in range(len(xs)) for j in range(i + 1, len(xs))]
