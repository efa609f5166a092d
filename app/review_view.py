"""Review of labels (researchers): the Data page's Review tab, and the same actions beside Inspect's "Model vs human
labels" and the Dashboard's conflicting labels. Flag a label, exclude it from training (reversible), send its pair
to an expert; resolve labelers' flags. The logic and its audit are ``db/review.py``; every action is recorded as
the researcher (``researcher_name``) and listed under the label.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd
import streamlit as st
from sqlalchemy.orm import Session

from app.auth import researcher_enabled
from app.identity import researcher_name
from app.render import escape_md, safe_markdown
from app.resources import database
from db import review


def act(what: str, fn: Callable[[Session, str], Any]) -> tuple[bool, Any]:
    """Run ``fn(session, by)`` in one write transaction as the researcher: ``(done, its result)``. Refused without
    researcher rights (callbacks check too, not only pages); a refusal is shown as a toast."""
    if not researcher_enabled():
        st.toast("Researcher rights are needed.", icon=":material/lock:")
        return False, None
    try:
        with database().write() as s:
            return True, fn(s, researcher_name())
    except (ValueError, LookupError) as exc:
        st.toast(f"Could not {what}: {escape_md(str(exc))}", icon=":material/error:")
        return False, None


def on_exclude(label_id: int, exclude: bool) -> None:
    """Exclude a label from training (or include it again), from the next training on."""
    fn = review.exclude_label if exclude else review.include_label
    ok, changed = act("change the label", lambda s, by: fn(s, label_id, by=by))
    if ok:
        state = "excluded from" if exclude else "included in"
        st.toast(f"Label {label_id} is {state} training from the next run on." if changed
                 else f"Label {label_id} was already {state} training.")


def on_flag(label_id: int, comment_key: str) -> None:
    """Flag a label as a wrong verdict, with the comment typed beside it."""
    comment = st.session_state.get(comment_key)
    if act("flag the label", lambda s, by: review.flag_label(s, label_id, by=by, comment=comment))[0]:
        st.toast(f"Label {label_id} flagged: its pair waits in the Review tab.")


def on_relabel(comparison_id: int, label_id: int | None = None) -> None:
    """Send a pair to an expert: it comes first in every expert's queue until one labels it."""
    ok, got = act("ask for a relabel", lambda s, by: review.request_relabel(s, comparison_id, by=by, label_id=label_id))
    if ok:
        st.toast(f"Pair {comparison_id} goes to the next expert." if got[1]
                 else f"Pair {comparison_id} already waits for an expert.")


def on_resolve(comparison_id: int) -> None:
    """Close the open flags of a pair: it returns to the labeling queue."""
    ok, n = act("resolve the flags", lambda s, by: review.resolve_flags(s, comparison_id, by=by))
    if ok:
        st.toast(f"{n} flag(s) resolved: pair {comparison_id} is back in the queue." if n else "No open flag.")


def _history(rows: list[dict[str, Any]], key: str) -> None:
    if rows:
        st.dataframe(pd.DataFrame(rows)[["at", "who", "what"]], hide_index=True, key=key)
    else:
        st.caption("No review action yet.")


def label_actions(label_id: int, comparison_id: int, key: str) -> None:
    """Review actions on one label and its history (under a row of Inspect's "Model vs human labels")."""
    with database().read() as s:
        labs = {lab.label_id: lab for lab in review.pair_labels(s, comparison_id)}
        rows = review.history(s, label_id=label_id)
    lab = labs.get(label_id)
    if lab is None:
        st.caption(f"Label {label_id} is gone (undone by its labeler).")
        return
    _label_row(lab, comparison_id, key)
    _history(rows, f"{key}_history")


