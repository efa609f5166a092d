"""Session state and button callbacks of the Label page's pair mode (Streamlit glue; the queue itself is
``db.labeling``; ranking mode: ``app/rank_session.py``; stepping back through one's labels: ``app/label_recent.py``).

Each shown pair carries its own idempotency key, and its verdict buttons' widget keys contain that key: a key
pressed twice, or a click on a stale button, either reaches no widget (ignored) or calls back with the *old* item,
whose key is already saved (ignored here, and ``add_label`` is idempotent by key anyway), so a verdict only ever
goes to a pair on screen. The other buttons keep their keys across pairs (the browser then keeps them instead of
building them again); for them a stale press is harmless.

The next pair is drawn while the labeler reads the current one (``prefetch``, started once the labeling area is
drawn), so a verdict's callback only stores the label and swaps the prepared pair in: the rerun that follows is the
labeling area's alone (``st.fragment``) and has nothing to query. The progress line counts this session's labels on top of
the figures read when the page was loaded, without a query per verdict.
"""
from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import streamlit as st

from app.identity import Identity
from app.resources import database
from db import review
from db.annotators import LinkError, active_annotator
from db.guidelines import Guidelines, get_guidelines
from db.labeling import (
    QueueItem,
    annotator_progress,
    load_queue_policy,
    next_pair,
    submit_label,
    undo_last,
)
from db.session import explain_db_error

ITEM, TASK, SKIPPED, RSKIPPED, DONE, NOTICE, ERROR, STACK = (
    "lbl_item", "lbl_task", "lbl_skipped", "lbl_rskipped", "lbl_done", "lbl_notice", "lbl_error", "lbl_stack"
)
NEXT = "lbl_next"  # the pair prepared to follow the one on screen (Prepared)
RSTACK = "lbl_rstack"  # the rankings this session stored, newest last (what Undo takes back)
GUIDE_SEEN = "lbl_guidelines_seen"  # the guidelines revision this labeler acknowledged
WHO = "lbl_who"  # the annotator id this session's state belongs to
FLAGGING = "lbl_flagging"  # key of the item whose flag reasons are on screen
PROGRESS = "lbl_progress"  # the progress figures read with the page, plus this session's verdicts
REVOKED = "lbl_revoked"  # a write found the account revoked: the whole page must run again
RECENT, RECENT_AT = "lbl_recent", "lbl_recent_at"  # app/label_recent.py
PREFETCH_DELAY_S = 0.15  # the next pair is drawn this long after the current one: once it has reached the browser
PREFETCH_WAIT_S = 5.0  # a verdict that comes while the draw runs waits this long for it, at most
STRENGTHS = {"slightly": 1, "clearly": 2}
STRENGTH_KEYS = {"slightly": "q", "clearly": "w"}
VERDICTS = {"left": "A better", "right": "B better", "tie": "Tie", "both_bad": "Both bad"}
VERDICT_KEYS = {"left": "1", "right": "2", "tie": "3", "both_bad": "4"}
FLAG_REASONS = [r.value for r in review.LABELER_REASONS]
FLAG_TEXT = {"broken": "Broken", "offensive": "Offensive", "needs_expertise": "Needs expertise", "other": "Other"}


def session_value(key: str, default: Any) -> Any:
    """This session's value under ``key``, set to ``default`` first when it has none."""
    if key not in st.session_state:
        st.session_state[key] = default
    return st.session_state[key]


def fail(exc: Exception) -> None:
    """Say why a write failed, in one line for the labeler (a revoked account also makes the page run again)."""
    if isinstance(exc, LinkError):  # revoked meanwhile: say so, no retry helps; the page runs again to stop
        st.session_state[ERROR] = str(exc)
        st.session_state[REVOKED] = True
        return
    st.session_state[ERROR] = f"Could not save: {explain_db_error(exc)}. Your choice was not recorded; try again."


