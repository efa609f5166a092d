"""Ranking mode's queue: which prompt (three or more responses) an annotator puts in order next, storing and
undoing rankings. The same rules as the pair queue (:mod:`db.labeling`): never the same prompt twice to one
annotator, fewest rankings first, display order drawn on the server and recorded, only the annotator's own
rankings made in the app can be undone. Every function takes an open ``Session``; the caller owns the transaction.
"""
from __future__ import annotations

import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session

from db.guidelines import guidelines_extra
from db.labeling import APP_ORIGIN, _annotator_id, _history, _own_app_row
from db.models import Prompt, Ranking, Response, Source
from db.queue_policy import QueuePolicy, load_queue_policy
from db.store import add_ranking

__all__ = ["RankingTask", "next_ranking", "ranking_task_for_prompt", "submit_ranking",
           "undo_last_ranking"]


def undo_last_ranking(session: Session, annotator: str, key: str) -> int | None:
    """Delete the ranking this browser session stored under ``key``, if it is the annotator's and made in the app;
    returns its prompt id (to show it again). Same rules as :func:`undo_last`: the key is required, imported
    rankings (``origin`` other than ``app``) are never undone from the Label page."""
    ranking = _own_app_row(session, Ranking, annotator, key)
    if ranking is None:
        return None
    pid = ranking.prompt_id
    session.delete(ranking)  # its items go with it (cascade)
    session.flush()
    return pid


@dataclass(frozen=True)
class RankingTask:
    """A prompt with three or more responses to put in order, in a server-drawn display order."""

    prompt_id: int
    prompt: str
    history: tuple[tuple[str, str], ...]
    category: str | None
    response_ids: tuple[int, ...]
    texts: tuple[str, ...]
    key: str
    shown_at: float


def next_ranking(
    session: Session,
    annotator: str | None,
    policy: QueuePolicy | None = None,
    *,
    exclude: Sequence[int] = (),
    rng: random.Random | None = None,
) -> RankingTask | None:
    """The next prompt to rank: 3+ responses, not yet ranked by this annotator, fewest rankings first."""
    policy = policy or load_queue_policy(session)
    rng = rng or random.SystemRandom()
    ann_id = _annotator_id(session, annotator)
    multi = select(Response.prompt_id.label("pid")).group_by(Response.prompt_id).having(func.count() >= 3).subquery()
    ranked = select(Ranking.prompt_id.label("pid"), func.count().label("n")).group_by(Ranking.prompt_id).subquery()
    n = func.coalesce(ranked.c.n, 0)
    q = select(multi.c.pid, n).outerjoin(ranked, ranked.c.pid == multi.c.pid)
    if ann_id is not None:
        q = q.where(~exists().where(Ranking.prompt_id == multi.c.pid, Ranking.annotator_id == ann_id))
    if exclude:
        q = q.where(multi.c.pid.not_in(list(exclude)))
    rows = session.execute(q.order_by(n, multi.c.pid).limit(policy.pool_size)).all()
    if not rows:
        return None
    fewest = rows[0][1]
    return ranking_task_for_prompt(session, rng.choice([r[0] for r in rows if r[1] == fewest]), policy, rng=rng)


def ranking_task_for_prompt(session: Session, pid: int, policy: QueuePolicy | None = None, *,
                            rng: random.Random | None = None) -> RankingTask:
    """A fresh ranking task (new key, new server-drawn display order) for prompt ``pid``."""
    policy = policy or load_queue_policy(session)
    rng = rng or random.SystemRandom()
    prompt = session.get(Prompt, pid)
    if prompt is None:
        raise ValueError(f"prompt {pid} does not exist")
    resp = list(session.execute(select(Response.id, Response.text).where(Response.prompt_id == pid)).all())
    rng.shuffle(resp)
    resp = resp[: policy.ranking_max_responses]
    return RankingTask(
        prompt_id=pid,
        prompt=prompt.text,
        history=_history(prompt.history),
        category=prompt.category,
        response_ids=tuple(r[0] for r in resp),
        texts=tuple(r[1] for r in resp),
        key=uuid.uuid4().hex,
        shown_at=time.time(),
    )


def submit_ranking(
    session: Session,
    task: RankingTask,
    order: Sequence[int],
    *,
    annotator: str,
    source: Source | str,
    now: float | None = None,
) -> tuple[Ranking, bool]:
    """Store ``order`` (the task's response ids, best first) as a ranking with the task's key."""
    order = [int(x) for x in order]
    if sorted(order) != sorted(task.response_ids):
        raise ValueError(f"the ranking must list each of the {len(task.response_ids)} shown responses exactly once")
    spent = int(max(0.0, ((now if now is not None else time.time()) - task.shown_at)) * 1000)
    return add_ranking(
        session,
        prompt_id=task.prompt_id,
        response_ids=order,
        source=source,
        annotator=annotator,
        idempotency_key=task.key,
        time_spent_ms=spent,
        origin=APP_ORIGIN,
        extra={"shown_order": list(task.response_ids), **guidelines_extra(session)},
    )