def _label_row(lab: review.PairLabel, comparison_id: int, key: str) -> None:
    state = "**excluded from training**" if lab.excluded else "used in training"
    flags = f", {lab.open_flags} open flag(s)" if lab.open_flags else ""
    c = st.columns([3, 2, 1, 1, 1], vertical_alignment="bottom")
    c[0].markdown(f"Label {lab.label_id} by {escape_md(lab.annotator)} ({lab.source}): `{lab.verdict}`, "
                  f"{state}{flags}")
    comment_key = f"{key}_comment_{lab.label_id}"
    c[1].text_input("Comment (optional)", key=comment_key, label_visibility="collapsed",
                    placeholder="why (optional)")
    c[2].button("Flag", key=f"{key}_flag_{lab.label_id}", on_click=on_flag, args=(lab.label_id, comment_key),
                icon=":material/flag:", width="stretch")
    if lab.excluded:
        c[3].button("Include", key=f"{key}_incl_{lab.label_id}", on_click=on_exclude, args=(lab.label_id, False),
                    width="stretch", help="use it in training again, from the next run on")
    else:
        c[3].button("Exclude", key=f"{key}_excl_{lab.label_id}", on_click=on_exclude, args=(lab.label_id, True),
                    width="stretch", help="keep it out of training and exports from the next run on (it stays "
                                          "stored; reversible)")
    c[4].button("Ask an expert", key=f"{key}_relabel_{lab.label_id}", on_click=on_relabel,
                args=(comparison_id, lab.label_id), width="stretch", help="send the pair to an expert for a relabel")


def pair_actions(comparison_id: int, key: str, *, texts: bool = False) -> None:
    """A pair's labels with their review actions, the pair-wide ones, and its history (the Dashboard's
    conflicting labels, the Review tab). ``texts``: show the prompt and both responses first."""
    with database().read() as s:
        try:
            prompt, a, b = review.pair_texts(s, comparison_id)
        except LookupError as exc:
            st.warning(str(exc))
            return
        labs = review.pair_labels(s, comparison_id)
        rows = review.history(s, comparison_id=comparison_id)
    if texts:
        safe_markdown(prompt)
        left, right = st.columns(2, border=True)
        with left:
            st.markdown("**Response a**")
            safe_markdown(a)
        with right:
            st.markdown("**Response b**")
            safe_markdown(b)
    for lab in labs:
        _label_row(lab, comparison_id, key)
    if not labs:
        st.caption("No label on this pair yet.")
    c = st.columns(2)
    c[0].button("Ask an expert to relabel the pair", key=f"{key}_relabel_pair", on_click=on_relabel,
                args=(comparison_id,), icon=":material/school:")
    c[1].button("Resolve its flags (back to the queue)", key=f"{key}_resolve", on_click=on_resolve,
                args=(comparison_id,), icon=":material/task_alt:")
    st.markdown("**History**")
    _history(rows, f"{key}_history")


def review_tab() -> None:
    """The Review tab: flagged pairs, pairs waiting for an expert, excluded labels, one pair in detail, the log."""
    with database().read() as s:
        counts = review.review_counts(s)
        flags = review.open_flags(s)
        waiting = review.open_relabels(s)
        excluded = review.excluded_labels(s)
        recent = review.recent_actions(s, limit=50)
    m = st.columns(3)
    m[0].metric("Flagged pairs", counts["open_flags"])
    m[1].metric("Waiting for an expert", counts["waiting_for_expert"])
    m[2].metric("Excluded labels", counts["excluded"])
    st.caption("Flagged pairs stay out of the labeling queue until resolved. Excluded labels stay stored and are "
               "left out of training and exports from the next run on. Experts get waiting pairs first.")
    for title, rows, k in (("Flagged", flags, "review_flags"), ("Waiting for an expert", waiting, "review_waiting"),
                           ("Excluded labels", excluded, "review_excluded")):
        if rows:
            st.markdown(f"**{title}**")
            st.dataframe(pd.DataFrame(rows), hide_index=True, key=k)
    pairs = list(dict.fromkeys([r["pair"] for r in flags] + [r["pair"] for r in waiting]
                               + [r["pair"] for r in excluded]))
    st.markdown("**Review a pair**")
    c = st.columns(2)
    picked = c[0].selectbox("Pair to review", pairs, index=0 if pairs else None, key="review_pick",
                            placeholder="nothing flagged")
    typed = c[1].number_input("or any pair #", min_value=1, value=None, step=1, key="review_any")
    cid = int(typed) if typed else picked
    if cid is not None:
        pair_actions(int(cid), "review_pair", texts=True)
    st.markdown("**Recent review actions**")
    _history(recent, "review_recent")