def follow(ident: Identity) -> None:
    """Start this session's labeling state afresh when it now labels as someone else."""
    before = st.session_state.get(WHO)
    if before is not None and before != ident.annotator_id:
        reset()
    st.session_state[WHO] = ident.annotator_id


def revoked() -> bool:
    """Whether a write found the account revoked since the page last ran as a whole (the flag is cleared)."""
    return bool(st.session_state.pop(REVOKED, False))


# ----------------------------------------------------------------------------------------------- the queue


def current_item(ident: Identity) -> QueueItem | None:
    """The pair on screen, computing the next one if there is none."""
    item = st.session_state.get(ITEM)
    if item is None:
        with database().read() as s:
            item = next_pair(s, ident.name, exclude=session_value(SKIPPED, []))
        st.session_state[ITEM] = item
    return item


@dataclass
class Prepared:
    """The pair drawn in the background to follow the one shown under key ``after``: ``item`` once ``done`` (None:
    nothing left), or ``error``. ``dropped``: needed before the draw started, so the verdict drew it itself."""

    after: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    done: threading.Event = field(default_factory=threading.Event)
    started: bool = False
    dropped: bool = False
    item: QueueItem | None = None
    error: BaseException | None = None


def prefetch(ident: Identity) -> None:
    """Start drawing the pair that follows the one on screen, unless it is drawn or being drawn.

    It is drawn in a thread of its own, after a pause: the thread that drew the page holds Python's lock while it
    runs, and the server's loop needs that lock to send the pair just drawn to the browser (some 30 messages), so
    the query waits until they are out. A labeler reads for seconds; the pair is ready long before the next key."""
    item = st.session_state.get(ITEM)
    job = st.session_state.get(NEXT)
    if item is None or (isinstance(job, Prepared) and job.after == item.key):
        return
    job = Prepared(item.key)
    st.session_state[NEXT] = job
    db, name, exclude = database(), ident.name, [*session_value(SKIPPED, []), item.comparison_id]

    def draw() -> None:
        time.sleep(PREFETCH_DELAY_S)
        with job.lock:
            if job.dropped:
                return
            job.started = True
        try:
            with db.read() as s:
                job.item = next_pair(s, name, exclude=exclude)
        except BaseException as exc:  # noqa: BLE001 - drawn again, in the callback, when needed
            job.error = exc
        finally:
            job.done.set()

    threading.Thread(target=draw, name="rmstudio-next-pair", daemon=True).start()


def _prepared(after: QueueItem) -> tuple[bool, QueueItem | None]:
    """``(True, pair)`` when the pair drawn to follow ``after`` can be shown; ``(False, None)`` when it must be drawn
    now (none prepared, not started yet, failed, or skipped meanwhile)."""
    job = st.session_state.pop(NEXT, None)
    if not isinstance(job, Prepared) or job.after != after.key:
        return False, None
    with job.lock:
        job.dropped = not job.started
    if job.dropped or not job.done.wait(PREFETCH_WAIT_S) or job.error is not None:
        return False, None
    if job.item is not None and job.item.comparison_id in session_value(SKIPPED, []):
        return False, None
    return True, job.item


def _advance(ident: Identity, after: QueueItem) -> None:
    """Show the pair prepared to follow ``after`` (drawn now if it is not ready)."""
    ready, nxt = _prepared(after)
    if ready:
        if nxt is not None:
            nxt = dataclasses.replace(nxt, shown_at=time.time())  # time spent counts from when it is shown
    else:
        with database().read() as s:
            nxt = next_pair(s, ident.name, exclude=[*session_value(SKIPPED, []), after.comparison_id])
    st.session_state[ITEM] = nxt


def strength_key(item: QueueItem) -> str:
    """Session key of the strength chosen for ``item`` ("slightly"/"clearly"; absent: none)."""
    return f"strength_{item.key}"


def on_strength(key: str, name: str) -> None:
    """Choose strength ``name`` under session key ``key``, or clear it when it was chosen already."""
    st.session_state[key] = None if st.session_state.get(key) == name else name


