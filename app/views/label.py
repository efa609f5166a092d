"""Label page: identity (a personal or campaign link, or the researcher's own), then pairs (or rankings) with
buttons and keyboard shortcuts, and a flag for pairs the labeler cannot judge.

Shortcuts: 1 = A better, 2 = B better, 3 = tie, 4 = both bad, 5 = skip, u = undo my last label (ranking mode: my last ranking).
"""
from __future__ import annotations

import streamlit as st

from app import label_session as ls
from app.identity import identity_gate, switch_local
from app.render import escape_md, safe_markdown, show_conversation
from app.resources import database, empty_state_hint
from db.labeling import annotator_progress, dataset_is_empty
from db.review import REASON_TEXT

st.title("Label")
ident = identity_gate()
ls.follow(ident)

db = database()
with db.read() as s:
    empty = dataset_is_empty(s)
    prog = annotator_progress(s, ident.name)

top = st.columns([3, 1])
top[0].markdown(f"Labeling as **{escape_md(ident.name)}** ({ident.tier.value} tier)")
if ident.via == "local" and top[1].button("Switch annotator", icon=":material/logout:"):
    switch_local()
    ls.reset()
    st.rerun()

m = st.columns(4)
m[0].metric("My labels today", prog.labels_today + prog.rankings_today)
m[1].metric("Pairs left", prog.pairs_left)
m[2].metric("My median s / label", "-" if prog.median_seconds is None else f"{prog.median_seconds:.1f}")
m[3].metric("My labels, all time", prog.total_labels + prog.total_rankings)  # rankings count, as today
st.caption(ls.queue_policy_summary())
if (guide := ls.guidelines()) is not None and guide.text:
    new = ls.guidelines_seen() != guide.revision
    with st.expander(f"Labeling guidelines (revision {guide.revision}{', new' if new else ''})", expanded=new,
                     icon=":material/menu_book:"):
        safe_markdown(guide.text)
        if new:
            st.button("Got it", key="guidelines_ack", on_click=ls.ack_guidelines, args=(guide.revision,))

if empty:
    empty_state_hint()
    st.stop()

if err := st.session_state.get(ls.ERROR):
    st.error(err)
if note := st.session_state.pop(ls.NOTICE, None):
    st.toast(note)

mode = "pairs"
rankable = ls.has_rankable_prompts()
if rankable:
    mode = st.segmented_control(
        "Mode", ["pairs", "rank"], default="pairs", key="lbl_mode",
        format_func=lambda m: {"pairs": "Compare two", "rank": "Rank 3+ responses"}[m],
    ) or "pairs"


def pair_view() -> None:
    """Prompt on top, two responses side by side, verdict buttons with shortcuts."""
    item = ls.current_item(ident)
    if item is None:
        st.success("Nothing left for you to label under the current queue policy. Thank you!")
        st.button("Undo my last label", on_click=ls.on_undo, args=(ident,), shortcut="u", key="undo_empty")
        return
    # no queue reason nor label count: control pairs (already labelled by an expert) must look like any other
    st.caption(f"Pair #{item.comparison_id}"
               + (f" · {escape_md(item.category)}" if item.category else ""))
    show_conversation(item.history, item.prompt)
    cols = st.columns(2, border=True)
    for col, name, text in ((cols[0], "A", item.left_text), (cols[1], "B", item.right_text)):
        with col:
            st.markdown(f"**Response {name}**")
            safe_markdown(text)
    st.segmented_control("How much better? (optional)", list(ls.STRENGTHS), key=f"strength_{item.key}")
    b = st.columns(7)
    buttons = (("A better", "left", "1", "primary"), ("B better", "right", "2", "primary"),
               ("Tie", "tie", "3", "secondary"), ("Both bad", "both_bad", "4", "secondary"))
    for col, (label, choice, key, kind) in zip(b, buttons):
        col.button(label, on_click=ls.on_choice, args=(choice, item, ident), shortcut=key, type=kind,
                   key=f"{choice}_{item.key}", width="stretch", help=f"shortcut: {key}")
    b[4].button("Skip", on_click=ls.on_skip, args=(item, ident), shortcut="5", key=f"skip_{item.key}",
                width="stretch", help="shortcut: 5")
    b[5].button("Undo", on_click=ls.on_undo, args=(ident,), shortcut="u", key=f"undo_{item.key}",
                icon=":material/undo:", width="stretch", help="Delete my last label (shortcut: u)")
    with b[6].popover("Flag", icon=":material/flag:", width="stretch", help="I cannot judge this pair"):
        st.radio("Why?", ls.FLAG_REASONS, key=ls.flag_reason_key(item), format_func=lambda r: REASON_TEXT[r])
        st.text_input("Comment (optional)", key=ls.flag_comment_key(item))
        st.button("Flag this pair", on_click=ls.on_flag, args=(item, ident), key=f"flag_{item.key}")
    if item.n_responses >= 3 and rankable:
        st.caption("This prompt has more responses: rank them all in 'Rank 3+ responses' mode.")


def rank_view() -> None:
    """All responses of a prompt, each given a rank (one click per response, 1 = best), then one submit."""
    task = ls.current_task(ident)
    if task is None:
        st.success("No prompt left for you to rank. Thank you!")
        st.button("Undo my last ranking", on_click=ls.on_rank_undo, args=(ident,), shortcut="u", key="rundo_empty")
        return
    show_conversation(task.history, task.prompt)
    k = len(task.texts)
    st.caption(f"Give each response a rank from 1 (best) to {k} (worst), then submit.")
    for i, text in enumerate(task.texts):
        if i % 3 == 0:  # rows of up to three: reading order is Tab order
            cols = st.columns(min(3, k))
        with cols[i % 3].container(border=True):
            st.markdown(f"**Response {i + 1}**")
            safe_markdown(text)
            st.segmented_control(f"Rank of Response {i + 1}", ls.rank_options(k), key=ls.rank_key(task, i),
                                 on_change=ls.forget_rank_refusal)
    missing = ls.rank_problem(ls.chosen_ranks(task))
    c = st.columns([1, 1, 1, 2], vertical_alignment="center")
    # Never disabled: a click right after the last rank choice arrives while that choice's rerun runs, and a button
    # disabled in the render being replaced would swallow it. on_rank checks the ranks and names what is missing.
    c[0].button("Submit ranking", on_click=ls.on_rank, args=(task, ident), type="primary",
                key=f"ranksubmit_{task.key}", width="stretch")
    c[1].button("Skip", on_click=ls.on_rank_skip, args=(task, ident), key=f"rankskip_{task.key}", width="stretch")
    c[2].button("Undo", on_click=ls.on_rank_undo, args=(ident,), shortcut="u", key=f"rankundo_{task.key}",
                icon=":material/undo:", width="stretch", help="Delete my last ranking and show it again (u)")
    if missing:
        c[3].caption(missing)


if mode == "pairs":
    pair_view()
else:
    rank_view()
