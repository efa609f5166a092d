"""Dashboard queries: labels over time, throughput, cached-score distributions, agreement inputs, coverage.

Every function takes an open (read) ``Session`` and returns a pandas ``DataFrame`` (or plain values) ready for
the charts in ``app/charts.py``. Nothing here trains or scores: model scores come from the cached
``response_scores`` rows written by the rescore job. No torch, no streamlit.

Orientation: a label's ``outcome`` is relative to the stored comparison (``a`` is ``response_a_id``). Frames
that talk about *chosen* and *rejected* keep only labels with outcome ``a`` or ``b``.
"""
from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import String, case, func, literal_column, select, type_coerce
from sqlalchemy.orm import Session, aliased

from db.models import (
    Annotator,
    Comparison,
    Label,
    ModelVersion,
    Prompt,
    Ranking,
    RankingItem,
    Response,
    ResponseScore,
)

SOURCES = ("expert", "crowd", "ai")


def _val(x: Any) -> Any:
    """Enum members to their string value (SQLAlchemy returns enums for enum columns)."""
    return getattr(x, "value", x)


def _text(col: Any) -> Any:
    """An enum column read as its plain string (skips per-row enum conversion on large result sets)."""
    return type_coerce(col, String).label(col.key)


def _frame(rows: Sequence[Any], columns: list[str]) -> pd.DataFrame:
    df = pd.DataFrame([tuple(r) for r in rows], columns=columns)
    for c in columns:
        if df[c].dtype == object and len(df) and type(df[c].iloc[0]) is not str:
            df[c] = df[c].map(_val)
    return df


def _bucket(session: Session, freq: str) -> Any:
    """SQL expression: a label's UTC day (``YYYY-MM-DD``) or hour (``YYYY-MM-DD HH``) as text."""
    hourly = freq == "h"
    if session.get_bind().dialect.name == "postgresql":
        fmt = literal_column("'YYYY-MM-DD HH24'" if hourly else "'YYYY-MM-DD'")
        return func.to_char(func.timezone(literal_column("'UTC'"), Label.created_at), fmt, type_=String)
    return func.substr(Label.created_at, literal_column("1"), literal_column("13" if hourly else "10"), type_=String)  # stored as naive UTC text


def labels_over_time(session: Session, freq: str = "D") -> pd.DataFrame:
    """Labels per period and source: columns ``period`` (start of period, UTC), ``source``, ``labels``,
    ``cumulative`` (running total per source). ``freq``: ``"h"`` (hours), ``"D"`` (days) or ``"W"`` (weeks).

    Counted in SQL per day (or hour), so 100k labels cost one small result set."""
    if freq not in ("h", "D", "W"):
        raise ValueError(f"labels_over_time: freq must be 'h', 'D' or 'W', got {freq!r}")
    bucket = _bucket(session, freq).label("bucket")
    rows = session.execute(select(bucket, Label.source, func.count()).group_by(bucket, Label.source)).all()
    df = _frame(rows, ["bucket", "source", "labels"])
    if df.empty:
        return pd.DataFrame(columns=["period", "source", "labels", "cumulative"])
    df["period"] = pd.to_datetime(df["bucket"], format="%Y-%m-%d %H" if freq == "h" else "%Y-%m-%d", utc=True)
    if freq == "W":
        df["period"] = df["period"].dt.tz_localize(None).dt.to_period("W").dt.start_time.dt.tz_localize("UTC")
    out = df.groupby(["period", "source"])["labels"].sum().reset_index().sort_values(["source", "period"])
    out["cumulative"] = out.groupby("source")["labels"].cumsum()
    return out.sort_values(["period", "source"]).reset_index(drop=True)


