"""Normalization from stored statistics, hand-computed."""
from __future__ import annotations

import math

import pytest

from rm_engine.normalize import compute_norm_stats, is_valid_stats, normalize, percentile, to_sigmoid, zscore


def test_stats_and_zscore() -> None:
    st = compute_norm_stats([1.0, 2.0, 3.0, 4.0])
    assert st["mean"] == pytest.approx(2.5)
    assert st["std"] == pytest.approx(math.sqrt(1.25))
    assert len(st["quantiles"]) == 101 and st["n"] == 4
    assert float(zscore(4.0, st)) == pytest.approx(1.5 / math.sqrt(1.25))
    assert is_valid_stats(st)


def test_sigmoid_is_probability_of_beating_the_mean() -> None:
    st = compute_norm_stats([0.0, 2.0])  # mean 1
    assert float(to_sigmoid(1.0, st)) == pytest.approx(0.5)
    assert float(to_sigmoid(2.0, st)) == pytest.approx(1 / (1 + math.exp(-1)))


def test_percentile_interpolates_in_quantiles() -> None:
    st = compute_norm_stats(list(range(101)))  # quantiles are exactly 0..100
    assert percentile(50.0, st) == pytest.approx(50.0)
    assert percentile(25.5, st) == pytest.approx(25.5)
    assert percentile(-3.0, st) == 0.0
    assert percentile(1000.0, st) == 100.0


def test_constant_and_empty_references() -> None:
    st = compute_norm_stats([2.0, 2.0, 2.0])
    assert st["std"] == 1.0  # no division by zero
    out = normalize([1.0, 2.0, 3.0], st)
    assert out["percentile"] == [0.0, 50.0, 100.0]
    empty = compute_norm_stats([])
    assert normalize([5.0], empty)["percentile"] == [50.0]
    assert not is_valid_stats({})
