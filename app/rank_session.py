"""Session state and callbacks of the Label page's ranking mode (the queue itself is ``db.ranking_queue``).

Each displayed response has a "Rank" control (1 = best .. K), and keys do the same: digit ``i`` gives Response
``i`` the best rank nobody has yet, Backspace takes back the highest rank given, Enter submits. Undo deletes the
newest ranking this session stored and puts that prompt back exactly as it was: same display order, same ranks.
"""
from __future__ import annotations

import dataclasses
import time
import uuid

import streamlit as st

from app.identity import Identity
from app.label_session import DONE, ERROR, NOTICE, RSKIPPED, RSTACK, TASK, count, fail, session_value, undo_stack
from app.resources import database
from db.annotators import active_annotator
from db.labeling import count_rankable_prompts
from db.ranking_queue import RankingTask, next_ranking, submit_ranking, undo_last_ranking

RANK_REFUSED = "Ranking not saved."
MAX_KEYED = 9  # responses 1..9 get a digit key; more are ranked by their controls


def current_task(ident: Identity) -> RankingTask | None:
    """The ranking task on screen, computing the next one if there is none."""
    task = st.session_state.get(TASK)
    if task is None:
        with database().read() as s:
            task = next_ranking(s, ident.name, exclude=session_value(RSKIPPED, []))
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


def on_rank_next(task: RankingTask, i: int) -> None:
    """Key ``i + 1``: give the ``i``-th displayed response the best rank not given yet (nothing if it has one)."""
    ranks = chosen_ranks(task)
    free = [r for r in rank_options(len(ranks)) if r not in ranks]
    if ranks[i] is None and free:
        st.session_state[rank_key(task, i)] = free[0]
    forget_rank_refusal()


def on_rank_back(task: RankingTask) -> None:
    """Backspace: take back the highest rank given (the last one, when ranks are given in order by keys)."""
    ranks = chosen_ranks(task)
    given = [(r, i) for i, r in enumerate(ranks) if r is not None]
    if given:
        st.session_state[rank_key(task, max(given)[1])] = None
    forget_rank_refusal()


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


def _next_task(ident: Identity) -> None:
    with database().read() as s:
        st.session_state[TASK] = next_ranking(s, ident.name, exclude=session_value(RSKIPPED, []))


def on_rank(task: RankingTask, ident: Identity) -> None:
    """Save the ranking given by the rank controls (1 = best), then load the next task."""
    done: set[str] = session_value(DONE, set())
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
        fail(exc)
        return
    done.add(task.key)
    session_value(RSTACK, []).append((task.key, task, ranks))
    count(1)
    st.session_state.pop(ERROR, None)
    st.session_state[NOTICE] = "Ranking saved"
    _next_task(ident)


def on_rank_undo(ident: Identity) -> None:
    """Delete the newest ranking this browser session stored and show that prompt again as it was ranked: the same
    display order and the same ranks, ready to change or submit again."""
    def show(entry: tuple[str, RankingTask, list[int | None]]) -> None:
        _, task, ranks = entry
        again = dataclasses.replace(task, key=uuid.uuid4().hex, shown_at=time.time())
        for i, r in enumerate(ranks):
            st.session_state[rank_key(again, i)] = r
        st.session_state[TASK] = again
        count(-1)

    undo_stack(ident, RSTACK, undo_last_ranking, show, "Undone: the prompt is back with your ranks")


def forget_rank_refusal() -> None:
    """A rank changed: an earlier "Ranking not saved" message no longer describes the controls (the hint does)."""
    if str(st.session_state.get(ERROR, "")).startswith(RANK_REFUSED):
        st.session_state.pop(ERROR, None)


def on_rank_skip(task: RankingTask, ident: Identity) -> None:
    """Leave this prompt for the rest of the session."""
    session_value(RSKIPPED, []).append(task.prompt_id)
    st.session_state[NOTICE] = "Skipped"
    _next_task(ident)


@st.cache_data(ttl=30, show_spinner=False)
def _rankable(url: str) -> bool:
    with database().read() as s:
        return count_rankable_prompts(s) > 0


def has_rankable_prompts() -> bool:
    """Whether ranking mode has anything to show (cached for 30 s: a GROUP BY over all responses)."""
    return _rankable(database().url)

