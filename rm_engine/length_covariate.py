"""Response length as a nuisance covariate of the Bradley-Terry loss (``TrainConfig.length_covariate``).

While training, the loss sees ``score + beta * length`` for every response, with ``length`` its log word count
standardised over the training responses and ``beta`` a learned coefficient, started at what length alone explains
(:func:`length_only_coef`). The labels' preference for longer (or shorter) answers goes into ``beta``; the saved
and served score is the model's alone, so a policy cannot gain reward by changing its answers' length
(``rm_engine.metrics.length_bias`` measures how far a score follows length). Used by head mode
(:func:`rm_engine.head.train.train_heads`) and finetune mode (:func:`rm_engine.finetune.train.train_finetune`).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rm_engine.metrics import bradley_terry_slope, word_count


def log_lengths(texts: Sequence[str]) -> np.ndarray:
    """``log(1 + words)`` of each text."""
    return np.log1p(np.asarray([word_count(t) for t in texts], dtype=np.float64))


def standardize(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``values`` centred and scaled by the mean and std of ``reference`` (std 1 when it is constant)."""
    ref = np.asarray(reference, dtype=np.float64)
    sd = float(ref.std()) if ref.size > 1 else 0.0
    return (np.asarray(values, dtype=np.float64) - (float(ref.mean()) if ref.size else 0.0)) / (sd if sd > 1e-8 else 1.0)


def length_only_coef(diff: np.ndarray, weight: np.ndarray | None = None) -> float:
    """The Bradley-Terry coefficient of length alone, from chosen-minus-rejected length differences of decided
    pairs (0 when lengths never differ)."""
    return bradley_terry_slope(diff, weight) or 0.0
