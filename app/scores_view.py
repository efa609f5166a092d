"""The Dashboard's Scores tab: a version's cached scores (chosen vs rejected, margins, normalized scores and their
table), its calibration and temperature, Spearman per ranked prompt and its length bias. Where a part has no data
it says what would fill it and links to the page that does, instead of drawing an empty chart."""
from __future__ import annotations

import streamlit as st

from app import charts
from app import dashboard_data as data
from app.hints import nothing_yet, page_link, temperature_note


def scores_panel(url: str, fp: data.Fingerprint) -> None:
    """Chosen vs rejected scores, margins, normalized scores and their table, calibration, Spearman, length bias."""
    labels = data.version_labels(url, fp)
    if not labels:
        nothing_yet("Scores appear once a model version exists: train one, and its rescore job caches the scores "
                    "of the stored responses.", "train.py", "Train a model version")
        return
    vid = st.selectbox("Model version", list(labels), format_func=labels.get, key="score_version",
                       persist_state="session")
    sc = data.scores(url, fp, vid)
    if sc["table"].empty:
        nothing_yet(f"No cached scores for version {vid} yet. Its rescore job caches them after training (the Train "
                    "page's automatic retraining: \"Rescore stored responses after each new version\"); it may still "
                    "be running.", "train.py", "Open the Train page's queue")
    else:
        st.caption(f"Distributions over the newest {data.LABEL_SAMPLE:,} labels at most; refreshed every few "
                   f"percent of new labels or {data.HEAVY_TTL_S} s.")
        a, b = st.columns(2)
        a.plotly_chart(charts.score_histograms(sc["long"]), key="score_hist")
        b.plotly_chart(charts.margin_histogram(sc["margins"]), key="margins")
        st.plotly_chart(charts.normalized_scores(sc["table"]), key="normalized")
        st.dataframe(sc["table"], hide_index=True, key="score_table")
    c1, c2 = st.columns(2)
    cal, spear = sc["calibration"], sc["spearman"]
    if any(b.get("count") for b in cal["bins"]):
        c1.plotly_chart(charts.reliability_diagram(cal["bins"], cal["ece"], cal["title"]), key="calibration")
    else:
        c1.caption(f"**Calibration**: version {vid} recorded no validation pairs, and no labelled pair has cached "
                   "scores yet.")
    if note := temperature_note(sc["temperature"]):
        c1.caption(note)
    if spear["per_prompt"]:
        c2.plotly_chart(charts.spearman_histogram(spear["per_prompt"]), key="spearman")
        c2.caption(f"Mean Spearman {spear['mean']:.3f} over {spear['n_prompts']} ranked prompts.")
    else:
        with c2:
            st.caption("**Spearman per ranked prompt**: no ranking with cached scores yet. Rankings of three or more "
                       "responses (the Label page's ranking mode, or an imported `rankings` file) fill it.")
            page_link("label.py", "Rank responses")
    frame, verdict = sc["length_bias"]
    l1, l2 = st.columns(2)
    if len(frame):
        l1.plotly_chart(charts.length_bias(frame, f"v{vid} length bias (words)"), key="length_bias")
    else:
        l1.caption(f"**Length bias**: not recorded for version {vid} (trained before length bias was measured).")
    if verdict:
        (l2.warning if verdict["flag"] else l2.caption)(f"Length bias: {verdict['message']}.")