def annotator_throughput(session: Session, now: datetime | None = None, median_sample: int = 20_000) -> pd.DataFrame:
    """Per annotator: ``annotator``, ``source`` (their most used), ``labels``, ``labels_24h``,
    ``median_seconds`` (time spent per label over the most recent ``median_sample`` labels that record it),
    ``first``, ``last``, ``labels_per_hour`` (over the span between their first and last label; ``NaN`` with
    fewer than two labels). Counts come from SQL aggregates."""
    cols = ["annotator", "source", "labels", "labels_24h", "median_seconds", "first", "last", "labels_per_hour"]
    now = now or datetime.now(timezone.utc)
    recent = func.sum(case((Label.created_at >= now - timedelta(days=1), 1), else_=0))
    rows = session.execute(
        select(Annotator.name, Label.source, func.count(), recent, func.min(Label.created_at), func.max(Label.created_at))
        .join(Annotator, Label.annotator_id == Annotator.id)
        .group_by(Annotator.name, Label.source)
    ).all()
    per = _frame(rows, ["annotator", "source", "labels", "labels_24h", "first", "last"])
    if per.empty:
        return pd.DataFrame(columns=cols)
    secs = _frame(
        session.execute(
            select(Annotator.name, Label.time_spent_ms).join(Annotator, Label.annotator_id == Annotator.id)
            .where(Label.time_spent_ms.is_not(None)).order_by(Label.id.desc()).limit(median_sample)
        ).all(),
        ["annotator", "ms"],
    )
    g = per.groupby("annotator")
    out = pd.DataFrame(
        {
            "source": per.sort_values("labels", ascending=False, kind="stable").groupby("annotator")["source"].first(),
            "labels": g["labels"].sum(),
            "labels_24h": g["labels_24h"].sum().astype(int),
            "median_seconds": secs.groupby("annotator")["ms"].median() / 1000.0 if len(secs) else np.nan,
            "first": pd.to_datetime(g["first"].min(), utc=True),
            "last": pd.to_datetime(g["last"].max(), utc=True),
        }
    )
    hours = (out["last"] - out["first"]).dt.total_seconds() / 3600.0
    out["labels_per_hour"] = np.where((out["labels"] > 1) & (hours > 0), out["labels"] / hours.where(hours > 0, 1), np.nan)
    return out.reset_index(names="annotator").sort_values("labels", ascending=False).reset_index(drop=True)[cols]


def labels_per_category(session: Session) -> pd.DataFrame:
    """Labels and labelled prompts per prompt category (``(none)`` for prompts without one)."""
    rows = session.execute(
        select(Prompt.category, func.count(Label.id), func.count(func.distinct(Prompt.id)))
        .select_from(Label)
        .join(Comparison, Label.comparison_id == Comparison.id)
        .join(Prompt, Comparison.prompt_id == Prompt.id)
        .where(Label.superseded_by_id.is_(None))
        .group_by(Prompt.category)
    ).all()
    df = _frame(rows, ["category", "labels", "prompts"])
    df["category"] = df["category"].fillna("(none)")
    return df.sort_values("labels", ascending=False).reset_index(drop=True)


def _score_table(session: Session, version_id: int) -> pd.DataFrame:
    """Cached scores of one version indexed by ``response_id``: columns ``score``, ``std``."""
    rows = session.execute(
        select(ResponseScore.response_id, ResponseScore.score, ResponseScore.std).where(ResponseScore.model_version_id == version_id)
    ).all()
    return pd.DataFrame([tuple(r) for r in rows], columns=["response_id", "score", "std"]).set_index("response_id")


