"""Dashboard (researchers): model accuracy, data growth, score distributions, calibration, agreement and prompt
coverage. The top panel refreshes itself (``st.fragment(run_every=...)``) while labels and versions arrive; data
comes from ``app.dashboard_data`` (cached until the data changes)."""
from __future__ import annotations

import streamlit as st

from app import charts
from app import dashboard_data as data
from app.auth import require_researcher
from app.coverage_view import coverage_panel
from app.hints import nothing_yet, page_link, validation_noise
from app.render import pct
from app.resources import database, empty_state_hint
from app.review_view import pair_actions
from app.scores_view import scores_panel
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
        page_link("data.py", "Import preference data")
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
        nothing_yet("No model version yet: accuracy per version, per source and per category show here once one "
                    "is trained (or `rmstudio train`).", "train.py", "Start a training")
    left, right = st.columns(2)
    if vers:
        left.plotly_chart(charts.accuracy_by_version(vm.version_accuracy(vers)), key="acc_versions")
    (right if vers else left).plotly_chart(charts.dataset_size(n_labels, by_source), key="size")
    (right if vers else left).caption(f"{d['stats']['pairs']:,} training pairs: size tier **{d['stats']['tier']}**. "
                                      f"{d['stats']['advice']}")
    if vers:
        vid, m = vers[0]
        g1, g2 = st.columns(2)
        g1.plotly_chart(charts.group_accuracy(vm.version_groups(m, "per_source"), f"v{vid} accuracy per source"), key="acc_src")
        g2.plotly_chart(charts.group_accuracy(vm.version_groups(m, "per_category"), f"v{vid} accuracy per category"), key="acc_cat")
    t1, t2 = st.columns(2)
    t1.plotly_chart(charts.labels_over_time(over_time, d["time_unit"]), key="over_time")
    t2.plotly_chart(charts.annotator_throughput(d["throughput"]), key="throughput")


def agreement_panel() -> None:
    """Fleiss / Krippendorff with and without ties, Cohen per annotator pair, sources, conflicting labels."""
    ag = data.agreement_data(url, fp)
    if not ag["overall"]["items"].fillna(0).max():
        nothing_yet("No pair has been labelled by two people yet, so there is no agreement to measure. Let the "
                    "labeling queue give some pairs to several labelers: the Data page's **Labeling queue** tab, "
                    "\"Labels per pair\" 2 or more, or a \"Share for agreement\" with 2 or more \"Annotators in "
                    "that share\" (3 or more to tell who is right).", "data.py", "Set the labeling queue's overlap")
        return
    st.plotly_chart(charts.agreement_bars(ag["overall"]), key="agreement")
    st.caption("With ties, `tie` and `both_bad` count as one 'no preference' category; without ties they are dropped. "
               f"Over the newest {data.AGREEMENT_SAMPLE:,} pairs labelled more than once."
               + (" `None`: undefined here (no pair left without ties, or every label in one category: no agreement "
                  "beyond chance to measure)." if ag["overall"]["value"].isna().any() else ""))
    st.dataframe(ag["overall"], hide_index=True)
    if len(ag["reliability"]):
        st.plotly_chart(charts.annotator_reliability(ag["reliability"]), key="reliability")
        st.caption("Each annotator's chance of picking the side the others' labels point to (one-coin Dawid-Skene; "
                   "needs pairs labelled by three or more to tell who is right; grey: not weighed, under 10 "
                   "overlapping labels or no agreement to weigh by). 'Weight by annotator reliability' on the Train "
                   "page gives their labels `weight` (the typical annotator 1, chance level 0); `rmstudio annotators`.")
        st.dataframe(ag["reliability"], hide_index=True, column_config={
            c: st.column_config.NumberColumn(format="percent") for c in ("accuracy", "agrees_with_others",
                                                                          "agrees_with_experts")})
    else:
        st.caption("**Annotator reliability**: needs pairs where two or more annotators chose a side (`a` or `b`); "
                   "ties and both-bad verdicts tell nothing about who is right.")
    st.markdown("**Cohen's kappa per annotator pair**")
    if len(ag["annotators"]):
        st.dataframe(ag["annotators"], hide_index=True)
    else:
        st.caption("No two annotators labelled the same pair (the pairs above were labelled twice by one person).")
    st.markdown("**Agreement between sources** (each source's majority verdict per pair)")
    if len(ag["sources"]):
        st.dataframe(ag["sources"], hide_index=True)
    else:
        st.caption("Every pair above was labelled by one source only: pairs labelled by two sources (say experts "
                   "and the crowd) compare them.")
    if (ag["by_guidelines"]["guidelines"] != "none").any():  # labels made under guidelines (Data page)
        st.markdown("**Agreement by guidelines revision** (labels made under each; 'none': before any)")
        st.dataframe(ag["by_guidelines"], hide_index=True)
    st.markdown(f"**Conflicting labels** ({len(ag['conflicts'])} pairs with both an `a` and a `b` verdict)")
    st.dataframe(ag["conflicts"], hide_index=True)
    if len(ag["conflicts"]):
        pick = st.selectbox("Review a conflicting pair", list(ag["conflicts"]["comparison_id"]), index=None,
                            key="conflict_review", placeholder="pick a pair: flag, exclude or send to an expert")
        if pick is not None:
            pair_actions(int(pick), "conflict")


live_overview()
fp = data.coarse(data.fingerprint())
# Lazy tabs: only the open tab's panel runs.
tabs = st.tabs(["Scores", "Agreement", "Coverage"], key="dash_tab", on_change="rerun")
for tab, panel in zip(tabs, (lambda: scores_panel(url, fp), agreement_panel, lambda: coverage_panel(url, fp))):
    if tab.open:
        with tab:
            panel()
