"""Preference likelihoods, pure functions computed in fp32.

* Bradley-Terry: ``-log sigmoid(r_c - r_r - margin)``.
* Davidson (1970) tie model, with ``nu = exp(log_nu)`` learned::

      P(c > r) = e^{d/2} / (e^{d/2} + e^{-d/2} + nu),   P(tie) = nu / (same),   d = r_c - r_r

* Rao-Kupper (1967) tie model, with ``theta = exp(eta) >= 1``, ``eta = softplus(raw)``::

      P(c > r) = sigmoid(d - eta),   P(tie) = 1 - sigmoid(d - eta) - sigmoid(-d - eta)

  Both reduce to Bradley-Terry when their tie parameter goes to 0 (nu -> 0, eta -> 0).

For a tie pair the order of ``r_c``/``r_r`` does not matter (both models are symmetric in it); margins apply to
decided pairs only. :func:`pair_nll` is the per-pair negative log-likelihood; ``bt_loss``, ``davidson_tie_loss`` and
``rao_kupper_loss`` are its weighted means. What training minimises (weights, centring, the length covariate) is
built on :func:`pair_nll` in :mod:`rm_engine.objective`.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

Tensor = torch.Tensor
LogProbs = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


def _f32(x: Tensor | float | list[float]) -> Tensor:
    t = torch.as_tensor(x)
    return t.float()


def _weighted_mean(per: Tensor, weight: Tensor | None) -> Tensor:
    if weight is None:
        return per.mean()
    w = _f32(weight).to(per.device)
    total = w.sum()
    if float(total) <= 0.0:
        raise ValueError("loss weights sum to zero: nothing to train on")
    return (per * w).sum() / total


def _margin(margin: Tensor | float | None, like: Tensor) -> Tensor:
    if margin is None:
        return torch.zeros_like(like)
    return _f32(margin).to(like.device).expand_as(like)


def davidson_log_probs(d: Tensor, log_nu: Tensor) -> tuple[Tensor, Tensor]:
    """``(log P(win), log P(tie))`` under the Davidson model for score differences ``d``."""
    d = _f32(d)
    ln = _f32(log_nu).to(d.device).expand_as(d)
    log_z = torch.logsumexp(torch.stack([d / 2, -d / 2, ln]), dim=0)
    return d / 2 - log_z, ln - log_z


def rao_kupper_eta(raw: Tensor) -> Tensor:
    """The Rao-Kupper ``eta = log theta`` (> 0) from an unconstrained parameter."""
    return F.softplus(_f32(raw)) + 1e-6


def rao_kupper_log_probs(d: Tensor, raw_eta: Tensor) -> tuple[Tensor, Tensor]:
    """``(log P(win), log P(tie))`` under the Rao-Kupper model for score differences ``d``."""
    d = _f32(d)
    eta = rao_kupper_eta(raw_eta).to(d.device).expand_as(d)
    log_win = -F.softplus(eta - d)
    # log(theta^2 - 1) = 2 eta + log(1 - exp(-2 eta))
    log_t2m1 = 2 * eta + torch.log(-torch.expm1(-2 * eta))
    log_tie = log_t2m1 - F.softplus(eta - d) - F.softplus(eta + d)
    return log_win, log_tie


TIE_MODELS: dict[str, LogProbs] = {"davidson": davidson_log_probs, "rao_kupper": rao_kupper_log_probs}


def pair_nll(r_c: Tensor, r_r: Tensor, tie: Tensor | None = None, margin: Tensor | float | None = None,
             tie_model: str | None = None, tie_param: Tensor | None = None) -> Tensor:
    """Per-pair negative log-likelihood in fp32, without reduction or host sync.

    Without ``tie_param``: Bradley-Terry ``softplus(-(r_c - r_r - margin))`` for every pair (tie pairs included:
    callers leave them out or need a tie model). With it: ``tie_model``'s likelihood, ``log P(tie)`` for the pairs
    ``tie`` marks (no margin), ``log P(win)`` at ``d - margin`` for the others."""
    r_c, r_r = _f32(r_c), _f32(r_r)
    d = r_c - r_r
    m = _margin(margin, d)
    if tie_param is None:
        return F.softplus(-(d - m))
    try:
        log_probs = TIE_MODELS[str(tie_model)]
    except KeyError:
        raise ValueError(f"unknown tie model {tie_model!r} (expected davidson or rao_kupper)") from None
    log_win, _ = log_probs(d - m, tie_param)
    _, log_tie = log_probs(d, tie_param)
    tie_b = torch.zeros_like(d, dtype=torch.bool) if tie is None else torch.as_tensor(tie, device=d.device).bool()
    return -torch.where(tie_b, log_tie, log_win)


def bt_loss(r_c: Tensor, r_r: Tensor, weight: Tensor | None = None, margin: Tensor | float | None = None) -> Tensor:
    """Weighted mean of ``-logsigmoid(r_c - r_r - margin)`` (fp32, numerically stable via softplus)."""
    return _weighted_mean(pair_nll(r_c, r_r, margin=margin), weight)


def davidson_tie_loss(r_c: Tensor, r_r: Tensor, tie: Tensor, log_nu: Tensor, weight: Tensor | None = None,
                      margin: Tensor | float | None = None) -> Tensor:
    """Weighted mean negative log-likelihood under the Davidson tie model (``tie[i]`` marks tie pairs; the margin
    applies to decided pairs only)."""
    return _weighted_mean(pair_nll(r_c, r_r, tie, margin, "davidson", log_nu), weight)


def rao_kupper_loss(r_c: Tensor, r_r: Tensor, tie: Tensor, raw_eta: Tensor, weight: Tensor | None = None,
                    margin: Tensor | float | None = None) -> Tensor:
    """Weighted mean negative log-likelihood under the Rao-Kupper tie model (``eta = softplus(raw_eta)``)."""
    return _weighted_mean(pair_nll(r_c, r_r, tie, margin, "rao_kupper", raw_eta), weight)


def init_tie_param(tie_model: str, tie_share: float) -> float:
    """A starting value for the tie parameter matching the observed share of ties (at equal scores)."""
    p = min(max(tie_share, 1e-3), 0.9)
    if tie_model == "davidson":  # P(tie | d=0) = nu / (2 + nu)
        return math.log(2 * p / (1 - p))
    # Rao-Kupper at d=0: P(tie) = 1 - 2 sigmoid(-eta)  ->  eta = log((1+p)/(1-p)); raw = softplus^-1(eta)
    eta = math.log((1 + p) / (1 - p))
    return math.log(math.expm1(eta))