def label_scores(session: Session, version_id: int, limit: int | None = None) -> pd.DataFrame:
    """Every label (the most recent ``limit`` when given) whose two responses have cached scores under
    ``version_id``.

    Columns: ``label_id``, ``comparison_id``, ``source``, ``outcome``, ``split``, ``score_a``, ``score_b``,
    ``std_a``, ``std_b`` and, for outcomes ``a``/``b`` (``NaN`` otherwise): ``chosen_score``,
    ``rejected_score``, ``margin`` (chosen - rejected; negative means the model disagrees with the label).

    Labels and scores are read by two plain queries and joined in pandas (a four-way SQL join leaves SQLite's
    planner, without statistics, scanning the score table once per score).
    """
    cols = ["label_id", "comparison_id", "source", "outcome", "split", "score_a", "score_b", "std_a", "std_b"]
    scores = _score_table(session, version_id)
    if scores.empty:
        df = pd.DataFrame(columns=cols)
    else:
        rows = session.execute(
            select(Label.id, Label.comparison_id, _text(Label.source), _text(Label.outcome), _text(Label.split),
                   Comparison.response_a_id, Comparison.response_b_id)
            .join(Comparison, Label.comparison_id == Comparison.id)
            .order_by(Label.id.desc())
            .limit(limit)
        ).all()[::-1]
        df = _frame(rows, ["label_id", "comparison_id", "source", "outcome", "split", "ra", "rb"])
        df = df[df["ra"].isin(scores.index) & df["rb"].isin(scores.index)]
        sa, sb = scores.reindex(df["ra"]), scores.reindex(df["rb"])
        df = df.assign(score_a=sa["score"].to_numpy(), score_b=sb["score"].to_numpy(),
                       std_a=sa["std"].to_numpy(), std_b=sb["std"].to_numpy())[cols].reset_index(drop=True)
    is_a, is_b = df["outcome"] == "a", df["outcome"] == "b"
    df["chosen_score"] = np.where(is_a, df["score_a"], np.where(is_b, df["score_b"], np.nan)).astype(float)
    df["rejected_score"] = np.where(is_a, df["score_b"], np.where(is_b, df["score_a"], np.nan)).astype(float)
    df["margin"] = df["chosen_score"] - df["rejected_score"]
    return df


def chosen_rejected_long(label_frame: pd.DataFrame) -> pd.DataFrame:
    """``label_scores`` output as long rows ``source``, ``role`` (chosen/rejected), ``score`` for histograms."""
    prefs = label_frame.dropna(subset=["margin"]) if len(label_frame) else label_frame
    parts = [
        pd.DataFrame({"source": prefs["source"], "role": role, "score": prefs[f"{role}_score"]})
        for role in ("chosen", "rejected")
    ] if len(prefs) else []
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["source", "role", "score"])


def multi_rated_labels(session: Session, min_labels: int = 2, max_comparisons: int | None = None) -> pd.DataFrame:
    """Labels of comparisons labelled at least ``min_labels`` times (the newest ``max_comparisons`` such
    comparisons when given): ``comparison_id``, ``label_id``, ``annotator``, ``source``, ``outcome`` and
    ``guidelines`` (the guidelines revision the label was made under, None when unknown). Uses the denormalized
    ``label_count``."""
    multi = select(Comparison.id).where(Comparison.label_count >= min_labels)
    if max_comparisons is not None:
        multi = multi.order_by(Comparison.id.desc()).limit(max_comparisons)
    rows = session.execute(
        select(Label.comparison_id, Label.id, Annotator.name, _text(Label.source), _text(Label.outcome), Label.extra)
        .join(Annotator, Label.annotator_id == Annotator.id)
        .where(Label.comparison_id.in_(multi.scalar_subquery()), Label.superseded_by_id.is_(None))  # changed: new only
        .order_by(Label.comparison_id, Label.id)
    ).all()
    rows = [(*r[:5], (r[5] or {}).get("guidelines") if isinstance(r[5], dict) else None) for r in rows]
    return _frame(rows, ["comparison_id", "label_id", "annotator", "source", "outcome", "guidelines"])


def agreement_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """``multi_rated_labels`` rows as the records ``rm_engine.quality.agreement`` expects (item, rater, outcome, source,
    guidelines)."""
    guides = frame["guidelines"] if "guidelines" in frame else [None] * len(frame)
    return [
        {"item": int(c), "rater": str(a), "outcome": str(o), "source": str(s),
         "guidelines": None if g is None or g != g else int(g)}
        for c, a, o, s, g in zip(frame["comparison_id"], frame["annotator"], frame["outcome"], frame["source"],
                                 guides)
    ]


