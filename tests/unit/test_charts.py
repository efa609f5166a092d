"""Chart builders: pure functions of dataframes that tolerate empty and partial input."""
from __future__ import annotations

import pandas as pd
import pytest

from app import charts
from db import version_metrics


def _message(fig) -> str:
    return " ".join(a.text for a in fig.layout.annotations)


@pytest.mark.parametrize("build", [
    lambda: charts.accuracy_by_version(pd.DataFrame(columns=["version", "split", "accuracy"])),
    lambda: charts.group_accuracy(pd.DataFrame(columns=["split", "group", "accuracy", "n"]), "x"),
    lambda: charts.labels_over_time(pd.DataFrame(columns=["period", "source", "labels", "cumulative"])),
    lambda: charts.annotator_throughput(pd.DataFrame(columns=["annotator", "source", "labels", "median_seconds"])),
    lambda: charts.score_histograms(pd.DataFrame(columns=["source", "role", "score"])),
    lambda: charts.margin_histogram([]),
    lambda: charts.normalized_scores(pd.DataFrame(columns=["raw", "z", "sigmoid"])),
    lambda: charts.reliability_diagram([], None),
    lambda: charts.spearman_histogram({}),
    lambda: charts.agreement_bars(pd.DataFrame(columns=["statistic", "ties", "value"])),
    lambda: charts.annotator_reliability(pd.DataFrame(columns=["annotator", "accuracy", "labels", "weight"])),
    lambda: charts.labels_per_category(pd.DataFrame(columns=["category", "labels", "prompts"])),
    lambda: charts.coverage_histogram([], 0.3),
    lambda: charts.loss_curve(None),
    lambda: charts.length_bias(version_metrics.version_length_bias({})[0], "x"),
])
def test_empty_inputs_explain_themselves(build) -> None:
    fig = build()
    assert not fig.data and _message(fig)


def test_reliability_diagram_skips_malformed_bins() -> None:
    bins = [{"count": 0, "mean_pred": None, "frac_pos": None}, {"count": 4, "mean_pred": 0.3, "frac_pos": 0.25},
            {"count": 2}, "junk", {"count": 3, "mean_pred": 0.8, "frac_pos": 0.9}]
    fig = charts.reliability_diagram(bins, 0.05)
    model = [t for t in fig.data if t.name == "model"][0]
    assert list(model.x) == [0.3, 0.8] and list(model.y) == [0.25, 0.9]
    assert "ECE 0.050" in fig.layout.title.text
    assert "ECE" not in charts.reliability_diagram(bins, "n/a").layout.title.text


def test_accuracy_chart_has_one_line_per_split_and_the_bands() -> None:
    acc = version_metrics.version_accuracy([(1, {"train": {"accuracy": 0.9}, "val": {"accuracy": 0.6}}), (2, {"val_accuracy": 0.7})])
    fig = charts.accuracy_by_version(acc)
    assert {t.name: list(t.y) for t in fig.data} == {"train": [0.9], "val": [0.6, 0.7]}
    assert sorted(s.y0 for s in fig.layout.shapes) == [0.5, 0.7, 0.8, 0.9]


def test_loss_curve_ignores_incomplete_points() -> None:
    fig = charts.loss_curve([[0, 0.69], [1, None], [2], [3, 0.5]])
    assert list(fig.data[0].x) == [0.0, 3.0] and list(fig.data[0].y) == [0.69, 0.5]
