"""Fold assignment and pooling of ``rm_engine.crossval`` on hand-computed numbers."""
from __future__ import annotations

import math

import pytest

from rm_engine.crossval import assign_folds, pool_folds
from rm_engine.metrics import accuracy_band


@pytest.mark.parametrize("n,k", [(10, 5), (11, 5), (7, 2), (3, 3)])
def test_folds_are_balanced_deterministic_and_order_free(n: int, k: int) -> None:
    ids = list(range(100, 100 + n))
    folds = assign_folds(ids, k, seed=0)
    sizes = [sum(1 for f in folds.values() if f == j) for j in range(k)]
    assert set(folds) == set(ids) and max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
    assert assign_folds(list(reversed(ids)), k, seed=0) == folds  # not the order ids arrive in
    if n >= 10:
        assert assign_folds(ids, k, seed=1) != folds  # the seed moves prompts between folds


def test_pooling_counts_every_held_out_pair_once() -> None:
    # fold 0: 2 of 3 right; fold 1: 1 of 2 right and one exact tie (a miss under strict >, counted in tie_rate)
    folds = [
        {"chosen": [1.0, 2.0, 0.0], "rejected": [0.0, 1.0, 5.0], "sources": ["crowd", "expert", "crowd"],
         "accuracy": 2 / 3},
        {"chosen": [3.0, 1.0], "rejected": [2.0, 1.0], "sources": ["ai", "crowd"], "accuracy": 0.5},
    ]
    out = pool_folds(folds)
    assert out["n"] == 5 and out["accuracy"] == pytest.approx(3 / 5) and out["tie_rate"] == pytest.approx(1 / 5)
    assert out["std_error"] == pytest.approx(math.sqrt(0.6 * 0.4 / 5))
    assert out["sigma_above_chance"] == pytest.approx(0.1 / math.sqrt(0.25 / 5))
    assert out["per_source"]["crowd"] == {"accuracy": pytest.approx(1 / 3), "tie_rate": pytest.approx(1 / 3), "n": 3}
    assert out["per_source"]["expert"]["accuracy"] == 1.0 and out["per_source"]["ai"]["accuracy"] == 1.0
    assert (out["fold_min"], out["fold_max"]) == (0.5, pytest.approx(2 / 3))
    assert out["band"] == accuracy_band(0.6, 5)

