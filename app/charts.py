"""Plotly figure builders for the Train, Dashboard and Inspect pages.

Pure functions of dataframes (from ``db.analytics``) and plain metric dicts: no database, no streamlit, no
tensors. Every builder accepts empty input and then returns a figure that says there is nothing to show.
Text from users (prompts, annotator names) only ever reaches plotly as data, which renders it as text.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

#: Accuracy bands (pairwise accuracy on held-out pairs): chance, decent, good, suspicious.
BANDS: tuple[tuple[float, str], ...] = ((0.5, "chance 50%"), (0.7, "decent 70%"), (0.8, "good 80%"), (0.9, "suspicious 90%"))
#: Dataset size tiers (labels): a first model, a solid model, a large-scale model.
TIERS: tuple[tuple[int, str], ...] = ((1_000, "1k"), (10_000, "10k"), (100_000, "100k"))
SOURCE_COLORS = {"expert": "#2e7d32", "crowd": "#1565c0", "ai": "#8e24aa"}
SPLIT_COLORS = {"train": "#9e9e9e", "val": "#1565c0", "test": "#ef6c00"}
_LAYOUT = dict(margin=dict(l=40, r=20, t=50, b=40), height=340, legend=dict(orientation="h", y=-0.2))


def _fig(title: str, **layout: Any) -> go.Figure:
    fig = go.Figure()
    fig.update_layout(title=title, **{**_LAYOUT, **layout})
    return fig


def empty_figure(title: str, message: str = "nothing to show yet") -> go.Figure:
    """A blank figure with a centred message."""
    fig = _fig(title)
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper", font=dict(size=14))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return fig


def _bands(fig: go.Figure) -> None:
    for y, name in BANDS:
        fig.add_hline(y=y, line_dash="dot", line_color="#bdbdbd", annotation_text=name, annotation_position="top left",
                      annotation_font=dict(size=10, color="#757575"))


def accuracy_by_version(acc: pd.DataFrame) -> go.Figure:
    """Pairwise accuracy per version and split (``version``, ``split``, ``accuracy``) against the bands."""
    title = "Accuracy per model version"
    acc = acc.dropna(subset=["accuracy"]) if len(acc) else acc
    if not len(acc):
        return empty_figure(title, "no model version with accuracy metrics yet")
    fig = _fig(title, yaxis=dict(range=[0, 1.02], tickformat=".0%", title="pairwise accuracy"),
               xaxis=dict(title="version", type="category"))
    for split, g in acc.groupby("split", sort=False):
        g = g.sort_values("version")
        fig.add_trace(go.Scatter(x=g["version"].astype(str), y=g["accuracy"], mode="lines+markers", name=str(split),
                                 line=dict(color=SPLIT_COLORS.get(str(split)))))
    _bands(fig)
    return fig


def group_accuracy(groups: pd.DataFrame, title: str) -> go.Figure:
    """Accuracy per group (``split``, ``group``, ``accuracy``, ``n``): per source or per category of a version."""
    groups = groups.dropna(subset=["accuracy"]) if len(groups) else groups
    if not len(groups):
        return empty_figure(title, "not recorded for this version")
    fig = _fig(title, barmode="group", yaxis=dict(range=[0, 1.02], tickformat=".0%"))
    for split, g in groups.groupby("split", sort=False):
        fig.add_trace(go.Bar(x=g["group"].astype(str), y=g["accuracy"], name=str(split), customdata=g["n"],
                             hovertemplate="%{x}: %{y:.1%} (n=%{customdata})<extra></extra>",
                             marker_color=SPLIT_COLORS.get(str(split))))
    _bands(fig)
    return fig


def length_bias(df: pd.DataFrame, title: str) -> go.Figure:
    """Length preference of labels and model, and accuracy by which side is longer (``split``, ``measure``,
    ``value``, ``n``; ``db.version_metrics.version_length_bias``); the 50% line is no preference."""
    if not len(df):
        return empty_figure(title, "not recorded for this version (trained before length bias was measured)")
    fig = _fig(title, barmode="group", yaxis=dict(range=[0, 1.02], tickformat=".0%"), xaxis=dict(tickangle=0))
    for split, g in df.groupby("split", sort=False):
        names = [str(m).replace(" ", "<br>", 1) for m in g["measure"]]  # two short lines instead of slanted text
        fig.add_trace(go.Bar(x=names, y=g["value"], name=str(split), customdata=g["n"],
                             hovertemplate="%{x}: %{y:.1%} (n=%{customdata})<extra></extra>",
                             marker_color=SPLIT_COLORS.get(str(split))))
    fig.add_hline(y=0.5, line_dash="dot", line_color="#bdbdbd", annotation_text="50%", annotation_position="top left")
    return fig


def dataset_size(n_labels: int, by_source: Mapping[str, int] | None = None) -> go.Figure:
    """Labels stored, in total and per source, on a log axis with the 1k / 10k / 100k tiers."""
    rows = [("all", n_labels)] + [(k, v) for k, v in (by_source or {}).items() if v]
    fig = _fig("Dataset size", height=120 + 40 * len(rows), showlegend=False,
               xaxis=dict(type="log", range=[0, 5.3], title="labels"), yaxis=dict(autorange="reversed"))
    fig.add_trace(go.Bar(x=[max(n, 1) for _, n in rows], y=[k for k, _ in rows], orientation="h",
                         text=[f"{n:,}" for _, n in rows], textposition="outside",
                         marker_color=[SOURCE_COLORS.get(k, "#455a64") for k, _ in rows]))
    for n, name in TIERS:
        fig.add_vline(x=n, line_dash="dot", line_color="#757575", annotation_text=name)
    return fig


#: Length of a ``labels_over_time`` period, and the tick format when each period gets its own tick.
PERIODS = {"hour": (pd.Timedelta(hours=1), "%b %d %H:00"), "day": (pd.Timedelta(days=1), "%b %d"),
           "week": (pd.Timedelta(weeks=1), "%b %d")}


def labels_over_time(df: pd.DataFrame, unit: str = "day") -> go.Figure:
    """Labels per period, stacked by source (``period``, ``source``, ``labels``). The axis spans whole periods
    (a single period would otherwise be drawn on a millisecond scale), one tick per period when there are few."""
    title = f"Labels per {unit} by source"
    if not len(df):
        return empty_figure(title, "no labels yet")
    step, tick_format = PERIODS.get(unit, PERIODS["day"])
    periods = pd.to_datetime(df["period"])
    xaxis: dict[str, Any] = dict(type="date", range=[periods.min() - step * 0.6, periods.max() + step * 0.6])
    if periods.nunique() <= 12:
        xaxis.update(tickvals=sorted(periods.unique()), tickformat=tick_format)
    fig = _fig(title, barmode="stack", yaxis=dict(title="labels"), xaxis=xaxis)
    for src, g in df.groupby("source"):
        fig.add_trace(go.Bar(x=g["period"], y=g["labels"], name=str(src), marker_color=SOURCE_COLORS.get(str(src)),
                             width=step.total_seconds() * 1000 * 0.8, customdata=g["cumulative"],
                             hovertemplate="%{x}: %{y} labels (%{customdata} in total)"))
    return fig


def annotator_throughput(df: pd.DataFrame, top: int = 30) -> go.Figure:
    """Labels per annotator (bars coloured by source), with the median seconds per label on hover."""
    title = "Annotator throughput"
    if not len(df):
        return empty_figure(title, "no labels yet")
    d = df.head(top)
    fig = _fig(title, yaxis=dict(title="labels"), xaxis=dict(type="category"))
    for src, g in d.groupby("source", sort=False):
        fig.add_trace(go.Bar(x=g["annotator"].astype(str), y=g["labels"], name=str(src), marker_color=SOURCE_COLORS.get(str(src)),
                             customdata=[f"median {x:.1f} s per label" if x == x and x is not None
                                         else "no time recorded" for x in g["median_seconds"]],
                             hovertemplate="%{x}: %{y} labels, %{customdata}<extra></extra>"))
    return fig


def score_histograms(long: pd.DataFrame) -> go.Figure:
    """Overlaid histograms of chosen vs rejected scores, one panel per source (``source``, ``role``, ``score``)."""
    title = "Scores of chosen vs rejected responses"
    if not len(long):
        return empty_figure(title, "no cached scores yet (a rescore job runs after each training)")
    sources = [s for s in ("expert", "crowd", "ai") if s in set(long["source"])] or sorted(set(long["source"]))
    fig = make_subplots(rows=1, cols=len(sources), subplot_titles=sources, shared_yaxes=True)
    for i, src in enumerate(sources, 1):
        g = long[long["source"] == src]
        for role, color in (("chosen", "#2e7d32"), ("rejected", "#c62828")):
            fig.add_trace(go.Histogram(x=g[g["role"] == role]["score"], name=role, marker_color=color, opacity=0.6,
                                       showlegend=i == 1, legendgroup=role), row=1, col=i)
    fig.update_layout(title=title, barmode="overlay", **_LAYOUT)
    return fig


def margin_histogram(margins: Sequence[float] | pd.Series) -> go.Figure:
    """Distribution of ``score(chosen) - score(rejected)``; left of zero the model disagrees with the label."""
    title = "Margin distribution"
    m = pd.Series(margins, dtype=float).dropna()
    if m.empty:
        return empty_figure(title, "no cached scores yet")
    fig = _fig(title, xaxis=dict(title="chosen - rejected"), yaxis=dict(title="labels"))
    fig.add_trace(go.Histogram(x=m, marker_color="#1565c0", name="margin"))
    fig.add_vline(x=0, line_color="#c62828", annotation_text=f"{(m < 0).mean():.0%} wrong way")
    return fig


def normalized_scores(df: pd.DataFrame) -> go.Figure:
    """Raw, z-score and sigmoid distributions side by side (``raw``, ``z``, ``sigmoid`` columns)."""
    title = "Normalized scores"
    if not len(df):
        return empty_figure(title, "no cached scores yet")
    cols = [c for c in ("raw", "z", "sigmoid") if c in df]
    fig = make_subplots(rows=1, cols=len(cols), subplot_titles=cols)
    for i, c in enumerate(cols, 1):
        fig.add_trace(go.Histogram(x=df[c], name=c, showlegend=False, marker_color="#5c6bc0"), row=1, col=i)
    fig.update_layout(title=title, **_LAYOUT)
    return fig


def reliability_diagram(bins: Iterable[Mapping[str, Any]], ece: float | None, title: str = "Calibration") -> go.Figure:
    """Observed win rate against predicted probability per bin (``rm_engine.metrics.calibration`` bins)."""
    rows = [b for b in bins if isinstance(b, Mapping) and b.get("count")
            and isinstance(b.get("mean_pred"), (int, float)) and isinstance(b.get("frac_pos"), (int, float))]
    if not rows:
        return empty_figure(title, "no calibration data yet")
    t = f"{title} (ECE {ece:.3f})" if isinstance(ece, (int, float)) else title
    fig = _fig(t, xaxis=dict(range=[0, 1], title="predicted P(chosen wins)"), yaxis=dict(range=[0, 1], title="observed"))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dash", color="#9e9e9e"), name="perfect"))
    fig.add_trace(go.Scatter(x=[b["mean_pred"] for b in rows], y=[b["frac_pos"] for b in rows], mode="lines+markers",
                             name="model", marker=dict(size=[6 + min(20, b["count"] ** 0.5) for b in rows]),
                             customdata=[b["count"] for b in rows], hovertemplate="pred %{x:.2f}, obs %{y:.2f}, n=%{customdata}"))
    return fig


def spearman_histogram(per_prompt: Mapping[str, float]) -> go.Figure:
    """Spearman correlation between model scores and human ranks, one value per ranked prompt."""
    title = "Spearman per ranked prompt"
    if not per_prompt:
        return empty_figure(title, "no ranked prompts with cached scores")
    fig = _fig(title, xaxis=dict(range=[-1.05, 1.05], title="Spearman rho"), yaxis=dict(title="prompts"))
    fig.add_trace(go.Histogram(x=list(per_prompt.values()), xbins=dict(start=-1, end=1, size=0.2), marker_color="#00897b"))
    return fig


def agreement_bars(df: pd.DataFrame) -> go.Figure:
    """Agreement statistics with and without ties (``statistic``, ``ties``, ``value``)."""
    title = "Inter-annotator agreement"
    df = df.dropna(subset=["value"]) if len(df) else df
    if not len(df):
        return empty_figure(title, "no pair was labelled by two people yet")
    fig = _fig(title, barmode="group", yaxis=dict(range=[-1, 1], title="value"))
    for ties, g in df.groupby("ties", sort=False):
        fig.add_trace(go.Bar(x=g["statistic"], y=g["value"], name=str(ties)))
    return fig


def annotator_reliability(df: pd.DataFrame) -> go.Figure:
    """Each annotator's estimated accuracy (``annotator``, ``accuracy``, ``labels``, ``weight``), chance marked."""
    title = "Annotator reliability (Dawid-Skene accuracy on pairs labelled by several)"
    if not len(df):
        return empty_figure(title, "no pair has decided labels from two annotators yet")
    d = df.sort_values("accuracy")
    weight = [f"weight {w:.2f}" if w == w and w is not None else "too few labels to weigh" for w in d["weight"]]
    fig = _fig(title, xaxis=dict(range=[0, 1], title="estimated accuracy", tickformat=".0%"),
               height=max(260, 60 + 28 * len(d)))
    fig.add_trace(go.Bar(x=d["accuracy"], y=d["annotator"].astype(str), orientation="h",
                         customdata=list(zip(d["labels"], weight)),
                         hovertemplate="%{y}: %{x:.1%} on %{customdata[0]} labels, %{customdata[1]}<extra></extra>",
                         marker_color=["#9e9e9e" if w is None or w != w else "#1565c0" for w in d["weight"]]))
    fig.add_vline(x=0.5, line_dash="dot", annotation_text="chance")
    return fig


