"""Labeling guidelines: the Markdown instructions researchers write for labelers (the ``label_guidelines`` app
setting). Each save is a new revision, so the Label page can show a labeler what changed since they last read it.
Clear guidelines are what consistent labels, and so agreement between annotators, start from. No torch, no
streamlit."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy.orm import Session

from db.models import AppSetting, utcnow
from db.policy import get_setting, set_setting

KEY = "label_guidelines"
MAX_CHARS = 20_000


@dataclass(frozen=True)
class Guidelines:
    """One revision: ``text`` (Markdown; empty when cleared), ``revision`` (1, 2, ...), ``updated_at`` (ISO UTC) and
    ``updated_by`` (who saved it, when known)."""

    text: str
    revision: int
    updated_at: str
    updated_by: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def get_guidelines(session: Session) -> Guidelines | None:
    """The current guidelines, or None when none were ever written."""
    value = get_setting(session, KEY)
    if not isinstance(value, dict) or "revision" not in value:
        return None
    return Guidelines(str(value.get("text") or ""), int(value["revision"]), str(value.get("updated_at") or ""),
                      value.get("updated_by"))


def guidelines_extra(session: Session) -> dict[str, int]:
    """``{"guidelines": revision}`` for a label's ``extra`` when guidelines are in force (empty otherwise)."""
    g = get_guidelines(session)
    return {"guidelines": g.revision} if g is not None and g.text else {}


def set_guidelines(session: Session, text: str, *, by: str | None = None) -> Guidelines:
    """Store ``text`` as the next revision (an empty text clears them, as a revision of its own); returns it.
    Raises ``ValueError`` above :data:`MAX_CHARS` characters."""
    text = (text or "").strip()
    if len(text) > MAX_CHARS:
        raise ValueError(f"guidelines are {len(text):,} characters; at most {MAX_CHARS:,} fit")
    # two saves at once must not both become revision n + 1: lock the row (SQLite's write transactions are
    # serialised already, BEGIN IMMEDIATE)
    session.get(AppSetting, KEY, with_for_update=True, populate_existing=True)
    current = get_guidelines(session)
    g = Guidelines(text, (current.revision if current else 0) + 1, utcnow().isoformat(timespec="seconds"), by)
    set_setting(session, KEY, g.to_dict())
    return g


__all__ = ["Guidelines", "KEY", "MAX_CHARS", "get_guidelines", "guidelines_extra", "set_guidelines"]
