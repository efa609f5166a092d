"""Linear-probe initialisation of a fine-tune's score head (``TrainConfig.head_init = "probe"``).

A fine-tune normally starts from a freshly initialised head: for the first steps the gradients that reach the
backbone come from a random direction, and with ~1k pairs and 2 epochs those steps are a large share of the run.
LP-FT (Kumar et al. 2022, "Fine-Tuning can Distort Pretrained Features") first fits the head alone on the frozen
backbone's features, then fine-tunes everything from there. The fit here is the head-mode recipe on the features
the head will read: a weighted Bradley-Terry loss on standardised features plus ``l2 * ||w||^2`` (convex, solved
with L-BFGS in float64), mapped back to the raw features. Tie pairs are left out of the fit.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rm_engine.finetune.reward_net import RewardNet, Row, by_length

DEFAULT_L2 = 0.1  # head mode's default for a linear head on standardised features
# Rich pooling's head reads 4 x hidden features (1,536 for MiniLM): at 0.1 the probe over-fits ~1k pairs (train
# 0.90, held-out 0.56-0.59 on HH-harmless); 1.0 is head mode's best for rich linear heads (BENCHMARKS.md).
RICH_L2 = 1.0


def fit_probe(fc: torch.Tensor, fr: torch.Tensor, weight: torch.Tensor, l2: float = DEFAULT_L2,
              max_iter: int = 500) -> tuple[torch.Tensor, float]:
    """``(w, b)`` such that ``r(f) = w . f + b`` minimises ``sum_i p_i softplus(-(r(fc_i) - r(fr_i))) +
    l2 * ||w * std||^2`` with ``p = weight / sum(weight)``, where ``std`` is the per-dimension std of all rows of
    ``fc`` and ``fr`` (the penalty is on the standardised weights). ``b`` centres the rewards of those rows at 0."""
    if fc.shape != fr.shape or fc.ndim != 2 or weight.shape != fc.shape[:1]:
        raise ValueError(f"fit_probe: shapes {tuple(fc.shape)}, {tuple(fr.shape)}, {tuple(weight.shape)} do not match")
    if not float(weight.sum()) > 0:
        raise ValueError("fit_probe: the pair weights sum to 0 (no pair to fit)")
    x = torch.cat([fc, fr]).double()
    mu, sd = x.mean(0), x.std(0).clamp_min(1e-6)
    d = (fc - fr).double() / sd
    p = weight.double() / weight.double().sum()
    v = torch.zeros(d.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([v], lr=1.0, max_iter=max_iter, tolerance_grad=1e-10, tolerance_change=1e-12,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (p * F.softplus(-(d @ v))).sum() + l2 * v.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    w = v.detach() / sd
    return w.float(), float(-(w * mu).sum())


def _active(module: nn.Module) -> nn.Module:
    """The layer that runs: peft's ``ModulesToSaveWrapper`` (LoRA) holds a trainable copy per adapter."""
    copies = getattr(module, "modules_to_save", None)
    if isinstance(copies, nn.ModuleDict) and len(copies):
        name = getattr(module, "active_adapter", None)
        name = name[0] if isinstance(name, (list, tuple)) and name else name
        return copies[name] if isinstance(name, str) and name in copies else next(iter(copies.values()))
    return module


def init_head_by_probe(net: RewardNet, chosen: Sequence[Row], rejected: Sequence[Row],
                       weights: Sequence[float], ties: Sequence[bool], pad_id: int, device: torch.device,
                       l2: float | None = None) -> dict[str, float]:
    """Set ``net.head`` to the linear probe fitted on the frozen features of the training pairs. Returns what the
    history records: the probe's training accuracy (strict ``>``, ties excluded), pairs fitted and ``l2``."""
    l2 = (RICH_L2 if net.pooling == "rich" else DEFAULT_L2) if l2 is None else l2
    keep = [i for i, t in enumerate(ties) if not t and weights[i] > 0]
    if not keep:
        raise ValueError("head_init='probe': no decided pair with a positive weight to fit the probe on")
    feats = by_length(net, net.pooled, [chosen[i] for i in keep] + [rejected[i] for i in keep], pad_id, device)
    fc, fr = feats[: len(keep)], feats[len(keep):]
    w, b = fit_probe(fc, fr, torch.tensor([float(weights[i]) for i in keep]), l2=l2)
    head = _active(net.head)
    if not isinstance(head, nn.Linear) or head.out_features != 1 or head.in_features != w.numel():
        raise ValueError(f"head_init='probe': the score head is not one linear layer onto 1 output ({head!r})")
    with torch.no_grad():
        head.weight.copy_(w.to(head.weight)[None, :])
        if head.bias is not None:
            head.bias.fill_(b)
    return {"train_accuracy": float(((fc - fr) @ w > 0).float().mean()), "pairs": float(len(keep)), "l2": l2}
