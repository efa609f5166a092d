"""The Inspect page's "Score responses" tab: a prompt and its responses scored by one model version (a ranking
with raw, z, sigmoid, percentile, ensemble std and the calibrated chance of beating the next one), or by several
versions compared side by side (one table of every version's raw, z and sigmoid per response, a chart of each
response's z per version) and combined into one reward (``rm_engine.serving.ensemble``).

Tables are ``st.table``: every column in view, numbers formatted, no cell hidden in a scrolled grid.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
import streamlit as st

from app import charts
from app.render import safe_markdown
from app.resources import database, settings
from db.session import Database
from rm_engine.serving.ensemble import VersionEnsemble
from rm_engine.serving.scoring import RewardModel, load_usable

MAX_RESPONSES = 20
MAX_COMPARED = 3  # versions beside the first: four versions in one table at most
SHORT = 60  # characters of a response in a table (the full text is shown below it)
MEASURES = ("raw", "z", "sigmoid")
P_NEXT_HELP = ("p_beats_next: calibrated probability that a labeler prefers a response over the next one down "
               "(sigmoid(raw margin / T), T fitted on the version's validation pairs); the last response has no "
               "next one.")


@st.cache_resource(show_spinner="Loading the reward model...", max_entries=4)
def load_model(version_id: int, db_url: str) -> RewardModel:
    """The reward model of a version (or the newest usable one before it, when its files are damaged)."""
    return load_usable(database(), settings(), version_id)


def short(text: str, n: int = SHORT) -> str:
    """One line of at most ``n`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= n else flat[: n - 1] + "…"


def score_frame(model: RewardModel, prompt: str, texts: Sequence[str]) -> pd.DataFrame:
    """Scores of ``texts`` by one model, best first: ``rank``, ``response`` (its input position ``n``), ``raw``,
    ``z``, ``sigmoid``, ``percentile``, ``std`` and ``p_beats_next`` (NaN for the last)."""
    scores = model.score(prompt, list(texts))
    df = pd.DataFrame({
        "n": range(1, len(texts) + 1), "response": list(texts), "raw": [sc.raw for sc in scores],
        "z": [sc.z for sc in scores], "sigmoid": [sc.sigmoid for sc in scores],
        "percentile": [sc.percentile for sc in scores], "std": [sc.std for sc in scores],
    }).sort_values("raw", ascending=False, kind="stable").reset_index(drop=True)
    df.insert(0, "rank", range(1, len(df) + 1))
    raw = df["raw"].tolist()
    df["p_beats_next"] = [model.preference_probability(a, b) for a, b in zip(raw, raw[1:])] + [float("nan")]
    return df.astype({"std": float, "p_beats_next": float})


def comparison_frame(frames: Mapping[int, pd.DataFrame]) -> pd.DataFrame:
    """One row per response in input order (``response``: ``"1. text..."``), and per version its ``v<id> raw``,
    ``z`` and ``sigmoid`` columns, side by side (four versions' twelve columns fit a laptop screen; each version's
    ranks are in its own table)."""
    first = next(iter(frames.values())).sort_values("n")
    out = pd.DataFrame({"response": [f"{n}. {short(t, SHORT // 2)}" for n, t in zip(first["n"], first["response"])]})
    for vid, df in frames.items():
        d = df.sort_values("n").reset_index(drop=True)
        for m in MEASURES:
            out[f"v{vid} {m}"] = d[m].to_numpy()
    return out


def combined_frame(texts: Sequence[str], way: Mapping[str, Sequence[float]], std: Sequence[float],
                   n_versions: int) -> tuple[pd.DataFrame, str]:
    """The combined rewards per response, best mean first, and a note on the columns. With two versions
    ``mean - std`` equals ``min z`` (the population std of two values is half their gap), so it is left out."""
    df = pd.DataFrame({"response": [f"{i}. {short(t)}" for i, t in enumerate(texts, 1)], "mean z": way["mean"],
                       "min z": way["min"], "mean - std": way["uwo"], "std of z": std})
    if n_versions == 2:
        note = ("With two versions `mean - std` is the same as `min z` (the std of two values is half their gap), so "
                "only `min z` is shown.")
        df = df.drop(columns="mean - std")
    else:
        note = "`min z` is the most pessimistic version; `mean - std` lowers the mean by how much the versions disagree."
    return df.sort_values("mean z", ascending=False, kind="stable").reset_index(drop=True), note


def _table(df: pd.DataFrame) -> None:
    """``df`` as a static table: rank as whole numbers, percentile to 0.1, scores to 0.001, a missing value as –."""
    fmt = {c: "{:.0f}" if c.endswith("rank") else "{:.1f}" if c == "percentile" else "{:.3f}"
           for c in df.columns if c != "response"}
    st.table(df.style.format(fmt, na_rep="–"), border="horizontal", hide_index=True)


def score_panel(db: Database, ids: Sequence[int], labels: Mapping[int, str]) -> None:
    """Score a prompt and its responses with one version, or several compared (inputs kept for the session)."""
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
    frames: dict[int, pd.DataFrame] = {}
    for vid in [va, *[v for v in others if v != va]]:
        try:
            model = load_model(vid, db.url)
            frames[vid] = score_frame(model, prompt, texts)
        except Exception as exc:  # noqa: BLE001  (a broken model must not take the page down)
            st.error(f"Version {vid} cannot score: {exc}")
            continue
        if note := model.fallback_message or (None if model.version_id == vid else f"scored with version {model.version_id}"):
            st.warning(f"Version {vid}: {note}")
    if len(frames) == 1:
        one_version(*frames.items())
    elif frames:
        compared(frames)
        combined_panel(db, list(frames), prompt, texts)


def one_version(item: tuple[int, pd.DataFrame]) -> None:
    """One version's ranking, then each response in full."""
    vid, df = item
    st.subheader(f"Version {vid}")
    _table(df.assign(response=df["response"].map(short)).drop(columns="n"))
    st.caption(P_NEXT_HELP)
    for row in df.itertuples():
        with st.container(border=True):
            std = "" if row.std != row.std else f", std {row.std:.3f}"
            st.caption(f"#{row.rank} (response {row.n}): raw {row.raw:.3f}, z {row.z:.2f}, sigmoid {row.sigmoid:.2f}{std}")
            safe_markdown(row.response)


def compared(frames: Mapping[int, pd.DataFrame]) -> None:
    """Several versions on the same responses: every number side by side, the z-scores as a chart, the texts."""
    vids = list(frames)
    st.subheader("Versions " + ", ".join(str(v) for v in vids[:-1]) + f" and {vids[-1]} compared")
    table = comparison_frame(frames)
    _table(table)
    st.caption("Raw scores of different versions are on unrelated scales: compare their ranks and z-scores (each "
               "version's raw score standardised by its own training statistics).")
    st.plotly_chart(charts.z_by_version(table, vids), key="z_by_version")
    first = next(iter(frames.values())).sort_values("n")
    with st.expander("Each version's ranking (percentile, ensemble std, P(beats the next))"):
        for vid, df in frames.items():
            st.markdown(f"**Version {vid}**")
            _table(df.assign(response=df["response"].map(short)).drop(columns="n"))
        st.caption(P_NEXT_HELP)
    ranks = {vid: dict(zip(df["n"], df["rank"])) for vid, df in frames.items()}
    for row in first.itertuples():
        with st.container(border=True):
            st.caption(f"Response {row.n}: " + " · ".join(
                f"v{v} #{ranks[v][row.n]}, z {table.loc[row.n - 1, f'v{v} z']:.2f}" for v in vids))
            safe_markdown(row.response)


def combined_panel(db: Database, vids: list[int], prompt: str, texts: list[str]) -> None:
    """Several versions as one reward: their z-scores combined three ways (rm_engine.serving.ensemble)."""
    names = ", ".join(str(v) for v in vids[:-1]) + f" and {vids[-1]}"
    st.subheader(f"Versions {names} as one reward")
    try:
        ens = VersionEnsemble([load_model(v, db.url) for v in vids])
        scores = ens.score(prompt, texts)
    except Exception as exc:  # noqa: BLE001  (e.g. both fell back to the same older version)
        st.error(f"Cannot combine versions {names}: {exc}")
        return
    df, note = combined_frame(texts, ens.by_combination(scores), [s.std for s in scores], len(vids))
    _table(df)
    st.caption("Combined through z-scores (raw scores of different versions are on unrelated scales). `min` and "
               f"`mean - std` lower the reward where the versions disagree, where a policy could exploit one model's "
               f"mistakes. {note}")
