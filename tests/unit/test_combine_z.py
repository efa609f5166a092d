"""Combining versions' z-scores, hand-computed."""
from __future__ import annotations

import numpy as np
import pytest

from rm_engine.serving.ensemble import combine_z


@pytest.mark.parametrize("how, penalty, reward", [
    ("mean", 1.0, [1.0, 0.0]),
    ("min", 1.0, [0.0, -1.0]),
    ("uwo", 1.0, [0.0, -1.0]),   # mean - 1 x std: std is 1 and 1
    ("uwo", 0.5, [0.5, -0.5]),
    ("uwo", 0.0, [1.0, 0.0]),    # no penalty: the mean
])
def test_combinations(how: str, penalty: float, reward: list[float]) -> None:
    Z = np.array([[0.0, 2.0], [-1.0, 1.0]])  # two responses, two versions
    got, std = combine_z(Z, how, penalty)
    np.testing.assert_allclose(got, reward)
    np.testing.assert_allclose(std, [1.0, 1.0])


def test_agreeing_versions_are_not_penalised() -> None:
    got, std = combine_z(np.array([[0.7, 0.7, 0.7]]), "uwo", 2.0)
    assert got[0] == pytest.approx(0.7) and std[0] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("how, penalty, message", [
    ("max", 1.0, "combine must be one of mean, min, uwo"),
    ("uwo", -1.0, "penalty must be >= 0"),
])
def test_bad_options_are_refused(how: str, penalty: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        combine_z(np.zeros((1, 2)), how, penalty)