def labels_per_category(df: pd.DataFrame) -> go.Figure:
    """Labels per prompt category (``category``, ``labels``, ``prompts``)."""
    title = "Labels per category"
    if not len(df):
        return empty_figure(title, "no labels yet")
    fig = _fig(title, xaxis=dict(type="category"), yaxis=dict(title="labels"))
    fig.add_trace(go.Bar(x=df["category"].astype(str), y=df["labels"], customdata=df["prompts"],
                         hovertemplate="%{x}: %{y} labels on %{customdata} prompts<extra></extra>", marker_color="#6d4c41"))
    return fig


def coverage_histogram(similarity: Sequence[float], threshold: float) -> go.Figure:
    """Similarity of each downstream prompt to its nearest labelled prompt, with the coverage threshold."""
    title = "Prompt coverage"
    if not len(similarity):
        return empty_figure(title, "upload downstream prompts to check them")
    fig = _fig(title, xaxis=dict(range=[-0.02, 1.02], title="similarity to the nearest labelled prompt"),
               yaxis=dict(title="prompts"))
    fig.add_trace(go.Histogram(x=list(similarity), xbins=dict(start=0, end=1, size=0.05), marker_color="#00897b"))
    fig.add_vline(x=threshold, line_color="#c62828", annotation_text="covered from here")
    return fig


