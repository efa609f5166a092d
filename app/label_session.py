"""Session state and button callbacks of the Label page (Streamlit glue; the queue itself is ``db.labeling``).

Each shown pair carries its own idempotency key, and its buttons' widget keys contain that key: a second
click on a stale button either reaches no widget (ignored) or calls back with the *old* item, whose key is
already saved (ignored here, and ``add_label`` is idempotent by key anyway). The next pair is computed inside
the callback, right after the save, so the rerun renders it at once.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import streamlit as st

from app.identity import Identity
from app.resources import database
from db import review
from db.annotators import LinkError, active_annotator
from db.guidelines import Guidelines, get_guidelines
from db.labeling import (
    QueueItem,
    count_rankable_prompts,
    item_for_comparison,
    load_queue_policy,
    next_pair,
    submit_label,
    undo_last,
)
from db.ranking_queue import (
    RankingTask,
    next_ranking,
    ranking_task_for_prompt,
    submit_ranking,
    undo_last_ranking,
)
from db.session import explain_db_error

ITEM, TASK, SKIPPED, RSKIPPED, DONE, NOTICE, ERROR, STACK = (
    "lbl_item", "lbl_task", "lbl_skipped", "lbl_rskipped", "lbl_done", "lbl_notice", "lbl_error", "lbl_stack"
)
STRENGTHS = {"slightly": 1, "clearly": 2}
RANK_REFUSED = "Ranking not saved."
RSTACK = "lbl_rstack"  # the keys of the rankings this session stored, newest last (what Undo takes back)
GUIDE_SEEN = "lbl_guidelines_seen"  # the guidelines revision this labeler acknowledged
WHO = "lbl_who"  # the annotator id this session's state belongs to
FLAG_REASONS = [r.value for r in review.LABELER_REASONS]


def _state(key: str, default: Any) -> Any:
    if key not in st.session_state:
        st.session_state[key] = default
    return st.session_state[key]


def _fail(exc: Exception) -> None:
    if isinstance(exc, LinkError):  # revoked meanwhile: say so, no retry helps
        st.session_state[ERROR] = str(exc)
        return
    st.session_state[ERROR] = f"Could not save: {explain_db_error(exc)}. Your choice was not recorded; try again."


def follow(ident: Identity) -> None:
    """Start this session's labeling state afresh when it now labels as someone else."""
    before = st.session_state.get(WHO)
    if before is not None and before != ident.annotator_id:
        reset()
    st.session_state[WHO] = ident.annotator_id


def current_item(ident: Identity) -> QueueItem | None:
    """The pair on screen, computing the next one if there is none."""
    item = st.session_state.get(ITEM)
    if item is None:
        with database().read() as s:
            item = next_pair(s, ident.name, exclude=_state(SKIPPED, []))
        st.session_state[ITEM] = item
    return item


def _advance(ident: Identity) -> None:
    with database().read() as s:
        st.session_state[ITEM] = next_pair(s, ident.name, exclude=_state(SKIPPED, []))


def on_choice(choice: str, item: QueueItem, ident: Identity) -> None:
    """Save the verdict on ``item`` (once per key), then load the next pair."""
    done: set[str] = _state(DONE, set())
    if item.key in done:
        return
    strength = STRENGTHS.get(st.session_state.get(f"strength_{item.key}") or "")
    try:
        with database().write() as s:  # the account is checked and its tier read in the write itself
            submit_label(s, item, choice, annotator=active_annotator(s, ident.annotator_id), strength=strength)
    except Exception as exc:  # noqa: BLE001 - shown to the labeler in one line
        _fail(exc)
        return
    done.add(item.key)
    _state(STACK, []).append(item.key)
    st.session_state.pop(ERROR, None)
    st.session_state[NOTICE] = {"left": "A better", "right": "B better", "tie": "Tie", "both_bad": "Both bad"}[choice]
    if st.session_state.get(ITEM) is None or st.session_state[ITEM].key == item.key:
        _advance(ident)


def on_skip(item: QueueItem, ident: Identity) -> None:
    """Leave this pair for the rest of the session."""
    skipped = _state(SKIPPED, [])
    if item.comparison_id not in skipped:
        skipped.append(item.comparison_id)
    st.session_state[NOTICE] = "Skipped"
    _advance(ident)


