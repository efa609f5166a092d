"""What training minimises, in both modes: the one place the training objective is written.

For a batch of pairs with scores ``r_c`` (chosen) and ``r_r`` (rejected)::

    loss = sum_i w_i * nll_i / sum_i w_i  +  center_coef * sum_i (r_c,i + r_r,i)^2 / n

* ``nll_i``: the pair's negative log-likelihood (:func:`rm_engine.loss.pair_nll`): Bradley-Terry, or, when the
  training pairs hold ties and ``TrainConfig.ties == "model"``, the ``TrainConfig.tie_model`` (Davidson or
  Rao-Kupper) with a learned tie parameter (:func:`active_tie_model`); the margin of a decided pair is
  ``margin_from_strength * strength`` (:func:`pair_margin`).
* ``w_i``: the pair's own weight times its source's weight (:func:`pair_weight`), times its bootstrap count in an
  ensemble member (:func:`member_weights`). The sums run over the whole (global) batch: a data-parallel rank passes
  the global weight sum and pair count, so that the ranks' gradients add up to one process's.
* Centring (TRL's ``center_rewards_coefficient``) is an unweighted mean over the batch's pairs, of the scores alone.
* With ``TrainConfig.length_covariate`` the likelihood sees ``score + beta * length`` for every response, ``length``
  its log word count standardised over the training responses (:class:`LengthScale`) and ``beta`` learned, started
  at what length alone explains (:func:`length_start`). The labels' preference for longer (or shorter) answers goes
  into ``beta``; the saved and served score is the model's alone (``rm_engine.metrics.length_bias`` measures how far
  a score follows length).

Head mode (:func:`rm_engine.head.train.train_heads`) and fine-tune mode (:func:`rm_engine.finetune.train.
train_finetune`, DDP ranks included) take their pair terms from :func:`pair_terms` and their loss from
:func:`preference_loss`; ``tests/unit/test_objective.py`` pins both modes to the same loss on the same scores.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from db.pairs import TrainingPair
from rm_engine.config import TrainConfig
from rm_engine.loss import pair_nll
from rm_engine.metrics import bradley_terry_slope, word_count

Tensor = torch.Tensor
#: Added to ``TrainConfig.seed`` to seed the ensemble members' bootstrap (apart from the split's and the models').
BOOTSTRAP_SEED_OFFSET = 7919


def pair_weight(cfg: TrainConfig, p: TrainingPair) -> float:
    """The loss weight of a pair: its own weight times its source's weight."""
    return float(p.weight) * float(cfg.source_weights.get(p.source, 1.0))


def pair_margin(cfg: TrainConfig, p: TrainingPair) -> float:
    """The margin of a decided pair from its label strength (0 for ties or when off)."""
    return 0.0 if p.tie or not p.strength else float(cfg.margin_from_strength) * float(p.strength)


def active_tie_model(cfg: TrainConfig, tie: Sequence[bool] | np.ndarray) -> str | None:
    """The tie model a run trains through: ``cfg.tie_model`` when its training pairs hold ties and
    ``cfg.ties == "model"``, else None (Bradley-Terry)."""
    return cfg.tie_model if cfg.ties == "model" and bool(np.any(np.asarray(tie, dtype=bool))) else None


def member_weights(cfg: TrainConfig, base: Sequence[float] | np.ndarray) -> np.ndarray:
    """``(cfg.ensemble, n)`` loss weights of the training pairs per ensemble member: the pair weights ``base``, times
    a bootstrap resample count per member (multinomial, ``n`` draws, seeded by ``cfg.seed``) when there are several
    members. Member ``k`` of a fine-tune ensemble trains with seed ``cfg.seed + k``."""
    w = np.asarray(base, dtype=np.float64)
    if cfg.ensemble == 1:
        return w[None, :]
    n = w.size
    rng = np.random.default_rng(cfg.seed + BOOTSTRAP_SEED_OFFSET)
    return np.stack([w * rng.multinomial(n, np.full(n, 1.0 / n)) for _ in range(cfg.ensemble)])


def log_lengths(texts: Sequence[str]) -> np.ndarray:
    """``log(1 + words)`` of each text."""
    return np.log1p(np.asarray([word_count(t) for t in texts], dtype=np.float64))


@dataclass(frozen=True)
class LengthScale:
    """The length covariate's standardisation: log word counts centred and scaled by the training responses' mean
    and std (std 1 when they are all alike)."""

    mean: float
    std: float

    @classmethod
    def of(cls, reference: np.ndarray) -> LengthScale:
        """The scale of the values ``reference``."""
        ref = np.asarray(reference, dtype=np.float64)
        sd = float(ref.std()) if ref.size > 1 else 0.0
        return cls(float(ref.mean()) if ref.size else 0.0, sd if sd > 1e-8 else 1.0)

    @classmethod
    def fit(cls, pairs: Sequence[TrainingPair]) -> LengthScale:
        """The scale of the log lengths of the pairs' responses, each response counted once."""
        texts = {(p.chosen_id, p.chosen): p.chosen for p in pairs} | {(p.rejected_id, p.rejected): p.rejected
                                                                     for p in pairs}
        return cls.of(log_lengths(list(texts.values())))

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """The standardised log lengths of ``texts``."""
        return (log_lengths(texts) - self.mean) / self.std


