"""Normalization from stored statistics, hand-computed."""
from __future__ import annotations

import math

import numpy as np
import pytest

from rm_engine.normalize import (
    combine_members,
    compute_norm_stats,
    is_valid_stats,
    member_centers,
    normalize,
    percentile,
    to_sigmoid,
    zscore,
)


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


def test_ensemble_members_are_centred_before_combining() -> None:
    # two members that order the responses identically, 10 apart in offset and 2x apart in scale
    S = np.array([[1.0, 10.0], [3.0, 14.0], [5.0, 18.0]])
    centers = member_centers(S)
    assert centers == [3.0, 14.0]
    raw, std = combine_members(S, centers)
    np.testing.assert_allclose(raw, [-3.0, 0.0, 3.0])  # mean of (-2, -4), (0, 0), (2, 4): scales kept
    np.testing.assert_allclose(std, [1.0, 0.0, 1.0])  # disagreement in scale only, not the 11-point offset
    plain_raw, plain_std = combine_members(S)  # a version saved without centres: the plain mean, as before
    np.testing.assert_allclose(plain_raw, [5.5, 8.5, 11.5])
    np.testing.assert_allclose(plain_std, [4.5, 5.5, 6.5])


def test_one_member_is_unchanged_and_bad_shapes_are_refused() -> None:
    raw, std = combine_members(np.array([[2.0], [-1.0]]), [7.0])
    np.testing.assert_allclose(raw, [2.0, -1.0])
    np.testing.assert_allclose(std, [0.0, 0.0])
    assert member_centers(np.array([[1.0, np.nan], [3.0, 4.0]])) == [2.0, 4.0]  # non-finite scores ignored
    with pytest.raises(ValueError, match="2 member centres for 3 members"):
        combine_members(np.zeros((1, 3)), [0.0, 0.0])
    with pytest.raises(ValueError, match=r"\(n, K\) matrix"):
        combine_members(np.zeros(3))