def flag_reason_key(item: QueueItem) -> str:
    """Widget key of the flag reason chosen for ``item``."""
    return f"flag_reason_{item.key}"


def flag_comment_key(item: QueueItem) -> str:
    """Widget key of the optional comment of a flag on ``item``."""
    return f"flag_comment_{item.key}"


def on_flag(item: QueueItem, ident: Identity, reason: str | None = None, comment: str | None = None) -> None:
    """Flag the pair on screen as one this labeler cannot judge (``reason``: broken, offensive, needs_expertise,
    other; default: the reason chosen in the flag form), with an optional comment; then show the next pair. The
    pair goes to the researchers' Review tab and leaves the queue until they resolve it."""
    reason = reason or st.session_state.get(flag_reason_key(item)) or review.LABELER_REASONS[0].value
    comment = comment if comment is not None else st.session_state.get(flag_comment_key(item))
    try:
        with database().write() as s:
            ann = active_annotator(s, ident.annotator_id)
            review.flag_pair(s, item.comparison_id, reason, by=ann.name, comment=comment, annotator_id=ann.id)
    except ValueError as exc:  # e.g. a comment too long: nothing stored, the reason shown
        st.session_state[ERROR] = f"Flag not saved: {exc}"
        return
    except Exception as exc:  # noqa: BLE001
        _fail(exc)
        return
    skipped = _state(SKIPPED, [])
    if item.comparison_id not in skipped:
        skipped.append(item.comparison_id)
    st.session_state.pop(ERROR, None)
    st.session_state[NOTICE] = "Flagged: the pair goes to the researchers' review"
    _advance(ident)


def on_undo(ident: Identity) -> None:
    """Delete the newest label this browser session stored (never one made elsewhere) and show that pair again."""
    def show(s: Any, cid: int) -> None:
        st.session_state[ITEM] = item_for_comparison(s, cid)

    _undo(ident, STACK, undo_last, show, "Undone: the pair is back")


def _undo(ident: Identity, stack_key: str, undo: Callable[..., int | None], show: Callable[[Any, int], None],
          notice: str) -> None:
    """Undo through ``undo(session, name, key)`` with the keys this session stored, newest first (nothing else:
    an empty stack undoes nothing), then ``show(read_session, id)`` what came back."""
    stack: list[str] = _state(stack_key, [])
    try:
        with database().write() as s:
            got = None
            while got is None and stack:
                got = undo(s, ident.name, stack.pop())
        if got is None:
            st.session_state[NOTICE] = "Nothing to undo"
            return
        with database().read() as s:
            show(s, got)
    except Exception as exc:  # noqa: BLE001
        _fail(exc)
        return
    st.session_state.pop(ERROR, None)
    st.session_state[NOTICE] = notice


def current_task(ident: Identity) -> RankingTask | None:
    """The ranking task on screen, computing the next one if there is none."""
    task = st.session_state.get(TASK)
    if task is None:
        with database().read() as s:
            task = next_ranking(s, ident.name, exclude=_state(RSKIPPED, []))
        st.session_state[TASK] = task
    return task


def rank_options(k: int) -> list[int]:
    """The choices of each response's "Rank" control: 1 (best) .. k (worst)."""
    return list(range(1, k + 1))


def rank_key(task: RankingTask, i: int) -> str:
    """Widget key of the rank given to the ``i``-th displayed response (new for every task: a fresh task starts
    with no rank chosen)."""
    return f"rank_{task.key}_{i}"


def chosen_ranks(task: RankingTask) -> list[int | None]:
    """The rank chosen for each displayed response, in display order (None: not chosen yet)."""
    return [st.session_state.get(rank_key(task, i)) for i in range(len(task.response_ids))]


def _and(xs: list[int]) -> str:
    return str(xs[0]) if len(xs) == 1 else f"{', '.join(map(str, xs[:-1]))} and {xs[-1]}"