def conflicting_labels(session: Session, limit: int = 200, multi: pd.DataFrame | None = None) -> pd.DataFrame:
    """Comparisons where at least one label says ``a`` and another says ``b``, most contested first.

    Columns: ``comparison_id``, ``prompt``, ``response_a``, ``response_b``, ``n_a``, ``n_b``, ``n_tie``,
    ``n_both_bad``, ``annotators`` (comma-separated names). ``multi``: an already loaded
    ``multi_rated_labels`` frame (saves the query).
    """
    multi = multi_rated_labels(session) if multi is None else multi
    cols = ["comparison_id", "prompt", "response_a", "response_b", "n_a", "n_b", "n_tie", "n_both_bad", "annotators"]
    if multi.empty:
        return pd.DataFrame(columns=cols)
    counts = pd.crosstab(multi["comparison_id"], multi["outcome"])
    for o in ("a", "b", "tie", "both_bad"):
        if o not in counts:
            counts[o] = 0
    counts = counts[(counts["a"] > 0) & (counts["b"] > 0)]
    if counts.empty:
        return pd.DataFrame(columns=cols)
    counts = counts.assign(contest=counts[["a", "b"]].min(axis=1)).sort_values(["contest", "a"], ascending=False).head(limit)
    ids = [int(i) for i in counts.index]
    ra, rb = aliased(Response), aliased(Response)
    texts = {
        cid: (p, a, b)
        for cid, p, a, b in session.execute(
            select(Comparison.id, Prompt.text, ra.text, rb.text)
            .join(Prompt, Comparison.prompt_id == Prompt.id)
            .join(ra, Comparison.response_a_id == ra.id)
            .join(rb, Comparison.response_b_id == rb.id)
            .where(Comparison.id.in_(ids))
        )
    }
    names = multi[multi["comparison_id"].isin(ids)].groupby("comparison_id")["annotator"].agg(lambda s: ", ".join(sorted(set(s))))
    out = pd.DataFrame(
        {
            "comparison_id": ids,
            "prompt": [texts[i][0] for i in ids],
            "response_a": [texts[i][1] for i in ids],
            "response_b": [texts[i][2] for i in ids],
            "n_a": counts["a"].to_numpy(int),
            "n_b": counts["b"].to_numpy(int),
            "n_tie": counts["tie"].to_numpy(int),
            "n_both_bad": counts["both_bad"].to_numpy(int),
            "annotators": [names.get(i, "") for i in ids],
        }
    )
    return out[cols]


def model_disagreements(session: Session, version_id: int, limit: int = 50) -> pd.DataFrame:
    """Labels where the model most disagrees with the human (most negative ``margin`` first): likely label
    errors or model blind spots. Columns: ``label_id``, ``comparison_id``, ``source``, ``annotator``,
    ``prompt``, ``chosen``, ``rejected``, ``chosen_score``, ``rejected_score``, ``margin``."""
    frame = label_scores(session, version_id)
    cols = ["label_id", "comparison_id", "source", "annotator", "prompt", "chosen", "rejected", "chosen_score", "rejected_score", "margin"]
    worst = frame.dropna(subset=["margin"]).sort_values("margin").head(limit) if len(frame) else frame
    worst = worst[worst["margin"] < 0] if len(worst) else worst
    if not len(worst):
        return pd.DataFrame(columns=cols)
    ids = [int(i) for i in worst["label_id"]]
    ra, rb = aliased(Response), aliased(Response)
    info = {
        lid: (ann, ptext, a, b)
        for lid, ann, ptext, a, b in session.execute(
            select(Label.id, Annotator.name, Prompt.text, ra.text, rb.text)
            .join(Annotator, Label.annotator_id == Annotator.id)
            .join(Comparison, Label.comparison_id == Comparison.id)
            .join(Prompt, Comparison.prompt_id == Prompt.id)
            .join(ra, Comparison.response_a_id == ra.id)
            .join(rb, Comparison.response_b_id == rb.id)
            .where(Label.id.in_(ids))
        )
    }
    worst = worst.assign(
        annotator=[info[i][0] for i in ids],
        prompt=[info[i][1] for i in ids],
        chosen=[info[i][2] if o == "a" else info[i][3] for i, o in zip(ids, worst["outcome"])],
        rejected=[info[i][3] if o == "a" else info[i][2] for i, o in zip(ids, worst["outcome"])],
    )
    return worst[cols].reset_index(drop=True)


