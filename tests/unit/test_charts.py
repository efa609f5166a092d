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
    lambda: charts.z_by_version(pd.DataFrame(columns=["response"]), []),
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


@pytest.mark.parametrize("unit,step", [("hour", pd.Timedelta(hours=1)), ("day", pd.Timedelta(days=1))])
def test_labels_over_time_spans_whole_periods(unit: str, step: pd.Timedelta) -> None:
    """One period alone is drawn on an axis one period wide with its own tick, not on a millisecond scale."""
    t0 = pd.Timestamp("2026-03-01 14:00", tz="UTC")
    df = pd.DataFrame({"period": [t0, t0], "source": ["crowd", "ai"], "labels": [3, 2], "cumulative": [3, 2]})
    fig = charts.labels_over_time(df, unit)
    lo, hi = (pd.Timestamp(x) for x in fig.layout.xaxis.range)
    assert hi - lo == step * 1.2 and lo < t0 < hi
    assert [pd.Timestamp(v) for v in fig.layout.xaxis.tickvals] == [t0]
    assert {t.width for t in fig.data} == {step.total_seconds() * 1000 * 0.8}  # bars as wide as most of a period
    many = pd.DataFrame({"period": [t0 + i * step for i in range(30)], "source": "crowd", "labels": 1,
                         "cumulative": range(1, 31)})
    assert charts.labels_over_time(many, unit).layout.xaxis.tickvals is None  # plotly's own ticks for long spans


def test_throughput_hover_says_when_no_time_was_recorded() -> None:
    df = pd.DataFrame({"annotator": ["ann", "bob"], "source": ["crowd", "crowd"], "labels": [3, 2],
                       "median_seconds": [2.5, None]})
    [bars] = charts.annotator_throughput(df).data
    assert list(bars.customdata) == ["median 2.5 s per label", "no time recorded"]


def test_z_by_version_has_one_bar_group_per_version_and_escapes_text() -> None:
    table = pd.DataFrame({"response": ["1. <b>bold</b>", "2. fine"], "v3 z": [0.5, -0.5], "v1 z": [1.0, 0.2]})
    fig = charts.z_by_version(table, [3, 1])
    assert [(t.name, list(t.x), list(t.y)) for t in fig.data] == [("v3", ["1", "2"], [0.5, -0.5]),
                                                                  ("v1", ["1", "2"], [1.0, 0.2])]
    assert fig.data[0].customdata[0] == "1. &lt;b&gt;bold&lt;/b&gt;"  # shown as text in the hover