def rank_problem(ranks: list[int | None]) -> str | None:
    """Why ``ranks`` (one per displayed response) is not yet a permutation of 1..K, as a short sentence naming
    what is missing or duplicated; None when it is one."""
    k = len(ranks)
    given = [r for r in ranks if r is not None]
    if sorted(given) == list(range(1, k + 1)):
        return None
    parts: list[str] = []
    unranked = [i + 1 for i, r in enumerate(ranks) if r is None]
    if unranked:
        parts.append(f"Response {unranked[0]} has no rank yet" if len(unranked) == 1
                     else f"Responses {_and(unranked)} have no rank yet")
    for r in sorted({r for r in given if given.count(r) > 1}):
        n = given.count(r)
        parts.append(f"rank {r} is used {'twice' if n == 2 else f'{n} times'}")
    lost = [r for r in range(1, k + 1) if r not in given]
    if len(given) == k and lost:  # every response has a rank, some repeated: name the ranks nobody got
        parts.append(f"rank {lost[0]} is missing" if len(lost) == 1 else f"ranks {_and(lost)} are missing")
    text = "; ".join(parts)
    return text[0].upper() + text[1:] + "."


def order_from_ranks(task: RankingTask, ranks: list[int | None]) -> list[int] | None:
    """The task's response ids best first (rank 1 first), or None when ``ranks`` is not a permutation of 1..K."""
    if rank_problem(ranks) is not None:
        return None
    return [rid for _, rid in sorted(zip(ranks, task.response_ids))]  # type: ignore[type-var]


def on_rank(task: RankingTask, ident: Identity) -> None:
    """Save the ranking given by the rank controls (1 = best), then load the next task."""
    done: set[str] = _state(DONE, set())
    if task.key in done:
        return
    ranks = chosen_ranks(task)
    order = order_from_ranks(task, ranks)
    if order is None:  # an early click: nothing is stored, the message says what is missing
        st.session_state[ERROR] = f"{RANK_REFUSED} {rank_problem(ranks)}"
        return
    try:
        with database().write() as s:
            ann = active_annotator(s, ident.annotator_id)
            submit_ranking(s, task, order, annotator=ann, source=ann.default_source)
    except Exception as exc:  # noqa: BLE001
        _fail(exc)
        return
    done.add(task.key)
    _state(RSTACK, []).append(task.key)
    st.session_state.pop(ERROR, None)
    st.session_state[NOTICE] = "Ranking saved"
    with database().read() as s:
        st.session_state[TASK] = next_ranking(s, ident.name, exclude=_state(RSKIPPED, []))


def on_rank_undo(ident: Identity) -> None:
    """Delete the newest ranking this browser session stored and show that prompt again, in a new display order."""
    def show(s: Any, pid: int) -> None:
        st.session_state[TASK] = ranking_task_for_prompt(s, pid)

    _undo(ident, RSTACK, undo_last_ranking, show, "Undone: the prompt is back")


def forget_rank_refusal() -> None:
    """A rank changed: an earlier "Ranking not saved" message no longer describes the controls (the hint does)."""
    if str(st.session_state.get(ERROR, "")).startswith(RANK_REFUSED):
        st.session_state.pop(ERROR, None)


def on_rank_skip(task: RankingTask, ident: Identity) -> None:
    """Leave this prompt for the rest of the session."""
    _state(RSKIPPED, []).append(task.prompt_id)
    with database().read() as s:
        st.session_state[TASK] = next_ranking(s, ident.name, exclude=st.session_state[RSKIPPED])


def reset() -> None:
    """Forget the items on screen, what Undo could take back and the guidelines acknowledged (after switching
    annotator)."""
    for k in (ITEM, TASK, SKIPPED, RSKIPPED, NOTICE, ERROR, STACK, RSTACK, GUIDE_SEEN, DONE, WHO):
        st.session_state.pop(k, None)
    if "guidelines" in st.query_params:
        del st.query_params["guidelines"]


@st.cache_data(ttl=30, show_spinner=False)
def _rankable(url: str) -> bool:
    with database().read() as s:
        return count_rankable_prompts(s) > 0


def has_rankable_prompts() -> bool:
    """Whether ranking mode has anything to show (cached for 30 s: a GROUP BY over all responses)."""
    return _rankable(database().url)


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