def loss_curve(history: Sequence[Sequence[float]] | None, title: str = "Training loss") -> go.Figure:
    """Loss against step from a job's ``progress["loss_history"]`` (``[[step, loss], ...]``)."""
    pts = [(float(p[0]), float(p[1])) for p in (history or []) if len(p) >= 2 and p[1] is not None]
    if not pts:
        return empty_figure(title, "waiting for the first steps")
    fig = _fig(title, height=260, xaxis=dict(title="step"), yaxis=dict(title="loss"))
    fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines", name="loss"))
    fig.add_hline(y=0.693, line_dash="dot", line_color="#bdbdbd", annotation_text="ln 2 (chance)")
    return fig


def cv_folds(result: Mapping[str, Any] | None, title: str = "Cross-validation: held-out accuracy per fold") -> go.Figure:
    """One bar per fold (its model's accuracy on the prompts it did not see, ``n`` in the hover), the pooled
    accuracy as a line with its ±1 standard-error band, against the accuracy bands (a ``cv`` job's result)."""
    folds = [f for f in (result or {}).get("folds", []) if f.get("accuracy") is not None]
    if not folds:
        return empty_figure(title, "no cross-validation result yet")
    fig = _fig(title, yaxis=dict(range=[0, 1.02], tickformat=".0%", title="held-out accuracy"),
               xaxis=dict(title="fold", type="category"))
    fig.add_trace(go.Bar(x=[str(f["fold"] + 1) for f in folds], y=[f["accuracy"] for f in folds], name="fold",
                         customdata=[f["n_held_out"] for f in folds], marker_color=SPLIT_COLORS["val"],
                         hovertemplate="fold %{x}: %{y:.1%} (n=%{customdata})<extra></extra>"))
    acc, se = result.get("accuracy"), result.get("std_error")
    if acc is not None:
        fig.add_hline(y=acc, line_color="#ef6c00", annotation_text=f"pooled {acc:.1%}", annotation_position="top right")
        if se:
            fig.add_hrect(y0=acc - se, y1=acc + se, fillcolor="#ef6c00", opacity=0.12, line_width=0)
    _bands(fig)
    return fig


def z_by_version(table: pd.DataFrame, versions: Sequence[int]) -> go.Figure:
    """Each response's z-score under each version, as grouped bars (the Inspect comparison: ``response`` and
    ``v<id> z`` columns); responses are numbered as entered, their text on hover."""
    title = "z-score of each response per version"
    if not len(table) or not versions:
        return empty_figure(title, "score responses with two versions or more to compare them")
    fig = _fig(title, barmode="group", xaxis=dict(type="category", title="response"),
               yaxis=dict(title="z (standardised score)", zeroline=True, zerolinecolor="#9e9e9e"))
    numbers = [str(r).split(".", 1)[0] for r in table["response"]]
    texts = [str(r).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") for r in table["response"]]
    for v in versions:
        fig.add_trace(go.Bar(x=numbers, y=table[f"v{v} z"], name=f"v{v}", customdata=texts,
                             hovertemplate=f"v{v}: z %{{y:.2f}}<br>%{{customdata}}<extra></extra>"))
    return fig
