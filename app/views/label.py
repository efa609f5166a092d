"""Label page: identity (a personal or campaign link, or the researcher's own), a compact header, then the labeling
area (``app/label_view.py``): pairs or rankings, every action on a key (listed under the verdict bar), the labeler's
recent labels to step back through and change, and a flag for pairs they cannot judge.

Keys in pair mode: 1 = A better, 2 = B better, 3 = tie, 4 = both bad, 5 = skip, Q / W = slightly / clearly better,
U = undo my last label, B = my recent labels, F = flag. Ranking mode: digits give ranks in order, Backspace takes the
last back, Enter submits, S skips, U undoes my last ranking.
"""
from __future__ import annotations

import streamlit as st

from app import label_session as ls
from app import label_view
from app import rank_session as rs
from app.identity import identity_gate, switch_local
from app.render import escape_md, safe_markdown
from app.resources import database, empty_state_hint
from db.labeling import dataset_is_empty

label_view.style()
head = st.columns([0.9, 2.4, 2.6, 2.5, 1.5], vertical_alignment="center", gap="small")
head[0].title("Label", anchor=False)
ident = identity_gate()
ls.follow(ident)

with database().read() as s:
    empty = dataset_is_empty(s)

head[1].markdown(f"Labeling as **{escape_md(ident.name)}** ({ident.tier.value} tier)")
head[2].caption(ls.queue_policy_summary())
if ident.via == "local" and head[4].button("Switch annotator", icon=":material/logout:"):
    switch_local()
    ls.reset()
    st.rerun()
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

ls.load_progress(ident)  # once per page load or mode switch: each verdict then counts on top of it
mode = "pairs"
if rs.has_rankable_prompts():
    mode = head[3].segmented_control(
        "Mode", ["pairs", "rank"], default="pairs", key="lbl_mode", label_visibility="collapsed",
        format_func=lambda m: {"pairs": "Compare two", "rank": "Rank 3+ responses"}[m],
    ) or "pairs"
label_view.labeling(ident, mode)
