"""Cached data for the Dashboard.

Each loader is an ``st.cache_data`` function keyed by the database URL and a *fingerprint*
(``db.analytics.data_fingerprint``: counts and max ids of labels, rankings, versions and cached scores). The live
panel reruns every few seconds, but the heavy queries (100k labels) and the agreement statistics run again only
when the data actually changed. Values are plain dataframes and dicts (no ORM objects), safe to pickle.
"""
from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from app.resources import database
from db import analytics, stats, versions
from rm_engine import agreement, metrics

Fingerprint = tuple[int, ...]


def fingerprint() -> Fingerprint:
    """The current data fingerprint (a few index lookups)."""
    with database().read() as s:
        return analytics.data_fingerprint(s)


@st.cache_data(max_entries=16, show_spinner=False)
def overview(url: str, fp: Fingerprint) -> dict[str, Any]:
    """Versions ``[(id, metrics)]`` newest first, label count, labels over time, annotator throughput, and the
    dataset statistics (``db.stats.dataset_stats``: training pairs, size tier, advice)."""
    with database().read() as s:
        vers = [(v.id, dict(v.metrics or {})) for v in versions.list_versions(s)]
        over_time, unit = analytics.labels_over_time(s, "D"), "day"
        if over_time["period"].nunique() <= 2:  # a young dataset: hours say more than one or two bars
            over_time, unit = analytics.labels_over_time(s, "h"), "hour"
        return {
            "versions": vers,
            "n_labels": analytics.label_count(s),
            "over_time": over_time,
            "time_unit": unit,
            "throughput": analytics.annotator_throughput(s),
            "stats": stats.dataset_stats(s),
        }


@st.cache_data(max_entries=16, show_spinner=False)
def version_choices(url: str, fp: Fingerprint) -> dict[int, tuple[dict[str, Any], dict[str, Any]]]:
    """``{version id: (norm_stats, metrics)}``, newest first."""
    with database().read() as s:
        return {v.id: (dict(v.norm_stats or {}), dict(v.metrics or {})) for v in versions.list_versions(s)}


@st.cache_data(max_entries=16, show_spinner="Reading cached scores...")
def scores(url: str, fp: Fingerprint, version_id: int, limit: int = 2000) -> dict[str, Any]:
    """Label scores, the response table and Spearman per ranked prompt for one version."""
    with database().read() as s:
        frame = analytics.label_scores(s, version_id)
        table = analytics.scored_responses(s, version_id, limit=limit)
        items = analytics.ranking_score_items(s, version_id)
    return {"labels": frame, "table": table, "spearman": metrics.spearman_per_prompt(analytics.spearman_inputs(items))}


@st.cache_data(max_entries=16, show_spinner="Computing agreement...")
def agreement_data(url: str, fp: Fingerprint) -> dict[str, pd.DataFrame]:
    """Agreement tables (``overall``, ``annotators``, ``sources``) with and without ties, and ``conflicts``."""
    with database().read() as s:
        multi = analytics.multi_rated_labels(s)
        conflicts = analytics.conflicting_labels(s, multi=multi)
    records = analytics.agreement_records(multi)
    tables = agreement.summary_tables([agreement.summarize(records, ties=t) for t in (True, False)])
    return {**tables, "conflicts": conflicts}


@st.cache_data(max_entries=16, show_spinner=False)
def coverage_base(url: str, fp: Fingerprint) -> dict[str, pd.DataFrame]:
    """Labels per category and the labelled prompts (``prompt_id``, ``text``, ``category``)."""
    with database().read() as s:
        return {"per_category": analytics.labels_per_category(s), "labelled": analytics.labelled_prompts(s)}
