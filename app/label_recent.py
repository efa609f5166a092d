"""The Label page's "My recent labels": step back (key B) and forward (N) through the labeler's own last labels, see
each pair as they saw it with their verdict, and change it (keys 1-4, strength Q/W); Esc goes back to the queue.

A change is stored by ``db.label_history.change_label``: a new label that supersedes the old one, audited. The list
is read once when the labeler steps back (one query); stepping through it reads nothing more.
"""
from __future__ import annotations

import dataclasses
import uuid

import streamlit as st

from app.identity import Identity
from app.label_session import ERROR, NOTICE, RECENT, RECENT_AT, STRENGTHS, VERDICTS, fail
from app.resources import database
from db.annotators import active_annotator
from db.label_history import ChangeRefused, RecentLabel, change_label, recent_labels
from db.models import Outcome

CHANGE_KEYS = "lbl_change_keys"  # label id -> the idempotency key of its change (a double press stores one)
STRENGTH_NAMES = {v: k for k, v in STRENGTHS.items()}


def showing() -> RecentLabel | None:
    """The recent label on screen, None when the labeler is at the queue."""
    at, recent = st.session_state.get(RECENT_AT), st.session_state.get(RECENT) or []
    return recent[at] if at is not None and 0 <= at < len(recent) else None


def position() -> tuple[int, int]:
    """``(n, of)``: the label on screen is the labeler's n-th newest of the ``of`` listed."""
    return int(st.session_state.get(RECENT_AT) or 0) + 1, len(st.session_state.get(RECENT) or [])


def strength_key(rec: RecentLabel) -> str:
    """Session key of the strength chosen for the change of ``rec`` (starts as the stored one)."""
    key = f"strength_r{rec.label_id}"
    if key not in st.session_state:
        st.session_state[key] = STRENGTH_NAMES.get(rec.strength or 0)
    return key


def on_back(ident: Identity) -> None:
    """One label further back (the newest first, read from the database when stepping back from the queue)."""
    at = st.session_state.get(RECENT_AT)
    if at is None:
        try:
            with database().read() as s:
                st.session_state[RECENT] = recent_labels(s, ident.annotator_id)
        except Exception as exc:  # noqa: BLE001
            fail(exc)
            return
        if not st.session_state[RECENT]:
            st.session_state[NOTICE] = "You have no labels to go back to yet"
            return
        st.session_state[RECENT_AT] = 0
    else:
        st.session_state[RECENT_AT] = min(at + 1, len(st.session_state.get(RECENT) or []) - 1)
    st.session_state.pop(ERROR, None)


def on_forward() -> None:
    """One label forward; past the newest, back to the queue."""
    at = st.session_state.get(RECENT_AT)
    if at is not None:
        st.session_state[RECENT_AT] = at - 1 if at > 0 else None


def on_leave() -> None:
    """Back to the queue, where the labeler left it."""
    st.session_state[RECENT_AT] = None
    st.session_state.pop(ERROR, None)


def on_change(choice: str, rec: RecentLabel, ident: Identity) -> None:
    """Store ``choice`` (with the strength chosen) as the new verdict of ``rec``: a new label superseding it."""
    strength = STRENGTHS.get(st.session_state.get(strength_key(rec)) or "")
    keys: dict[int, str] = st.session_state.setdefault(CHANGE_KEYS, {})
    key = keys.setdefault(rec.label_id, uuid.uuid4().hex)
    try:
        with database().write() as s:
            new, _ = change_label(s, rec.label_id, choice, annotator=active_annotator(s, ident.annotator_id),
                                  key=key, strength=strength)
            changed = dataclasses.replace(rec, label_id=new.id, outcome=Outcome(new.outcome), strength=new.strength,
                                          created_at=new.created_at, changed=True)
    except ChangeRefused as exc:
        st.session_state[ERROR] = f"Not changed: {exc}."
        return
    except Exception as exc:  # noqa: BLE001
        fail(exc)
        return
    recent: list[RecentLabel] = st.session_state[RECENT]
    recent[:] = [changed if r.label_id == rec.label_id else r for r in recent]
    st.session_state.pop(ERROR, None)
    st.session_state[NOTICE] = f"Changed to {VERDICTS[choice]}"
