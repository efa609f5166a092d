"""A model version's metrics JSON read as tables, tolerant of older and partial formats.

The trainer stores ``metrics[split]`` (``train``/``val``/``test``) as ``rm_engine.metrics.split_metrics`` output
(``accuracy``, ``tie_rate``, ``per_source``, ``per_category``, ``ece``, ``reliability``...). Older versions may
hold flat keys (``val_accuracy``), a ``splits`` sub-dict, other split names (``validation``) or nothing at all;
every function here returns what it can and leaves the rest out. Pure functions: no database access.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from db.models import ModelVersion
from db.versions import recipe

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


LENGTH_MEASURES = (("labels_prefer_longer", "labels prefer longer"), ("model_prefers_longer", "model prefers longer"),
                   ("accuracy_chosen_longer", "accuracy, chosen longer"),
                   ("accuracy_chosen_shorter", "accuracy, chosen shorter"))


def version_length_bias(metrics: dict[str, Any] | None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A version's length bias (``rm_engine.metrics.length_bias`` per split) as ``split``, ``measure``, ``value``,
    ``n`` rows, and the verdict to show: validation's, else training's (``{}`` when not recorded)."""
    rows, per_split = [], {}
    for split in ("train", "val", "test"):
        lb = split_metrics(metrics, split).get("length_bias")
        if not isinstance(lb, dict):
            continue
        per_split[split] = lb
        counts = {"accuracy_chosen_longer": lb.get("n_chosen_longer"),
                  "accuracy_chosen_shorter": lb.get("n_chosen_shorter")}
        for key, name in LENGTH_MEASURES:
            if _num(lb.get(key)) is not None:
                rows.append((split, name, float(lb[key]), counts.get(key, lb.get("n"))))
    return pd.DataFrame(rows, columns=["split", "measure", "value", "n"]), per_split.get("val") or per_split.get("train") or {}


def versions_frame(versions: Sequence[ModelVersion], copies: Mapping[int, int] | None = None) -> pd.DataFrame:
    """One row per version: ``version``, ``created_at``, ``mode``, ``recipe`` (:func:`db.versions.recipe`),
    ``backbone``, ``n_pairs``, ``n_labels``, ``ensemble_size``, ``train_accuracy``/``val_accuracy``/``test_accuracy`` (``NaN`` when not recorded) and
    ``val_ece``, plus any other numeric top-level metric; with ``copies`` (:func:`db.versions.archived_versions`)
    that are not empty, ``files_in_db``. Call it inside the session that loaded the rows."""
    rows = []
    for v in versions:
        m = v.metrics or {}
        row: dict[str, Any] = {
            "version": v.id, "created_at": v.created_at, "mode": v.mode, "recipe": recipe(v.mode, v.config),
            "backbone": v.backbone,
            "n_pairs": v.n_pairs, "n_labels": v.n_labels, "ensemble_size": v.ensemble_size,
        }
        for split in ("train", "val", "test"):
            row[f"{split}_accuracy"] = _num(split_metrics(m, split).get("accuracy"))
        row["val_ece"] = _num(split_metrics(m, "val").get("ece"))
        if copies:
            row["files_in_db"] = v.id in copies
        for k, x in m.items():
            if _num(x) is not None and k not in row:
                row[k] = x
        rows.append(row)
    return pd.DataFrame(rows)
