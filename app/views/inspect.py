"""Inspect (researchers): score a prompt and any number of responses with a model version (raw, z, sigmoid,
percentile, ensemble std), compare it with up to three other versions on the same inputs (every number side by
side, a chart, and the versions as one reward: ``app.inspect_scoring``), and browse the stored pairs where the
model most disagrees with the human label."""
from __future__ import annotations

import streamlit as st

from app.auth import require_researcher
from app.hints import page_link
from app.inspect_scoring import score_panel
from app.render import escape_md, safe_markdown
from app.resources import database, empty_state_hint
from app.review_view import label_actions
from db import analytics, versions

require_researcher()
st.title("Inspect")
db = database()

with db.read() as s:
    labels = versions.version_labels(s)
    ids = list(labels)
    empty = analytics.label_count(s) == 0
if not ids:
    if empty:
        empty_state_hint()
    st.info("No model version yet: train one on the **Train** page (or `rmstudio train`), then come back.")
    page_link("train.py", "Train a model version")
    st.stop()


def disagreement_panel() -> None:
    """Stored labels whose human choice the model most strongly rejects (cached scores)."""
    vd = st.selectbox("Model version", ids, format_func=labels.get, key="disagree_version")
    limit = st.slider("Pairs to show", 5, 100, 20, key="disagree_limit")
    with db.read() as s:
        worst = analytics.model_disagreements(s, vd, limit=limit)
    if worst.empty:
        st.info(f"No stored label disagrees with version {vd}'s cached scores (or they are not cached yet).")
    st.caption("Most negative margin first: the model prefers the response the human rejected. These are often "
               "label errors, or blind spots of the model.")
    for row in worst.itertuples():
        with st.expander(f"margin {row.margin:.3f} · label {row.label_id} by {escape_md(str(row.annotator))} ({row.source})"):
            safe_markdown(row.prompt)
            left, right = st.columns(2)
            left.markdown(f"**Human chose** (score {row.chosen_score:.3f})")
            with left:
                safe_markdown(row.chosen)
            right.markdown(f"**Human rejected** (score {row.rejected_score:.3f})")
            with right:
                safe_markdown(row.rejected)
            label_actions(int(row.label_id), int(row.comparison_id), f"disagree_{row.label_id}")


# Lazy tabs: only the open tab's panel runs (the disagreement query reads every label).
tabs = st.tabs(["Score responses", "Model vs human labels"], key="inspect_tab", on_change="rerun")
for tab, panel in zip(tabs, (lambda: score_panel(db, ids, labels), disagreement_panel)):
    if tab.open:
        with tab:
            panel()
