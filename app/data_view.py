"""Parts of the Data page: the upload size check, exports for download, dataset statistics, the labeling-queue
policy form and the guidelines (the Import tab is ``app/import_view.py``). Streamlit glue only; the work is
``db.exporter``, ``db.stats`` and ``db.labeling``."""
from __future__ import annotations

import io

import pandas as pd
import plotly.express as px
import streamlit as st

from app.render import escape_md
from app.resources import database
from db.exporter import EXPORT_FORMATS, export
from db.guidelines import MAX_CHARS as MAX_GUIDE_CHARS
from db.guidelines import get_guidelines, set_guidelines
from db.labeling import QueuePolicy, count_control_pairs, load_queue_policy, save_queue_policy
from db.stats import dataset_stats


def too_big(size: int, max_mb: int) -> str | None:
    """An error message when an upload exceeds the cap, else None."""
    if size > max_mb * 1024 * 1024:
        return f"The file is {size / 2**20:.1f} MB; uploads are limited to {max_mb} MB (RMSTUDIO_MAX_UPLOAD_MB)."
    return None


def guidelines_form() -> None:
    """Edit the labeling guidelines (Markdown, shown at the top of the Label page; each save is a revision)."""
    with database().read() as s:
        cur = get_guidelines(s)
    if cur is not None:
        st.caption(f"Revision {cur.revision}, saved {cur.updated_at}.")
    with st.form("guidelines_form"):
        text = st.text_area("Guidelines (Markdown)", cur.text if cur else "", height=240, max_chars=MAX_GUIDE_CHARS,
                            placeholder="What makes a response better here? When is a tie right, when is 'both bad'?")
        ok = st.form_submit_button("Save guidelines")
    if ok:
        try:
            with database().write() as s:
                g = set_guidelines(s, text)
        except ValueError as exc:
            st.error(str(exc))
            return
        st.success(f"Guidelines saved as revision {g.revision}: labelers see them at the top of the Label page."
                   if g.text else f"Guidelines cleared (revision {g.revision}).")


def queue_policy_form() -> None:
    """Edit the labeling-queue policy (overlap, agreement share, control pairs, active learning)."""
    with database().read() as s:
        cur, controls = load_queue_policy(s), count_control_pairs(s)
    with st.form("queue_policy"):
        c = st.columns(5)
        target = c[0].number_input("Labels per pair", 1, 20, cur.target_overlap)
        share = c[1].slider("Share for agreement", 0.0, 1.0, cur.agreement_share, 0.05)
        overlap = c[2].number_input("Annotators in that share", 1, 20, cur.agreement_overlap)
        control = c[3].slider("Control pairs", 0.0, 0.5, cur.control_share, 0.01, key="queue_control_share",
                              help="share of each labeler's pairs drawn from pairs an expert labelled, shown like "
                                   "any other: everyone is measured against the experts (Dashboard, Agreement tab)")
        active = c[4].toggle("Active learning", cur.active_learning,
                             help="prefer pairs the newest scored model is least sure about")
        st.caption(f"{controls:,} expert-labelled pairs can serve as control pairs"
                   + ("" if controls else ": import or label some as expert first"))
        ok = st.form_submit_button("Save queue policy")
    if ok:
        try:
            pol = QueuePolicy(int(target), float(share), int(overlap), bool(active), cur.pool_size,
                              cur.ranking_max_responses, float(control))
        except ValueError as exc:
            st.error(str(exc))
            return
        with database().write() as s:
            save_queue_policy(s, pol)
        st.success("Queue policy saved: labelers get it with their next pair.")


def export_section() -> None:
    """Build an export on request and offer it for download."""
    c = st.columns(3)
    fmt = c[0].selectbox("Export format", EXPORT_FORMATS, key="export_format",
                         help="trl: prompt/chosen/rejected for training; comparisons/csv/parquet: everything, "
                              "re-importable")
    split = c[1].selectbox("Labels", ["all", "train", "test"], key="export_split")
    if c[2].button("Prepare export", key="export_go"):
        buf = io.BytesIO()
        with st.spinner("Exporting..."):
            report = export(database(), fmt, buf, split=None if split == "all" else split)
        ext = {"trl": "jsonl", "comparisons": "jsonl", "csv": "csv", "parquet": "parquet"}[fmt]
        st.session_state["export_ready"] = (f"rmstudio-{fmt}-{split}.{ext}", buf.getvalue(), report.summary())
    ready = st.session_state.get("export_ready")
    if ready:
        name, data, summary = ready
        st.caption(escape_md(summary))
        st.download_button(f"Download {name}", data, file_name=name, key="export_download", type="primary")


def _counts_frame(counts: dict[str, int], what: str) -> pd.DataFrame:
    return pd.DataFrame({what: list(counts), "labels": list(counts.values())})


def stats_section() -> None:
    """Dataset statistics with the size tier and its advice, and labels by source, outcome, category, annotator."""
    with database().read() as s:
        st_ = dataset_stats(s)
    m = st.columns(6)
    m[0].metric("Training pairs", f"{st_['pairs']:,}")
    m[1].metric("Held-out pairs", f"{st_['test_pairs']:,}")
    m[2].metric("Labels", f"{st_['labels']:,}")
    m[3].metric("Rankings", f"{st_['rankings']:,}")
    m[4].metric("Prompts", f"{st_['prompts']:,}")
    m[5].metric("Unlabelled pairs", f"{st_['unlabeled_comparisons']:,}")
    st.info(f"**Size tier: {st_['tier']}.** {st_['advice']}", icon=":material/straighten:")
    c = st.columns(2)
    src = _counts_frame(st_["by_source"], "source")
    c[0].plotly_chart(px.bar(src, x="source", y="labels", title="Labels by source"), key="stats_source")
    out = _counts_frame(st_["by_outcome"], "outcome")
    c[1].plotly_chart(px.bar(out, x="outcome", y="labels", title="Labels by outcome"), key="stats_outcome")
    c2 = st.columns(2)
    c2[0].markdown("**By category**")
    c2[0].dataframe(_counts_frame(st_["by_category"], "category"), hide_index=True)
    c2[1].markdown("**By annotator**")
    c2[1].dataframe(_counts_frame(st_["by_annotator"], "annotator"), hide_index=True)
