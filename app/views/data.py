"""Data page (researchers): import files (preview, field mapping, errors by line, progress), download exports,
dataset statistics with the size-tier advice, the labeling-queue policy, the labeling guidelines, the team
(annotators, tiers, links) and the review of labels."""
from __future__ import annotations

import streamlit as st

from app import data_view as dv
from app.auth import require_researcher
from app.render import escape_md
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
    upload = st.file_uploader(
        "Preference file (JSON lines, JSON, CSV/TSV or Parquet; gzip allowed)",
        type=["jsonl", "json", "csv", "tsv", "parquet", "gz"],
        max_upload_size=cfg.max_upload_mb,
        key="data_upload",
    )
    if upload is None:
        st.caption(
            "Formats: `hh-rlhf` (chosen/rejected transcripts), `trl` (prompt/chosen/rejected), `comparisons`, "
            "`rankings`, `unlabeled` (prompts and responses to label here), or `mapped` (any columns, mapped below)."
        )
    elif problem := dv.too_big(upload.size, cfg.max_upload_mb):
        st.error(problem)
    else:
        data = upload.getvalue()
        name = upload.name
        st.markdown(f"File: {escape_md(name)} ({upload.size / 1024:.1f} KB)")  # not in backticks: escapes show there
        columns = dv.cached_preview(data, upload.file_id, name, dv.UploadOptions(None, None, None, None, None,
                                                                                  None, "train", False)).columns
        opts = dv.options_form(columns)
        pv = dv.cached_preview(data, upload.file_id, name, opts)
        m = st.columns(4)
        m[0].metric("Detected format", pv.format or "unknown")
        m[1].metric("Container", pv.container or "-")
        m[2].metric("Valid records", f"{pv.n_records:,}")
        m[3].metric("Invalid rows", f"{pv.n_errors:,}")
        if pv.rows:
            st.markdown("**Preview** (first rows, as they will be stored)")
            st.dataframe(pv.rows, hide_index=True)
        if pv.errors:
            st.markdown(f"**Validation errors** (first {len(pv.errors)} of {pv.n_errors})")
            st.dataframe(dv.errors_table(pv.errors), hide_index=True)
        blocked = pv.format is None or (pv.n_errors > 0 and not opts.skip_invalid) or pv.n_records == 0
        if blocked and pv.n_errors and pv.format is not None:
            st.info("Fix the rows listed above, or tick **Skip invalid rows** to import the valid ones.")
        if st.button("Import", type="primary", disabled=blocked, key="data_import"):
            dv.run_import(data, name, opts)

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
