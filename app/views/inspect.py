"""Inspect (researchers): score a prompt and any number of responses with a model version (raw, z, sigmoid,
percentile, ensemble std), compare it with up to three other versions on the same inputs (and see them as one
reward), and browse the stored pairs where the model most disagrees with the human label."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from app.auth import require_researcher
from app.render import escape_md, safe_markdown
from app.resources import database, empty_state_hint, settings
from db import analytics, versions
from rm_engine.scoring import RewardModel, load_usable
from rm_engine.version_ensemble import VersionEnsemble

require_researcher()
st.title("Inspect")
db = database()
MAX_RESPONSES = 20
MAX_COMPARED = 3  # versions beside the first: four score tables side by side at most

with db.read() as s:
    labels = versions.version_labels(s)
    ids = list(labels)
    empty = analytics.label_count(s) == 0
if not ids:
    if empty:
        empty_state_hint()
    st.info("No model version yet: train one on the **Train** page (or `rmstudio train`), then come back.")
    st.stop()


@st.cache_resource(show_spinner="Loading the reward model...", max_entries=4)
def load_model(version_id: int, db_url: str) -> RewardModel:
    """The reward model of a version (or the newest usable one before it, when its files are damaged)."""
    return load_usable(database(), settings(), version_id)


def score_frame(version_id: int, prompt: str, texts: list[str]) -> tuple[pd.DataFrame, str | None]:
    """Scores of ``texts`` as a table, best first, and a warning when another version had to be used."""
    model = load_model(version_id, db.url)
    scores = model.score(prompt, texts)
    df = pd.DataFrame({
        "response": texts, "raw": [sc.raw for sc in scores], "z": [sc.z for sc in scores],
        "sigmoid": [sc.sigmoid for sc in scores], "percentile": [sc.percentile for sc in scores],
        "std": [sc.std for sc in scores],
    }).sort_values("raw", ascending=False, kind="stable")
    df.insert(0, "rank", range(1, len(df) + 1))
    # calibrated P(a labeler prefers this response over the next one down), from the version's temperature
    df["p_beats_next"] = [model.preference_probability(a, b) for a, b in zip(df["raw"], df["raw"].iloc[1:])] + [None]
    note = model.fallback_message or (None if model.version_id == version_id else f"scored with version {model.version_id}")
    return df.reset_index(drop=True), note


def score_panel() -> None:
    """Score a prompt and its responses with one version, or several side by side (inputs kept for the session)."""
    keep = {"persist_state": "session"}
    c1, c2 = st.columns(2)
    va = c1.selectbox("Model version", ids, format_func=labels.get, key="inspect_version", **keep)
    # every version stays an option (one equal to the first is skipped below): options that change with the first
    # choice would invalidate a kept selection
    others = c2.multiselect("Compare with", ids, key="inspect_compare", **keep,
                            max_selections=MAX_COMPARED, format_func=labels.get)
    prompt = st.text_area("Prompt", key="inspect_prompt", height=100, **keep)
    n = int(st.number_input("Number of responses", min_value=1, max_value=MAX_RESPONSES, value=2, key="inspect_n", **keep))
    rcols = st.columns(min(n, 3))
    responses = [rcols[i % len(rcols)].text_area(f"Response {i + 1}", key=f"inspect_resp_{i}", height=120, **keep)
                 for i in range(n)]
    if not st.button("Score", type="primary", key="inspect_score"):
        return
    texts = [r for r in responses if r and r.strip()]
    if not prompt or not prompt.strip() or not texts:
        st.error("Enter a prompt and at least one response.")
        return
    shown = [va, *[v for v in others if v != va]]
    for col, vid in zip(st.columns(len(shown)), shown):
        with col:
            st.subheader(f"Version {vid}")
            try:
                df, note = score_frame(vid, prompt, texts)
            except Exception as exc:  # noqa: BLE001  (a broken model must not take the page down)
                st.error(f"Version {vid} cannot score: {exc}")
                continue
            if note:
                st.warning(note)
            st.dataframe(df, hide_index=True, key=f"scores_{vid}", column_config={
                c: st.column_config.NumberColumn(format="%.3f") for c in ("raw", "z", "sigmoid", "std")
            } | {"percentile": st.column_config.NumberColumn(format="%.1f"),
                 "p_beats_next": st.column_config.NumberColumn(format="%.2f", help=(
                     "calibrated probability that a labeler prefers this response over the next one down: "
                     "sigmoid(raw margin / T), T fitted on the version's validation pairs"))})
            for row in df.itertuples():
                with st.container(border=True):
                    std = "" if row.std is None or row.std != row.std else f", std {row.std:.3f}"
                    st.caption(f"#{row.rank}: raw {row.raw:.3f}, z {row.z:.2f}, sigmoid {row.sigmoid:.2f}{std}")
                    safe_markdown(row.response)
    if len(shown) > 1:
        combined_panel(shown, prompt, texts)


def combined_panel(vids: list[int], prompt: str, texts: list[str]) -> None:
    """Several versions as one reward: their z-scores combined three ways (rm_engine.version_ensemble)."""
    names = ", ".join(str(v) for v in vids[:-1]) + f" and {vids[-1]}"
    st.subheader(f"Versions {names} as one reward")
    st.caption("Raw scores of different versions are on unrelated scales, so they are combined through their z-scores. "
               "`min` and `mean - std` lower the reward where the versions disagree, where a policy could exploit "
               "one model's mistakes.")
    try:
        ens = VersionEnsemble([load_model(v, db.url) for v in vids])
        scores = ens.score(prompt, texts)
    except Exception as exc:  # noqa: BLE001  (e.g. both fell back to the same older version)
        st.error(f"Cannot combine versions {names}: {exc}")
        return
    way = ens.by_combination(scores)
    df = pd.DataFrame({"response": texts, "mean z": way["mean"], "min z": way["min"], "mean - std": way["uwo"],
                       "std": [s.std for s in scores]} | {f"z v{v}": [s.z[v] for s in scores] for v in vids})
    st.dataframe(df.sort_values("mean z", ascending=False, kind="stable"), hide_index=True, key="scores_combined",
                 column_config={c: st.column_config.NumberColumn(format="%.3f") for c in df.columns if c != "response"})


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


# Lazy tabs: only the open tab's panel runs (the disagreement query reads every label).
tabs = st.tabs(["Score responses", "Model vs human labels"], key="inspect_tab", on_change="rerun")
for tab, panel in zip(tabs, (score_panel, disagreement_panel)):
    if tab.open:
        with tab:
            panel()
