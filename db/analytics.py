"""Dashboard queries: labels over time, throughput, cached-score distributions, agreement inputs, coverage.

Every function takes an open (read) ``Session`` and returns a pandas ``DataFrame`` (or plain values) ready for
the charts in ``app/charts.py``. Nothing here trains or scores: model scores come from the cached
``response_scores`` rows written by the rescore job. No torch, no streamlit.

Orientation: a label's ``outcome`` is relative to the stored comparison (``a`` is ``response_a_id``). Frames
that talk about *chosen* and *rejected* keep only labels with outcome ``a`` or ``b``.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, Sequence

import numpy as np
import pandas as pd
from sqlalchemy import and_, func, select
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


def _frame(rows: Sequence[Any], columns: list[str]) -> pd.DataFrame:
    df = pd.DataFrame([tuple(r) for r in rows], columns=columns)
    for c in columns:
        if df[c].dtype == object and len(df):
            df[c] = df[c].map(_val)
    return df


def labels_over_time(session: Session, freq: str = "D") -> pd.DataFrame:
    """Labels per period and source: columns ``period`` (start of period, UTC), ``source``, ``labels``,
    ``cumulative`` (running total per source). ``freq`` is a pandas offset alias (``"h"``, ``"D"``, ``"W"``)."""
    rows = session.execute(select(Label.created_at, Label.source)).all()
    df = _frame(rows, ["created_at", "source"])
    if df.empty:
        return pd.DataFrame(columns=["period", "source", "labels", "cumulative"])
    df["period"] = pd.to_datetime(df["created_at"], utc=True).dt.floor(freq) if freq in ("h", "D") else (
        pd.to_datetime(df["created_at"], utc=True).dt.tz_localize(None).dt.to_period(freq).dt.start_time
    )
    out = df.groupby(["period", "source"]).size().rename("labels").reset_index().sort_values(["source", "period"])
    out["cumulative"] = out.groupby("source")["labels"].cumsum()
    return out.sort_values(["period", "source"]).reset_index(drop=True)


def annotator_throughput(session: Session, now: datetime | None = None) -> pd.DataFrame:
    """Per annotator: ``annotator``, ``source`` (their most used), ``labels``, ``labels_24h``,
    ``median_seconds`` (time spent per label, where recorded), ``first``, ``last``, ``labels_per_hour``
    (over the span between their first and last label; ``NaN`` with fewer than two labels)."""
    rows = session.execute(
        select(Annotator.name, Label.source, Label.created_at, Label.time_spent_ms).join(
            Annotator, Label.annotator_id == Annotator.id
        )
    ).all()
    cols = ["annotator", "source", "labels", "labels_24h", "median_seconds", "first", "last", "labels_per_hour"]
    df = _frame(rows, ["annotator", "source", "created_at", "time_spent_ms"])
    if df.empty:
        return pd.DataFrame(columns=cols)
    now = now or datetime.now(timezone.utc)
    df["created_at"] = pd.to_datetime(df["created_at"], utc=True)
    recent = df["created_at"] >= pd.Timestamp(now - timedelta(days=1))
    g = df.assign(recent=recent, secs=df["time_spent_ms"].astype(float) / 1000.0).groupby("annotator")
    out = pd.DataFrame(
        {
            "source": g["source"].agg(lambda s: s.value_counts().index[0]),
            "labels": g.size(),
            "labels_24h": g["recent"].sum().astype(int),
            "median_seconds": g["secs"].median(),
            "first": g["created_at"].min(),
            "last": g["created_at"].max(),
        }
    )
    hours = (out["last"] - out["first"]).dt.total_seconds() / 3600.0
    out["labels_per_hour"] = np.where((out["labels"] > 1) & (hours > 0), out["labels"] / hours.where(hours > 0, 1), np.nan)
    return out.reset_index().sort_values("labels", ascending=False).reset_index(drop=True)[cols]


def labels_per_category(session: Session) -> pd.DataFrame:
    """Labels and labelled prompts per prompt category (``(none)`` for prompts without one)."""
    rows = session.execute(
        select(Prompt.category, func.count(Label.id), func.count(func.distinct(Prompt.id)))
        .select_from(Label)
        .join(Comparison, Label.comparison_id == Comparison.id)
        .join(Prompt, Comparison.prompt_id == Prompt.id)
        .group_by(Prompt.category)
    ).all()
    df = _frame(rows, ["category", "labels", "prompts"])
    df["category"] = df["category"].fillna("(none)")
    return df.sort_values("labels", ascending=False).reset_index(drop=True)


def label_scores(session: Session, version_id: int) -> pd.DataFrame:
    """Every label whose two responses have cached scores under ``version_id``.

    Columns: ``label_id``, ``comparison_id``, ``source``, ``outcome``, ``split``, ``score_a``, ``score_b``,
    ``std_a``, ``std_b`` and, for outcomes ``a``/``b`` (``NaN`` otherwise): ``chosen_score``,
    ``rejected_score``, ``margin`` (chosen - rejected; negative means the model disagrees with the label).
    """
    sa, sb = aliased(ResponseScore), aliased(ResponseScore)
    rows = session.execute(
        select(Label.id, Label.comparison_id, Label.source, Label.outcome, Label.split, sa.score, sb.score, sa.std, sb.std)
        .join(Comparison, Label.comparison_id == Comparison.id)
        .join(sa, and_(sa.response_id == Comparison.response_a_id, sa.model_version_id == version_id))
        .join(sb, and_(sb.response_id == Comparison.response_b_id, sb.model_version_id == version_id))
        .order_by(Label.id)
    ).all()
    df = _frame(rows, ["label_id", "comparison_id", "source", "outcome", "split", "score_a", "score_b", "std_a", "std_b"])
    is_a, is_b = df["outcome"] == "a", df["outcome"] == "b"
    df["chosen_score"] = np.where(is_a, df["score_a"], np.where(is_b, df["score_b"], np.nan))
    df["rejected_score"] = np.where(is_a, df["score_b"], np.where(is_b, df["score_a"], np.nan))
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


def multi_rated_labels(session: Session, min_labels: int = 2) -> pd.DataFrame:
    """Labels of comparisons labelled at least ``min_labels`` times: ``comparison_id``, ``label_id``,
    ``annotator``, ``source``, ``outcome``, ``created_at`` (uses the denormalized ``label_count``)."""
    rows = session.execute(
        select(Label.comparison_id, Label.id, Annotator.name, Label.source, Label.outcome, Label.created_at)
        .join(Comparison, Label.comparison_id == Comparison.id)
        .join(Annotator, Label.annotator_id == Annotator.id)
        .where(Comparison.label_count >= min_labels)
        .order_by(Label.comparison_id, Label.id)
    ).all()
    return _frame(rows, ["comparison_id", "label_id", "annotator", "source", "outcome", "created_at"])


def agreement_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """``multi_rated_labels`` rows as the records ``rm_engine.agreement`` expects (item, rater, outcome, source)."""
    return [
        {"item": int(c), "rater": str(a), "outcome": str(o), "source": str(s)}
        for c, a, o, s in zip(frame["comparison_id"], frame["annotator"], frame["outcome"], frame["source"])
    ]


def conflicting_labels(session: Session, limit: int = 200) -> pd.DataFrame:
    """Comparisons where at least one label says ``a`` and another says ``b``, most contested first.

    Columns: ``comparison_id``, ``prompt``, ``response_a``, ``response_b``, ``n_a``, ``n_b``, ``n_tie``,
    ``n_both_bad``, ``annotators`` (comma-separated names).
    """
    multi = multi_rated_labels(session)
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
    rows = session.execute(
        select(Ranking.id, Ranking.prompt_id, Ranking.source, RankingItem.rank, ResponseScore.score)
        .join(RankingItem, RankingItem.ranking_id == Ranking.id)
        .join(
            ResponseScore,
            and_(ResponseScore.response_id == RankingItem.response_id, ResponseScore.model_version_id == version_id),
        )
        .order_by(Ranking.id, RankingItem.position)
    ).all()
    return _frame(rows, ["ranking_id", "prompt_id", "source", "rank", "score"])


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
    """Number of labels stored."""
    return int(session.scalar(select(func.count(Label.id))) or 0)


def versions_frame(versions: Sequence[ModelVersion]) -> pd.DataFrame:
    """One row per version: ``version``, ``created_at``, ``mode``, ``backbone``, ``n_pairs``, ``n_labels``,
    ``ensemble_size``, ``train_accuracy``/``val_accuracy``/``test_accuracy`` (``NaN`` when not recorded) and
    ``val_ece``, plus any other numeric top-level metric. Call it inside the session that loaded the rows."""
    rows = []
    for v in versions:
        m = v.metrics or {}
        row: dict[str, Any] = {
            "version": v.id, "created_at": v.created_at, "mode": v.mode, "backbone": v.backbone,
            "n_pairs": v.n_pairs, "n_labels": v.n_labels, "ensemble_size": v.ensemble_size,
        }
        for split in ("train", "val", "test"):
            row[f"{split}_accuracy"] = _num(split_metrics(m, split).get("accuracy"))
        row["val_ece"] = _num(split_metrics(m, "val").get("ece"))
        for k, x in m.items():
            if _num(x) is not None and k not in row:
                row[k] = x
        rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- version metrics (tolerant of older formats)

SPLIT_ALIASES: dict[str, tuple[str, ...]] = {
    "train": ("train", "training"),
    "val": ("val", "validation", "valid", "eval"),
    "test": ("test", "held_out", "heldout"),
}


def split_metrics(metrics: dict[str, Any] | None, split: str) -> dict[str, Any]:
    """The metrics dict of one split (``train``/``val``/``test``) from a version's metrics JSON.

    Accepts ``metrics[split]``, ``metrics["splits"][split]`` and aliases (``validation``...), and flat keys
    such as ``val_accuracy``; returns ``{}`` when nothing is recorded.
    """
    m = metrics or {}
    for name in SPLIT_ALIASES.get(split, (split,)):
        for holder in (m, m.get("splits") if isinstance(m.get("splits"), dict) else {}):
            got = holder.get(name)
            if isinstance(got, dict):
                return got
        flat = {k[len(name) + 1:]: v for k, v in m.items() if isinstance(k, str) and k.startswith(name + "_")}
        if "accuracy" in flat:
            return flat
    return {}


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and x == x else None


def version_accuracy(versions: Sequence[tuple[int, dict[str, Any] | None]]) -> pd.DataFrame:
    """Long frame ``version``, ``split``, ``accuracy``, ``n``, ``tie_rate`` from ``(version_id, metrics)`` pairs;
    splits without an accuracy are left out."""
    rows = []
    for vid, metrics in versions:
        for split in ("train", "val", "test"):
            sm = split_metrics(metrics, split)
            acc = _num(sm.get("accuracy"))
            if acc is not None:
                rows.append((vid, split, acc, sm.get("n"), _num(sm.get("tie_rate"))))
    return pd.DataFrame(rows, columns=["version", "split", "accuracy", "n", "tie_rate"])


def version_groups(metrics: dict[str, Any] | None, key: str = "per_source") -> pd.DataFrame:
    """Per-group accuracy of one version (``key`` = ``per_source``, ``per_category`` or ``per_annotator``):
    ``split``, ``group``, ``accuracy``, ``n``. Groups are read from each split's metrics."""
    rows = []
    for split in ("train", "val", "test"):
        groups = split_metrics(metrics, split).get(key)
        if not isinstance(groups, dict):
            continue
        for g, v in groups.items():
            acc = _num(v.get("accuracy")) if isinstance(v, dict) else _num(v)
            n = v.get("n") if isinstance(v, dict) else None
            if acc is not None:
                rows.append((split, str(g), acc, n))
    return pd.DataFrame(rows, columns=["split", "group", "accuracy", "n"])
