"""Data page (researchers): import files (preview, field mapping, errors by line, progress), download exports,
dataset statistics with the size-tier advice, the labeling-queue policy, the labeling guidelines, the team
(annotators, tiers, links) and the review of labels."""
from __future__ import annotations

import streamlit as st

from app import data_view as dv
from app.auth import require_researcher
from app.import_view import import_tab
from app.resources import database, empty_state_hint, settings
from app.review_view import review_tab
from app.team_view import team_tab
from db.labeling import dataset_is_empty

require_researcher()
st.title("Data")
cfg = settings()

with database().read() as s:
    empty = dataset_is_empty(s)
if empty:
    empty_state_hint()

tab_import, tab_export, tab_stats, tab_queue, tab_guide, tab_team, tab_review = st.tabs(
    ["Import", "Export", "Statistics", "Labeling queue", "Guidelines", "Team", "Review"])

with tab_import:
    import_tab(cfg.max_upload_mb)

with tab_export:
    dv.export_section()

with tab_stats:
    dv.stats_section()

with tab_queue:
    st.markdown("Which pair a labeler sees next: every pair gets **labels per pair** labels first; then a "
                "**share** of the pairs is labelled by more annotators for agreement statistics.")
    dv.queue_policy_form()

with tab_guide:
    dv.guidelines_form()

with tab_team:
    team_tab()

with tab_review:
    review_tab()