def on_choice(choice: str, item: QueueItem, ident: Identity) -> None:
    """Save the verdict on ``item`` (once per key), then show the next pair."""
    done: set[str] = session_value(DONE, set())
    if item.key in done:
        return
    strength = STRENGTHS.get(st.session_state.get(strength_key(item)) or "")
    try:
        with database().write() as s:  # the account is checked and its tier read in the write itself
            submit_label(s, item, choice, annotator=active_annotator(s, ident.annotator_id), strength=strength)
    except Exception as exc:  # noqa: BLE001 - shown to the labeler in one line
        fail(exc)
        return
    done.add(item.key)
    session_value(STACK, []).append((item.key, item, st.session_state.get(strength_key(item))))
    count(1, item)
    st.session_state.pop(ERROR, None)  # no toast: the next pair on screen says it was taken
    if st.session_state.get(ITEM) is None or st.session_state[ITEM].key == item.key:
        _advance(ident, item)


def on_skip(item: QueueItem, ident: Identity) -> None:
    """Leave this pair for the rest of the session."""
    skipped = session_value(SKIPPED, [])
    if item.comparison_id not in skipped:
        skipped.append(item.comparison_id)
    st.session_state[NOTICE] = "Skipped"
    _advance(ident, item)


# ----------------------------------------------------------------------------------------------- flags


def flag_comment_key(item: QueueItem) -> str:
    """Widget key of the optional comment of a flag on ``item``."""
    return f"flag_comment_{item.key}"


def flagging(item: QueueItem) -> bool:
    """Whether the flag reasons of ``item`` are on screen (instead of the verdicts)."""
    return st.session_state.get(FLAGGING) == item.key


def on_flag_mode(item: QueueItem | None) -> None:
    """Show the flag reasons of ``item`` in place of the verdicts (None: the verdicts again)."""
    st.session_state[FLAGGING] = item.key if item is not None else None


def on_flag(item: QueueItem, ident: Identity, reason: str | None = None, comment: str | None = None) -> None:
    """Flag the pair on screen as one this labeler cannot judge (``reason``: broken, offensive, needs_expertise,
    other), with an optional comment (default: the one typed in the flag bar); then show the next pair. The pair
    goes to the researchers' Review tab and leaves the queue until they resolve it."""
    reason = reason or review.LABELER_REASONS[0].value
    comment = comment if comment is not None else st.session_state.get(flag_comment_key(item))
    try:
        with database().write() as s:
            ann = active_annotator(s, ident.annotator_id)
            review.flag_pair(s, item.comparison_id, reason, by=ann.name, comment=comment, annotator_id=ann.id)
    except ValueError as exc:  # e.g. a comment too long: nothing stored, the reason shown
        st.session_state[ERROR] = f"Flag not saved: {exc}"
        return
    except Exception as exc:  # noqa: BLE001
        fail(exc)
        return
    skipped = session_value(SKIPPED, [])
    if item.comparison_id not in skipped:
        skipped.append(item.comparison_id)
    st.session_state.pop(ERROR, None)
    st.session_state[FLAGGING] = None
    st.session_state[NOTICE] = "Flagged: the pair goes to the researchers' review"
    _advance(ident, item)


# ----------------------------------------------------------------------------------------------- undo


def on_undo(ident: Identity) -> None:
    """Delete the newest label this browser session stored (never one made elsewhere) and show that pair again as it
    was: same sides, same strength."""
    def show(entry: tuple[str, QueueItem, str | None]) -> None:
        _, item, strength = entry
        again = dataclasses.replace(item, key=uuid.uuid4().hex, shown_at=time.time(), reason="undone")
        st.session_state[ITEM] = again
        st.session_state[strength_key(again)] = strength
        st.session_state[FLAGGING] = None
        count(-1, item)

    undo_stack(ident, STACK, undo_last, show, "Undone: the pair is back")