def length_start(length_c: np.ndarray, length_r: np.ndarray, tie: np.ndarray, weight: np.ndarray) -> float:
    """The length coefficient's starting value: the Bradley-Terry slope of length alone on the decided pairs,
    weighted (0 when lengths never differ)."""
    keep = ~np.asarray(tie, dtype=bool)
    diff = (np.asarray(length_c, dtype=np.float64) - np.asarray(length_r, dtype=np.float64))[keep]
    return bradley_terry_slope(diff, np.asarray(weight, dtype=np.float64)[keep]) or 0.0


@dataclass(frozen=True)
class PairTerms:
    """What the loss needs of each pair besides its scores: ``weight``, ``margin``, ``tie`` and, with the length
    covariate, the standardised lengths of the chosen and rejected responses and their ``scale``."""

    weight: np.ndarray
    margin: np.ndarray
    tie: np.ndarray
    length_c: np.ndarray | None = None
    length_r: np.ndarray | None = None
    scale: LengthScale | None = None

    def __len__(self) -> int:
        return int(self.weight.size)


def pair_terms(cfg: TrainConfig, pairs: Sequence[TrainingPair], *, weights: Sequence[float] | None = None,
               scale: LengthScale | None = None) -> PairTerms:
    """The pairs' :class:`PairTerms` under ``cfg``. ``weights``: the loss weights to use instead of the pairs'
    (an ensemble member's, :func:`member_weights`); each finite and >= 0. ``scale``: the length standardisation
    (default: fitted on these pairs, which must then be the training pairs)."""
    if weights is None:
        w = np.array([pair_weight(cfg, p) for p in pairs], dtype=np.float64)
    else:
        w = np.asarray([float(x) for x in weights], dtype=np.float64)
        if w.size != len(pairs):
            raise ValueError(f"{w.size} loss weights for {len(pairs)} training pairs")
        bad = [i for i, x in enumerate(w) if not (x >= 0 and math.isfinite(x))]
        if bad:
            raise ValueError(f"loss weight of training pair {bad[0]} is {w[bad[0]]} (must be finite and >= 0)")
    terms = PairTerms(weight=w, margin=np.array([pair_margin(cfg, p) for p in pairs], dtype=np.float64),
                      tie=np.array([bool(p.tie) for p in pairs], dtype=bool))
    if not cfg.length_covariate:
        return terms
    scale = scale or LengthScale.fit(pairs)
    return PairTerms(terms.weight, terms.margin, terms.tie, scale([p.chosen for p in pairs]),
                     scale([p.rejected for p in pairs]), scale)


def centering_penalty(r_c: Tensor, r_r: Tensor, coef: float, count: int | None = None) -> Tensor:
    """``coef * sum((r_c + r_r)^2) / count`` (``count``: the batch's pairs, by default ``len(r_c)``; a
    data-parallel rank passes the global batch's): keeps rewards centred on zero (0 when ``coef`` is 0)."""
    r_c, r_r = r_c.float(), r_r.float()
    if coef == 0:
        return torch.zeros((), device=r_c.device)
    return coef * ((r_c + r_r) ** 2).sum() / (r_c.numel() if count is None else count)


def preference_loss(
    r_c: Tensor,
    r_r: Tensor,
    *,
    tie: Tensor | None = None,
    weight: Tensor | None = None,
    margin: Tensor | float | None = None,
    tie_model: str | None = None,
    tie_param: Tensor | None = None,
    center_coef: float = 0.0,
    beta: Tensor | None = None,
    length_c: Tensor | None = None,
    length_r: Tensor | None = None,
    weight_total: float | None = None,
    count_total: int | None = None,
) -> Tensor:
    """The training objective of a batch (see the module docstring), in fp32.

    ``tie_param`` (with ``tie_model``) switches to the tie model; tie pairs without one raise ``ValueError``.
    ``beta`` with ``length_c``/``length_r``: the length covariate. ``weight_total``/``count_total``: the whole
    batch's weight sum and pair count when this is one rank's shard (default: this batch's); a batch without any
    weight contributes only its centring."""
    if tie_param is None and tie is not None and bool(torch.as_tensor(tie).any()):
        raise ValueError("tie pairs need a tie model (ties='model') or must be excluded (ties='exclude')")
    if tie_param is not None and tie_model is None:
        raise ValueError("a tie parameter needs its tie model (davidson or rao_kupper)")
    x_c, x_r = r_c.float(), r_r.float()
    if beta is not None:
        if length_c is None or length_r is None:
            raise ValueError("the length covariate needs the lengths of both responses")
        x_c, x_r = x_c + beta * length_c, x_r + beta * length_r
    per = pair_nll(x_c, x_r, tie, margin, tie_model, tie_param)
    w = torch.ones_like(per) if weight is None else torch.as_tensor(weight, device=per.device).float()
    total = w.sum().clamp_min(1e-30) if weight_total is None else max(float(weight_total), 1e-30)
    loss = (per * w).sum() / total
    if center_coef:
        loss = loss + centering_penalty(r_c, r_r, center_coef, count_total)
    return loss
