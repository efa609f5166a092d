"""Score normalization from statistics stored with each model version.

At training time the trainer scores every stored response and keeps ``mean``, ``std`` and 101 quantiles
(percentiles 0..100) with the version. Serving then reports, for a raw score ``r``:

* ``z = (r - mean) / std``: the same number tomorrow, whatever else is scored with it;
* ``sigmoid = 1 / (1 + exp(-(r - mean)))``: under Bradley-Terry, the probability that the response beats a
  typical (mean-scoring) stored response;
* ``percentile``: the share (0..100) of stored responses scoring below ``r``, interpolated in the quantiles.

An ensemble's raw score is the mean of its members' *centred* scores (:func:`combine_members`): each member's
offset is arbitrary (Bradley-Terry sees only differences, so nothing pins it), and averaging uncentred members
would make their std measure offsets instead of disagreement. The centres (each member's mean over the stored
responses at training time) live with the version, like the statistics above. Scales are kept: a member's score
differences are its log-odds, which calibration and ``sigmoid`` rely on.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

N_QUANTILES = 101


def compute_norm_stats(scores: Sequence[float] | np.ndarray) -> dict[str, Any]:
    """``{"mean", "std", "quantiles" (101 values), "n"}`` of reference scores; an empty input gives mean 0, std 1."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    s = s[np.isfinite(s)]
    if s.size == 0:
        return {"mean": 0.0, "std": 1.0, "quantiles": [], "n": 0}
    std = float(s.std())
    return {
        "mean": float(s.mean()),
        "std": std if std > 1e-12 else 1.0,
        "quantiles": [float(q) for q in np.quantile(s, np.linspace(0, 1, N_QUANTILES))],
        "n": int(s.size),
    }


def member_centers(S: np.ndarray) -> list[float]:
    """Each member's mean score (column means of an ``(n, K)`` matrix, non-finite values ignored; 0 for none)."""
    M = np.asarray(S, dtype=np.float64)
    if M.ndim != 2:
        raise ValueError(f"member_centers: expected an (n, K) matrix of member scores, got shape {M.shape}")
    out = []
    for k in range(M.shape[1]):
        col = M[:, k][np.isfinite(M[:, k])]
        out.append(float(col.mean()) if col.size else 0.0)
    return out


def combine_members(S: np.ndarray, centers: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(raw, std)`` per row of an ``(n, K)`` matrix of member scores: the mean and std over members after
    subtracting each member's centre (K > 1 with ``centers``); one member, or a version saved without centres,
    gives the plain mean (std 0 for one member)."""
    M = np.asarray(S, dtype=np.float64)
    if M.ndim != 2:
        raise ValueError(f"combine_members: expected an (n, K) matrix of member scores, got shape {M.shape}")
    k = M.shape[1]
    if k > 1 and centers is not None:
        c = np.asarray(centers, dtype=np.float64).reshape(-1)
        if c.size != k:
            raise ValueError(f"combine_members: {c.size} member centres for {k} members")
        M = M - c
    return M.mean(axis=1), (M.std(axis=1) if k > 1 else np.zeros(M.shape[0]))


def zscore(raw: float | np.ndarray, stats: Mapping[str, Any]) -> float | np.ndarray:
    """``(raw - mean) / std`` with the stored statistics."""
    return (np.asarray(raw, dtype=np.float64) - float(stats.get("mean", 0.0))) / float(stats.get("std", 1.0) or 1.0)


def to_sigmoid(raw: float | np.ndarray, stats: Mapping[str, Any]) -> float | np.ndarray:
    """Probability of beating a mean-scoring stored response: ``sigmoid(raw - mean)``."""
    x = np.asarray(raw, dtype=np.float64) - float(stats.get("mean", 0.0))
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def percentile(raw: float | np.ndarray, stats: Mapping[str, Any]) -> float | np.ndarray:
    """Where ``raw`` falls among the stored responses' scores, 0..100 (50 without stored quantiles)."""
    q = np.asarray(stats.get("quantiles") or [], dtype=np.float64)
    r = np.asarray(raw, dtype=np.float64)
    if q.size < 2:
        return np.full_like(r, 50.0) if r.ndim else 50.0
    levels = np.linspace(0.0, 100.0, q.size)
    # np.interp needs increasing x; quantiles can repeat: interpolate against the unique values' mean level
    uq, inv = np.unique(q, return_inverse=True)
    lv = np.array([levels[inv == i].mean() for i in range(uq.size)])
    if uq.size == 1:
        out = np.where(r < uq[0], 0.0, np.where(r > uq[0], 100.0, 50.0))
    else:
        out = np.interp(r, uq, lv, left=0.0, right=100.0)
    return float(out) if np.ndim(out) == 0 else out


def normalize(raw: Sequence[float] | np.ndarray, stats: Mapping[str, Any]) -> dict[str, list[float]]:
    """``{"z", "sigmoid", "percentile"}`` lists for a batch of raw scores."""
    r = np.asarray(raw, dtype=np.float64).reshape(-1)
    return {
        "z": [float(v) for v in np.atleast_1d(zscore(r, stats))],
        "sigmoid": [float(v) for v in np.atleast_1d(to_sigmoid(r, stats))],
        "percentile": [float(v) for v in np.atleast_1d(percentile(r, stats))],
    }


def is_valid_stats(stats: Mapping[str, Any] | None) -> bool:
    """Whether stored stats have a finite mean and a positive std."""
    if not stats:
        return False
    try:
        return math.isfinite(float(stats["mean"])) and float(stats["std"]) > 0
    except (KeyError, TypeError, ValueError):
        return False