def ranking_score_items(session: Session, version_id: int) -> pd.DataFrame:
    """Items of stored rankings with their cached scores under ``version_id``: ``ranking_id``, ``prompt_id``,
    ``source``, ``rank`` (1 = best), ``score``. Items without a cached score are left out."""
    cols = ["ranking_id", "prompt_id", "source", "rank", "score"]
    rows = session.execute(
        select(Ranking.id, Ranking.prompt_id, Ranking.source, RankingItem.rank, RankingItem.response_id)
        .join(RankingItem, RankingItem.ranking_id == Ranking.id)
        .order_by(Ranking.id, RankingItem.position)
    ).all()
    if not rows:
        return pd.DataFrame(columns=cols)
    df = _frame(rows, ["ranking_id", "prompt_id", "source", "rank", "response_id"])
    ids = [int(x) for x in df["response_id"].unique()]
    got = {int(r): float(sc) for r, sc in session.execute(
        select(ResponseScore.response_id, ResponseScore.score)
        .where(ResponseScore.model_version_id == version_id, ResponseScore.response_id.in_(ids))
    )} if len(ids) <= 30000 else _score_table(session, version_id)["score"].to_dict()
    df["score"] = df["response_id"].map(got)
    return df.dropna(subset=["score"])[cols].reset_index(drop=True)


def spearman_inputs(items: pd.DataFrame) -> list[tuple[int, list[float], list[float]]]:
    """``ranking_score_items`` grouped as ``(ranking_id, scores, ranks)`` for ``rm_engine.metrics.spearman_per_prompt``."""
    if items.empty:
        return []
    return [
        (int(rid), g["score"].astype(float).tolist(), g["rank"].astype(float).tolist())
        for rid, g in items.groupby("ranking_id", sort=True)
    ]


def scored_responses(session: Session, version_id: int, limit: int = 2000) -> pd.DataFrame:
    """Cached scores with their texts, best first: ``response_id``, ``prompt``, ``response``, ``model``,
    ``score``, ``std``."""
    rows = session.execute(
        select(Response.id, Prompt.text, Response.text, Response.model, ResponseScore.score, ResponseScore.std)
        .join(Response, ResponseScore.response_id == Response.id)
        .join(Prompt, Response.prompt_id == Prompt.id)
        .where(ResponseScore.model_version_id == version_id)
        .order_by(ResponseScore.score.desc())
        .limit(limit)
    ).all()
    return _frame(rows, ["response_id", "prompt", "response", "model", "score", "std"])


def labelled_prompts(session: Session, limit: int = 20000) -> pd.DataFrame:
    """Prompts that carry at least one label or ranking: ``prompt_id``, ``text``, ``category``."""
    labelled = select(Comparison.prompt_id).join(Label, Label.comparison_id == Comparison.id)
    ranked = select(Ranking.prompt_id)
    rows = session.execute(
        select(Prompt.id, Prompt.text, Prompt.category)
        .where(Prompt.id.in_(labelled.union(ranked).scalar_subquery()))
        .order_by(Prompt.id)
        .limit(limit)
    ).all()
    return _frame(rows, ["prompt_id", "text", "category"])


def label_count(session: Session) -> int:
    """Number of current labels (a verdict its annotator changed counts once, as its new label)."""
    return int(session.scalar(select(func.count(Label.id)).where(Label.superseded_by_id.is_(None))) or 0)


def data_fingerprint(session: Session) -> tuple[int, ...]:
    """A cheap summary that changes whenever labels, rankings, versions or cached scores change: the
    dashboard's cache key (counts and max ids, a handful of index lookups)."""
    out: list[int] = []
    for model in (Label, Ranking, ModelVersion, ResponseScore):
        n, top = session.execute(select(func.count(), func.max(model.id)).select_from(model)).one()
        out += [int(n or 0), int(top or 0)]
    return tuple(out)
