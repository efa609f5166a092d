"""Cached data for the Dashboard.

Each loader is an ``st.cache_data`` function keyed by the database URL and a *fingerprint*
(``db.analytics.data_fingerprint``: counts and max ids of labels, rankings, versions and cached scores).

* Every loader keys on :func:`coarse`: versions and cached scores exactly (a new version shows at the next
  refresh), label and ranking counts bucketed in steps of about 5%, plus a time-to-live (``HEAVY_TTL_S``). While
  labelers work, panels are recomputed every few percent of new labels or every ``HEAVY_TTL_S``, not on every
  refresh; the label count itself comes from the exact fingerprint. The heavy panels also read bounded
  samples (the newest ``LABEL_SAMPLE`` labels, the newest ``AGREEMENT_SAMPLE`` multi-rated pairs), which the
  page says.

Values are plain dataframes and dicts (no ORM objects), safe to pickle.
"""
from __future__ import annotations

import math
from typing import Any

import pandas as pd
import streamlit as st

from app.resources import database
from db import analytics, served, stats, version_metrics, versions
from rm_engine import metrics, normalize
from rm_engine.quality import agreement
from rm_engine.quality import annotators as annotator_quality

Fingerprint = tuple[int, ...]
HEAVY_TTL_S = 120
LABEL_SAMPLE = 20_000
AGREEMENT_SAMPLE = 20_000
SERVED_SAMPLE = 5_000


def _bucket(n: int) -> int:
    """``n`` itself when small, else the index of its ~5% growth step (log base 1.05)."""
    return n if n < 200 else 200 + int(math.log(n / 200) / math.log(1.05))


def coarse(fp: Fingerprint) -> Fingerprint:
    """The fingerprint with label and ranking counts bucketed (versions and cached scores stay exact)."""
    n_labels, _, n_rankings, _, *rest = fp
    return (_bucket(n_labels), _bucket(n_rankings), *rest)


def fingerprint() -> Fingerprint:
    """The current data fingerprint (a few index lookups)."""
    with database().read() as s:
        return analytics.data_fingerprint(s)


@st.cache_data(max_entries=16, ttl=HEAVY_TTL_S, show_spinner=False)
def overview(url: str, fp: Fingerprint) -> dict[str, Any]:
    """Versions ``[(id, metrics)]`` newest first, label count, labels over time, annotator throughput, and the
    dataset statistics (``db.stats.dataset_stats``: training pairs, size tier, advice). Pass
    ``coarse(fingerprint())``."""
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
def version_labels(url: str, fp: Fingerprint) -> dict[int, str]:
    """Version ids, newest first, with their picker text (``db.versions.version_label``)."""
    with database().read() as s:
        return versions.version_labels(s)


@st.cache_data(max_entries=16, ttl=HEAVY_TTL_S, show_spinner="Reading cached scores...")
def scores(url: str, fp: Fingerprint, version_id: int, limit: int = 2000) -> dict[str, Any]:
    """Everything the Scores panel shows for one version (pass ``coarse(fingerprint())``):

    ``long`` (chosen/rejected scores per source) and ``margins`` over the newest ``LABEL_SAMPLE`` labels;
    ``table``: the best ``limit`` stored responses with ``raw``, ``z``, ``sigmoid``, ``percentile`` (from the
    version's stored statistics) and ``std``; ``calibration`` (``bins``, ``ece``, ``title``): the trainer's
    validation reliability when recorded, else computed on the labelled pairs; ``temperature`` (the version's fitted
    one, ``{}`` when none); ``length_bias``: ``db.version_metrics.version_length_bias`` (rows, verdict);
    ``spearman`` per ranked prompt.
    """
    with database().read() as s:
        try:
            v = versions.get_version(s, version_id)
            stats, vmetrics = dict(v.norm_stats or {}), dict(v.metrics or {})
        except versions.VersionNotFound:  # deleted since the list was drawn: its scores are gone too
            stats, vmetrics = {}, {}
        frame = analytics.label_scores(s, version_id, limit=LABEL_SAMPLE)
        table = analytics.scored_responses(s, version_id, limit=limit).rename(columns={"score": "raw"})
        items = analytics.ranking_score_items(s, version_id)
    prefs = frame.dropna(subset=["margin"])
    if len(table):
        table = table.assign(**normalize.normalize(table["raw"], stats))
    val = version_metrics.split_metrics(vmetrics, "val")
    if isinstance(val.get("reliability"), list) and val["reliability"]:
        cal = {"bins": val["reliability"], "ece": val.get("ece"), "title": "Calibration on validation pairs"}
    else:
        c = metrics.pair_calibration(prefs["chosen_score"], prefs["rejected_score"])
        cal = {"bins": c["bins"], "ece": c["ece"], "title": "Calibration on labelled pairs"}
    # std only for ensembles, model only where the data names it: a column of None alone would puzzle
    cols = [c for c in ("raw", "z", "sigmoid", "percentile", "std", "prompt", "response", "model")
            if c in table and (c not in ("std", "model") or table[c].notna().any())]
    return {
        "long": analytics.chosen_rejected_long(frame),
        "margins": prefs["margin"],
        "table": table[cols],
        "calibration": cal,
        "temperature": vmetrics.get("temperature") or {},
        "length_bias": version_metrics.version_length_bias(vmetrics),
        "spearman": metrics.spearman_per_prompt(analytics.spearman_inputs(items)),
    }


@st.cache_data(max_entries=16, ttl=HEAVY_TTL_S, show_spinner="Computing agreement...")
def agreement_data(url: str, fp: Fingerprint) -> dict[str, pd.DataFrame]:
    """Agreement tables (``overall``, ``annotators``, ``sources``) with and without ties, ``by_guidelines``
    (per guidelines revision), ``conflicts`` and each annotator's ``reliability``, over the newest ``AGREEMENT_SAMPLE`` multi-rated pairs. Pass
    ``coarse(fingerprint())``."""
    with database().read() as s:
        multi = analytics.multi_rated_labels(s, max_comparisons=AGREEMENT_SAMPLE)
        conflicts = analytics.conflicting_labels(s, multi=multi)
    records = analytics.agreement_records(multi)
    tables = agreement.summary_tables([agreement.summarize(records, ties=t) for t in (True, False)])
    reliability = annotator_quality.quality_frame(annotator_quality.annotator_quality(records))
    return {**tables, "by_guidelines": agreement.by_guidelines(records), "conflicts": conflicts,
            "reliability": reliability}


@st.cache_data(max_entries=16, ttl=HEAVY_TTL_S, show_spinner=False)
def coverage_base(url: str, fp: Fingerprint) -> dict[str, pd.DataFrame]:
    """Labels per category and the labelled prompts (``prompt_id``, ``text``, ``category``)."""
    with database().read() as s:
        return {"per_category": analytics.labels_per_category(s), "labelled": analytics.labelled_prompts(s)}


def served_summary() -> dict[str, Any]:
    """What the reward server has scored so far (one aggregate query, not cached: it changes without labels)."""
    with database().read() as s:
        return served.served_summary(s)


@st.cache_data(max_entries=4, ttl=HEAVY_TTL_S, show_spinner=False)
def served_prompts(url: str, summary: tuple[int, int]) -> list[str]:
    """The newest ``SERVED_SAMPLE`` prompts the reward server scored; pass ``(prompts, responses)`` of
    :func:`served_summary`, so that new ones show at once."""
    with database().read() as s:
        return served.served_prompts(s, SERVED_SAMPLE)
