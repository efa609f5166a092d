"""Dashboard (researchers): model accuracy, data growth, score distributions, calibration, agreement and prompt
coverage. The top panel refreshes itself (``st.fragment(run_every=...)``) while labels and versions arrive; data
comes from ``app.dashboard_data`` (cached until the data changes)."""
from __future__ import annotations

import streamlit as st

from app import charts
from app import dashboard_data as data
from app.auth import require_researcher
from app.coverage_view import coverage_panel
from app.render import pct
from app.resources import database, empty_state_hint
from db import version_metrics as vm
from rm_engine import metrics

require_researcher()
st.title("Dashboard")
url = database().url
REFRESH_S = 5


@st.fragment(run_every=REFRESH_S)
def live_overview() -> None:
    """Accuracy per version with bands and the overfitting warning; dataset size; labels over time; throughput."""
    exact = data.fingerprint()
    d = data.overview(url, data.coarse(exact))
    vers, n_labels, over_time = d["versions"], exact[0], d["over_time"]
    if not vers and not n_labels:
        empty_state_hint()
        return
    by_source = over_time.groupby("source")["labels"].sum().to_dict() if len(over_time) else {}
    c = st.columns(4)
    c[0].metric("Labels", f"{n_labels:,}")
    c[1].metric("Model versions", len(vers))
    if vers:
        vid, m = vers[0]
        train_acc = vm.split_metrics(m, "train").get("accuracy")
        val_acc, n_val = vm.split_metrics(m, "val").get("accuracy"), vm.split_metrics(m, "val").get("n")
        c[2].metric(f"Validation accuracy (v{vid})", pct(val_acc), help=f"on {n_val} held-out pairs")
        c[3].metric("Training accuracy", pct(train_acc))
        band = metrics.accuracy_band(val_acc, n_val)
        st.caption(f"Validation accuracy band **{band['band']}**. {band['message'][0].upper()}{band['message'][1:]}."
                   + validation_noise(val_acc, n_val))
        flag = metrics.overfitting_flag(train_acc, val_acc)
        if flag["overfitting"]:
            st.warning(f"Overfitting: {flag['message']}", icon=":material/warning:")
    else:
        st.info("No model version yet: start a training on the **Train** page (or `rmstudio train`).")
    left, right = st.columns(2)
    left.plotly_chart(charts.accuracy_by_version(vm.version_accuracy(vers)), key="acc_versions")
    right.plotly_chart(charts.dataset_size(n_labels, by_source), key="size")
    right.caption(f"{d['stats']['pairs']:,} training pairs: size tier **{d['stats']['tier']}**. {d['stats']['advice']}")
    if vers:
        vid, m = vers[0]
        g1, g2 = st.columns(2)
        g1.plotly_chart(charts.group_accuracy(vm.version_groups(m, "per_source"), f"v{vid} accuracy per source"), key="acc_src")
        g2.plotly_chart(charts.group_accuracy(vm.version_groups(m, "per_category"), f"v{vid} accuracy per category"), key="acc_cat")
    t1, t2 = st.columns(2)
    t1.plotly_chart(charts.labels_over_time(over_time, d["time_unit"]), key="over_time")
    t2.plotly_chart(charts.annotator_throughput(d["throughput"]), key="throughput")


def validation_noise(val_acc: float | None, n_val: int | None) -> str:
    """How far one validation split can be trusted, and where a steadier estimate comes from."""
    se = metrics.accuracy_std_error(val_acc, n_val)
    if se is None:
        return ""
    few = f" Only {n_val} validation pairs: these numbers are noisy." if n_val < 30 else ""
    cv = " For a steadier estimate, `rmstudio cv --folds 10` cross-validates over all pairs." if se > 0.02 else ""
    return f" ±{100 * se:.1f} points (one standard error on {n_val} pairs).{few}{cv}"