def undo_stack(ident: Identity, stack_key: str, undo: Any, show: Any, notice: str) -> None:
    """Undo through ``undo(session, name, key)`` with the ``(key, ...)`` entries this session stored, newest first
    (nothing else: an empty stack undoes nothing), then ``show(entry)`` the one taken back."""
    stack: list[tuple[Any, ...]] = session_value(stack_key, [])
    try:
        with database().write() as s:
            got = None
            while got is None and stack:
                entry = stack.pop()
                got = undo(s, ident.name, entry[0])
        if got is None:
            st.session_state[NOTICE] = "Nothing to undo"
            return
    except Exception as exc:  # noqa: BLE001
        fail(exc)
        return
    show(entry)
    st.session_state.pop(ERROR, None)
    st.session_state[NOTICE] = notice


# ----------------------------------------------------------------------------------------------- progress


def load_progress(ident: Identity) -> None:
    """Read the labeler's progress (on each whole-page run; verdicts then count on top of it)."""
    with database().read() as s:
        p = annotator_progress(s, ident.name)
        target = load_queue_policy(s).target_overlap
    st.session_state[PROGRESS] = {"today": p.labels_today + p.rankings_today, "left": p.pairs_left,
                                  "median": p.median_seconds, "total": p.total_labels + p.total_rankings,
                                  "target": target}


def count(n: int, item: QueueItem | None = None) -> None:
    """Count ``n`` verdicts (negative: undone) of this session in the progress line; a pair that reaches the target
    overlap leaves "pairs left"."""
    p = st.session_state.get(PROGRESS)
    if p is None:
        return
    p["today"] += n
    p["total"] += n
    if item is not None and item.label_count + 1 == p["target"]:
        p["left"] = max(0, p["left"] - n)


def progress_line() -> str:
    """"Today 12 · all time 340 · 6.1 s per label · 2,980 pairs left": compact, one line."""
    p = st.session_state.get(PROGRESS)
    if p is None:
        return ""
    med = "" if p["median"] is None else f" · **{p['median']:.1f} s** per label"
    return f"Today **{p['today']}** · all time **{p['total']}**{med} · **{p['left']:,}** pairs left"


# ----------------------------------------------------------------------------------------------- page-wide


def reset() -> None:
    """Forget the items on screen, what Undo could take back and the guidelines acknowledged (after switching
    annotator)."""
    for k in (ITEM, NEXT, TASK, SKIPPED, RSKIPPED, NOTICE, ERROR, STACK, RSTACK, GUIDE_SEEN, DONE, WHO, FLAGGING,
              PROGRESS, REVOKED, RECENT, RECENT_AT):
        st.session_state.pop(k, None)
    if "guidelines" in st.query_params:
        del st.query_params["guidelines"]


def guidelines() -> Guidelines | None:
    """The labeling guidelines in force (one row read)."""
    with database().read() as s:
        return get_guidelines(s)


def ack_guidelines(revision: int) -> None:
    """"Got it": this labeler has read ``revision`` (its expander then starts collapsed); kept in the URL, like the
    identity, so that a reload does not open it again."""
    st.session_state[GUIDE_SEEN] = revision
    st.query_params["guidelines"] = str(revision)


def guidelines_seen() -> int | None:
    """The guidelines revision this labeler acknowledged (this session, or the URL), None when none."""
    seen = st.session_state.get(GUIDE_SEEN, st.query_params.get("guidelines"))
    try:
        return int(seen) if seen is not None else None
    except ValueError:
        return None


def queue_policy_summary() -> str:
    """One line describing the queue policy in force."""
    with database().read() as s:
        p = load_queue_policy(s)
    extra = f", {p.agreement_share:.0%} of pairs by {p.agreement_overlap}" if p.has_agreement_phase else ""
    return f"Queue: every pair by {p.target_overlap}{extra}" + (", active learning on" if p.active_learning else "")
