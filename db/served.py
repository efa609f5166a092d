"""Prompts the reward server scored responses to (``rmstudio reward-server``): what an RL policy is really asked,
kept so that the Dashboard's Coverage tab can check them against the labelled prompts (a reward model is only
trustworthy on the prompt distribution its labels cover). One row per distinct prompt text, with how many
responses to it were scored. No torch, no streamlit."""
from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from db.models import ServedPrompt, utcnow
from db.session import dialect_insert

MAX_PROMPT_CHARS = 20_000  # longer prompts are kept cut (coverage compares their start)


def record_served(session: Session, prompts: Sequence[str], now: datetime | None = None) -> int:
    """Count one more scored response for each of ``prompts`` (insert or add, safe against concurrent servers);
    returns the number of distinct prompts written."""
    now = now or utcnow()
    counts = Counter(p[:MAX_PROMPT_CHARS] for p in prompts if isinstance(p, str) and p.strip())
    if not counts:
        return 0
    rows = sorted(({"hash": hashlib.sha256(p.encode("utf-8")).hexdigest(), "text": p, "count": n,
                    "first_seen": now, "last_seen": now} for p, n in counts.items()), key=lambda r: r["hash"])
    stmt = dialect_insert(session)(ServedPrompt)  # sorted rows: concurrent upserts lock in one order
    stmt = stmt.on_conflict_do_update(index_elements=[ServedPrompt.hash],
                                      set_={"count": ServedPrompt.count + stmt.excluded.count,
                                            "last_seen": stmt.excluded.last_seen})
    session.execute(stmt, rows)
    return len(rows)


def served_prompts(session: Session, limit: int = 5000) -> list[str]:
    """The distinct served prompts, most recently served first (at most ``limit``)."""
    return list(session.scalars(select(ServedPrompt.text).order_by(ServedPrompt.last_seen.desc(),
                                                                   ServedPrompt.hash).limit(limit)))


def served_summary(session: Session) -> dict[str, Any]:
    """``prompts`` (distinct), ``responses`` (scored) and ``last_seen`` (ISO time or None)."""
    n, total, last = session.execute(
        select(func.count(), func.coalesce(func.sum(ServedPrompt.count), 0), func.max(ServedPrompt.last_seen))
    ).one()
    return {"prompts": int(n), "responses": int(total), "last_seen": last.isoformat() if last else None}


def clear_served(session: Session) -> int:
    """Forget every served prompt; returns how many rows were removed."""
    return session.execute(delete(ServedPrompt)).rowcount or 0
