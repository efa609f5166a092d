"""Preference losses, pure functions computed in fp32.

* Bradley-Terry: ``-log sigmoid(r_c - r_r - margin)``, weighted mean over pairs.
* Davidson (1970) tie model, with ``nu = exp(log_nu)`` learned::

      P(c > r) = e^{d/2} / (e^{d/2} + e^{-d/2} + nu),   P(tie) = nu / (same),   d = r_c - r_r

* Rao-Kupper (1967) tie model, with ``theta = exp(eta) >= 1``, ``eta = softplus(raw)``::

      P(c > r) = sigmoid(d - eta),   P(tie) = 1 - sigmoid(d - eta) - sigmoid(-d - eta)

  Both reduce to Bradley-Terry when their tie parameter goes to 0 (nu -> 0, eta -> 0).
* Reward centering (TRL's ``center_rewards_coefficient``): ``coef * mean((r_c + r_r)^2)``.

For a tie pair the order of ``r_c``/``r_r`` does not matter (both models are symmetric in it).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


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


def bt_loss(r_c: Tensor, r_r: Tensor, weight: Tensor | None = None, margin: Tensor | float | None = None) -> Tensor:
    """Weighted mean of ``-logsigmoid(r_c - r_r - margin)`` (fp32, numerically stable via softplus)."""
    r_c, r_r = _f32(r_c), _f32(r_r)
    d = r_c - r_r - _margin(margin, r_c)
    return _weighted_mean(F.softplus(-d), weight)


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


def _tie_loss(log_probs: Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]], r_c: Tensor, r_r: Tensor, tie: Tensor, param: Tensor, weight: Tensor | None,
              margin: Tensor | float | None) -> Tensor:
    r_c, r_r = _f32(r_c), _f32(r_r)
    tie_b = torch.as_tensor(tie, device=r_c.device).bool()
    d_win = r_c - r_r - _margin(margin, r_c)
    log_win, _ = log_probs(d_win, param)
    _, log_tie = log_probs(r_c - r_r, param)
    per = -torch.where(tie_b, log_tie, log_win)
    return _weighted_mean(per, weight)


def davidson_tie_loss(r_c: Tensor, r_r: Tensor, tie: Tensor, log_nu: Tensor, weight: Tensor | None = None,
                      margin: Tensor | float | None = None) -> Tensor:
    """Weighted mean negative log-likelihood under the Davidson tie model (``tie[i]`` marks tie pairs; the margin
    applies to decided pairs only)."""
    return _tie_loss(davidson_log_probs, r_c, r_r, tie, log_nu, weight, margin)


def rao_kupper_loss(r_c: Tensor, r_r: Tensor, tie: Tensor, raw_eta: Tensor, weight: Tensor | None = None,
                    margin: Tensor | float | None = None) -> Tensor:
    """Weighted mean negative log-likelihood under the Rao-Kupper tie model (``eta = softplus(raw_eta)``)."""
    return _tie_loss(rao_kupper_log_probs, r_c, r_r, tie, raw_eta, weight, margin)


def centering_penalty(r_c: Tensor, r_r: Tensor, coef: float) -> Tensor:
    """``coef * mean((r_c + r_r)^2)``: keeps rewards centred on zero (0 when ``coef`` is 0)."""
    r_c, r_r = _f32(r_c), _f32(r_r)
    if coef == 0:
        return torch.zeros((), device=r_c.device)
    return coef * ((r_c + r_r) ** 2).mean()


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
) -> Tensor:
    """The training objective: Bradley-Terry when there are no ties (or no tie model), else the chosen tie model;
    plus reward centering. Used by both training modes."""
    has_ties = tie is not None and bool(torch.as_tensor(tie).any())
    if tie_model is None or not has_ties and tie_param is None:
        if has_ties:
            raise ValueError("tie pairs need a tie model (ties='model') or must be excluded (ties='exclude')")
        base = bt_loss(r_c, r_r, weight, margin)
    else:
        if tie_param is None:
            raise ValueError(f"tie model {tie_model!r} needs its tie parameter")
        tie_t = tie if tie is not None else torch.zeros_like(_f32(r_c), dtype=torch.bool)
        if tie_model == "davidson":
            base = davidson_tie_loss(r_c, r_r, tie_t, tie_param, weight, margin)
        elif tie_model == "rao_kupper":
            base = rao_kupper_loss(r_c, r_r, tie_t, tie_param, weight, margin)
        else:
            raise ValueError(f"unknown tie model {tie_model!r} (expected davidson or rao_kupper)")
    return base + centering_penalty(r_c, r_r, center_coef)


def init_tie_param(tie_model: str, tie_share: float) -> float:
    """A starting value for the tie parameter matching the observed share of ties (at equal scores)."""
    p = min(max(tie_share, 1e-3), 0.9)
    if tie_model == "davidson":  # P(tie | d=0) = nu / (2 + nu)
        return math.log(2 * p / (1 - p))
    # Rao-Kupper at d=0: P(tie) = 1 - 2 sigmoid(-eta)  ->  eta = log((1+p)/(1-p)); raw = softplus^-1(eta)
    eta = math.log((1 + p) / (1 - p))
    return math.log(math.expm1(eta))