def scores_panel() -> None:
    """Chosen vs rejected scores, margins, normalized scores and their table, calibration, Spearman."""
    labels = data.version_labels(url, fp)
    if not labels:
        st.info("Scores appear once a model version exists and its rescore job has cached the stored responses.")
        return
    vid = st.selectbox("Model version", list(labels), format_func=labels.get, key="score_version",
                       persist_state="session")
    sc = data.scores(url, fp, vid)
    st.caption(f"Distributions over the newest {data.LABEL_SAMPLE:,} labels at most; refreshed every few percent "
               f"of new labels or {data.HEAVY_TTL_S} s.")
    if sc["table"].empty:
        st.info(f"No cached scores for version {vid} yet: its rescore job may still be running.")
    a, b = st.columns(2)
    a.plotly_chart(charts.score_histograms(sc["long"]), key="score_hist")
    b.plotly_chart(charts.margin_histogram(sc["margins"]), key="margins")
    st.plotly_chart(charts.normalized_scores(sc["table"]), key="normalized")
    st.dataframe(sc["table"], hide_index=True, key="score_table")
    c1, c2 = st.columns(2)
    cal, spear = sc["calibration"], sc["spearman"]
    c1.plotly_chart(charts.reliability_diagram(cal["bins"], cal["ece"], cal["title"]), key="calibration")
    temp = sc["temperature"]
    if temp.get("temperature"):
        c1.caption(f"Temperature {temp['temperature']:.2f} fitted on {temp['n']} validation pairs: calibrated "
                   f"P(a over b) = sigmoid(margin / T); ECE {temp['ece_before']:.3f} -> {temp['ece_after']:.3f} there.")
    c2.plotly_chart(charts.spearman_histogram(spear["per_prompt"]), key="spearman")
    if spear["mean"] is not None:
        c2.caption(f"Mean Spearman {spear['mean']:.3f} over {spear['n_prompts']} ranked prompts.")
    frame, verdict = sc["length_bias"]
    l1, l2 = st.columns(2)
    l1.plotly_chart(charts.length_bias(frame, f"v{vid} length bias (words)"), key="length_bias")
    if verdict:
        (l2.warning if verdict["flag"] else l2.caption)(f"Length bias: {verdict['message']}.")


def agreement_panel() -> None:
    """Fleiss / Krippendorff with and without ties, Cohen per annotator pair, sources, conflicting labels."""
    ag = data.agreement_data(url, fp)
    st.plotly_chart(charts.agreement_bars(ag["overall"]), key="agreement")
    st.caption("With ties, `tie` and `both_bad` count as one 'no preference' category; without ties they are dropped. "
               f"Over the newest {data.AGREEMENT_SAMPLE:,} pairs labelled more than once.")
    st.dataframe(ag["overall"], hide_index=True)
    st.plotly_chart(charts.annotator_reliability(ag["reliability"]), key="reliability")
    st.caption("Each annotator's chance of picking the side the others' labels point to (one-coin Dawid-Skene; "
               "needs pairs labelled by three or more to tell who is right; grey: not weighed, under 10 "
               "overlapping labels or no agreement to weigh by). 'Weight by annotator reliability' on the Train "
               "page gives their labels `weight` (the typical annotator 1, chance level 0); `rmstudio annotators`.")
    st.dataframe(ag["reliability"], hide_index=True, column_config={
        c: st.column_config.NumberColumn(format="percent") for c in ("accuracy", "agrees_with_others",
                                                                      "agrees_with_experts")})
    st.markdown("**Cohen's kappa per annotator pair**")
    st.dataframe(ag["annotators"], hide_index=True)
    st.markdown("**Agreement between sources** (each source's majority verdict per pair)")
    st.dataframe(ag["sources"], hide_index=True)
    if (ag["by_guidelines"]["guidelines"] != "none").any():  # labels made under guidelines (Data page)
        st.markdown("**Agreement by guidelines revision** (labels made under each; 'none': before any)")
        st.dataframe(ag["by_guidelines"], hide_index=True)
    st.markdown(f"**Conflicting labels** ({len(ag['conflicts'])} pairs with both an `a` and a `b` verdict)")
    st.dataframe(ag["conflicts"], hide_index=True)


live_overview()
fp = data.coarse(data.fingerprint())
# Lazy tabs: only the open tab's panel runs.
tabs = st.tabs(["Scores", "Agreement", "Coverage"], key="dash_tab", on_change="rerun")
for tab, panel in zip(tabs, (scores_panel, agreement_panel, lambda: coverage_panel(url, fp))):
    if tab.open:
        with tab:
            panel()
