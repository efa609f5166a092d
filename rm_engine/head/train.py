"""Heads on cached features: K linear or small-MLP reward heads trained together, in one batched computation.

Features are standardised with the training responses' mean and std (stored with the head). Each ensemble
member has its own seed and, when K > 1, its own bootstrap resample of the training pairs (multinomial counts
used as pair weights), so members disagree where the data is thin: their std is the score's uncertainty.

Training is full-batch Adam (minibatches above :data:`FULL_BATCH_PAIRS`) on the training objective of
:mod:`rm_engine.objective` (Bradley-Terry, or a tie model with one learned tie parameter per member; the length
covariate with one coefficient per member) plus an L2 penalty ``weight_decay * ||W||^2``. Every setting comes from
the run's ``TrainConfig`` (head mode's options and the common ones). Each member keeps the weights of its best
validation loss; training stops when no member has improved for ``patience`` evaluations (early stopping). Without
validation pairs it runs all epochs. 10,000 cached pairs retrain in a few seconds on a laptop CPU.
"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from rm_engine.config import Cancelled, TrainConfig
from rm_engine.loss import init_tie_param
from rm_engine.objective import PairTerms, active_tie_model, length_start, member_weights, preference_loss

Progress = Callable[[dict[str, Any]], None] | None
HIDDEN = 128  # an MLP head's hidden units
DROPOUT = 0.1  # an MLP head's dropout while training
FULL_BATCH_PAIRS = 16384  # up to this many training pairs, each step sees all of them
MINIBATCH_PAIRS = 4096  # beyond it, minibatches of this many


@dataclass(frozen=True)
class PairArrays:
    """Pairs as indices into a feature matrix: ``ci``/``ri`` rows of chosen/rejected, ``tie`` flags, ``weight``
    (the pair weight), ``margin`` (from label strength) and, for the length covariate, the standardised lengths
    ``length_c``/``length_r`` of the chosen and rejected responses (:class:`rm_engine.objective.PairTerms`)."""

    ci: np.ndarray
    ri: np.ndarray
    tie: np.ndarray
    weight: np.ndarray
    margin: np.ndarray
    length_c: np.ndarray | None = None
    length_r: np.ndarray | None = None

    @classmethod
    def build(cls, ci: Any, ri: Any, tie: Any = None, weight: Any = None, margin: Any = None,
              length_c: Any = None, length_r: Any = None) -> PairArrays:
        """Arrays with defaults: no ties, weight 1, margin 0, no lengths."""
        ci = np.asarray(ci, dtype=np.int64)
        n = ci.size
        return cls(
            ci=ci,
            ri=np.asarray(ri, dtype=np.int64),
            tie=np.zeros(n, bool) if tie is None else np.asarray(tie, dtype=bool),
            weight=np.ones(n, np.float32) if weight is None else np.asarray(weight, dtype=np.float32),
            margin=np.zeros(n, np.float32) if margin is None else np.asarray(margin, dtype=np.float32),
            length_c=None if length_c is None else np.asarray(length_c, dtype=np.float32),
            length_r=None if length_r is None else np.asarray(length_r, dtype=np.float32),
        )

    @classmethod
    def of(cls, ci: Any, ri: Any, terms: PairTerms) -> PairArrays:
        """The pairs with rows ``ci``/``ri`` and the loss terms ``terms`` (``rm_engine.objective.pair_terms``)."""
        return cls.build(ci, ri, terms.tie, terms.weight, terms.margin, terms.length_c, terms.length_r)

    def __len__(self) -> int:
        return int(self.ci.size)


class EnsembleHead(nn.Module):
    """K heads over standardised features; ``forward(x) -> (n, K)`` raw scores."""

    def __init__(self, kind: str, in_dim: int, members: int, hidden: int = 128, seed: int = 0, dropout: float = 0.0) -> None:
        super().__init__()
        if kind not in ("linear", "mlp"):
            raise ValueError(f"head kind must be linear or mlp, got {kind!r}")
        self.kind, self.in_dim, self.members, self.hidden = kind, in_dim, members, hidden
        self.register_buffer("mu", torch.zeros(in_dim))
        self.register_buffer("sigma", torch.ones(in_dim))
        g = torch.Generator().manual_seed(seed)
        if kind == "linear":
            self.w = nn.Parameter(torch.randn(members, in_dim, generator=g) * 0.01)
            self.b = nn.Parameter(torch.zeros(members))
        else:
            self.w1 = nn.Parameter(torch.randn(members, in_dim, hidden, generator=g) / math.sqrt(in_dim))
            self.b1 = nn.Parameter(torch.zeros(members, hidden))
            self.w2 = nn.Parameter(torch.randn(members, hidden, generator=g) * 0.01)
            self.b2 = nn.Parameter(torch.zeros(members))
        self.dropout = nn.Dropout(dropout)

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mu) / self.sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_standardized(self.standardize(x.float()))

    def forward_standardized(self, z: torch.Tensor) -> torch.Tensor:
        """Scores of already standardised rows (training standardises the feature matrix once)."""
        if self.kind == "linear":
            return z @ self.w.T + self.b
        h = torch.nn.functional.gelu(torch.einsum("nd,kdh->nkh", self.dropout(z), self.w1) + self.b1)
        return torch.einsum("nkh,kh->nk", self.dropout(h), self.w2) + self.b2

    def l2(self) -> torch.Tensor:
        """Sum of squared weights (biases excluded), per member summed."""
        if self.kind == "linear":
            return (self.w ** 2).sum()
        return (self.w1 ** 2).sum() + (self.w2 ** 2).sum()

    def meta(self) -> dict[str, Any]:
        """Shape description stored beside the tensors (enough to rebuild the module)."""
        return {"kind": self.kind, "in_dim": self.in_dim, "members": self.members, "hidden": self.hidden}

    @classmethod
    def from_state(cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> EnsembleHead:
        """Rebuild from :meth:`meta` and ``state_dict()`` tensors (e.g. read from safetensors)."""
        head = cls(meta["kind"], int(meta["in_dim"]), int(meta["members"]), int(meta.get("hidden", 128)))
        head.load_state_dict({k: v for k, v in tensors.items() if not k.startswith("tie.")}, strict=True)
        head.eval()
        return head

    @torch.inference_mode()
    def score(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        """``(n, K)`` scores of raw feature rows (eval mode, no gradients)."""
        self.eval()
        return self(torch.as_tensor(x, dtype=torch.float32)).numpy()


@dataclass
class HeadResult:
    """A trained head plus its history: ``tie_param`` per member (or None), the best epoch, timings."""

    head: EnsembleHead
    tie_param: np.ndarray | None
    best_epoch: int
    epochs_run: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    length_coef: np.ndarray | None = None  # per member, on the standardised log length (``length_covariate``)
    train_loss: list[float] = field(default_factory=list)  # per member, at the last step
    val_loss: list[float] | None = None  # per member, the best validation loss (inf: never improved on the start)
    tie_model: str | None = None  # the tie model trained through (None: Bradley-Terry)


def member_losses(r_c: torch.Tensor, r_r: torch.Tensor, pairs: dict[str, torch.Tensor | None], w: torch.Tensor,
                  tie_model: str | None, center_coef: float, tie_param: torch.Tensor | None,
                  beta: torch.Tensor | None) -> torch.Tensor:
    """The objective of each member ``(K,)`` (:func:`rm_engine.objective.preference_loss`): ``r_c``/``r_r`` are
    ``(m, K)`` scores, ``pairs`` the batch's ``tie``, ``margin``, ``len_c``, ``len_r``, ``w`` the ``(K, m)`` member
    weights; ``tie_param`` and ``beta`` one per member."""
    return torch.stack([preference_loss(
        r_c[:, k], r_r[:, k], tie=pairs["tie"], weight=w[k], margin=pairs["margin"], tie_model=tie_model,
        tie_param=None if tie_param is None else tie_param[k], center_coef=center_coef,
        beta=None if beta is None else beta[k], length_c=pairs["len_c"], length_r=pairs["len_r"],
    ) for k in range(r_c.shape[1])])


def train_heads(
    X: np.ndarray,
    train: PairArrays,
    cfg: TrainConfig,
    *,
    val: PairArrays | None = None,
    progress: Progress = None,
    should_stop: Callable[[], bool] | None = None,
) -> HeadResult:
    """Train ``cfg.ensemble`` heads of kind ``cfg.head`` on features ``X`` (rows indexed by the pairs); see the
    module docstring. Fields left at None take head mode's defaults (``TrainConfig.resolved``).

    With ``cfg.length_covariate`` the pairs carry their standardised lengths (``PairArrays.length_c``/``length_r``):
    the loss sees ``score + beta * length`` with ``beta`` learned per member and free of weight decay, so the labels'
    length preference goes into ``beta`` rather than the head; the head alone is returned (``length_coef`` = beta)."""
    t0 = time.time()
    cfg = cfg.resolved()
    if len(train) == 0:
        raise ValueError("no training pairs")
    if cfg.length_covariate and any(p is not None and p.length_c is None for p in (train, val)):
        raise ValueError("length covariate: the pairs carry no response lengths (rm_engine.objective.pair_terms)")
    members = cfg.ensemble
    torch.manual_seed(cfg.seed)
    Xt = torch.as_tensor(np.asarray(X, dtype=np.float32))
    used = np.unique(np.concatenate([train.ci, train.ri]))
    mu = Xt[used].mean(0)
    sigma = Xt[used].std(0).clamp(min=1e-4) if used.size > 1 else torch.ones(Xt.shape[1])
    head = EnsembleHead(cfg.head, Xt.shape[1], members, HIDDEN, cfg.seed, DROPOUT)
    head.mu.copy_(mu)
    head.sigma.copy_(sigma)
    W = member_weights(cfg, train.weight)
    beta: nn.Parameter | None = None
    if cfg.length_covariate:  # start from what length alone explains, so the head's gradients begin on the rest
        beta = nn.Parameter(torch.tensor([length_start(train.length_c, train.length_r, train.tie, W[k])
                                          for k in range(members)], dtype=torch.float32))

    def tens(p: PairArrays, X: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        """The standardised rows this split uses (once; the loop calls forward_standardized) and its pairs with
        indices remapped into those rows: training never touches the rows of other splits."""
        rows, inv = np.unique(np.concatenate([p.ci, p.ri]), return_inverse=True)
        n = len(p)
        Z = head.standardize(X[torch.as_tensor(rows)])
        lens = {"len_c": None, "len_r": None} if beta is None else \
            {"len_c": torch.as_tensor(p.length_c), "len_r": torch.as_tensor(p.length_r)}
        return Z, {"ci": torch.as_tensor(inv[:n]), "ri": torch.as_tensor(inv[n:]), "tie": torch.as_tensor(p.tie),
                   "margin": torch.as_tensor(p.margin), **lens}

    Xtr, tp = tens(train, Xt)
    Xva, vp = tens(val, Xt) if val is not None and len(val) else (None, None)
    del Xt
    w_train = torch.as_tensor(W, dtype=torch.float32)
    w_val = torch.as_tensor(val.weight)[None, :].expand(members, -1) if vp is not None else None
    # the validation loss goes through the objective too: its ties need the tie model even when training has none
    tie_model = active_tie_model(cfg, train.tie if val is None else np.concatenate([train.tie, val.tie]))
    tie_param: nn.Parameter | None = None
    if tie_model is not None:
        tie_param = nn.Parameter(torch.full((members,), init_tie_param(tie_model, float(train.tie.mean()))))
    params = list(head.parameters()) + [p for p in (tie_param, beta) if p is not None]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    n = len(train)
    mb = n if n <= FULL_BATCH_PAIRS else MINIBATCH_PAIRS
    gen = torch.Generator().manual_seed(cfg.seed)

    best_loss = torch.full((members,), float("inf"))
    best_state = copy.deepcopy(head.state_dict())
    best_tie = tie_param.detach().clone() if tie_param is not None else None
    best_beta = beta.detach().clone() if beta is not None else None
    best_epoch, since_best, history = 0, 0, []
    epoch = 0
    for epoch in range(1, cfg.epochs + 1):
        if should_stop is not None and should_stop():
            raise Cancelled("head training cancelled")
        head.train()
        order = torch.randperm(n, generator=gen) if mb < n else None
        for start in range(0, n, mb):
            if order is None:
                r = head.forward_standardized(Xtr)
                rc, rr, batch, w = r[tp["ci"]], r[tp["ri"]], tp, w_train
            else:  # only the rows of this minibatch go through the head
                idx = order[start:start + mb]
                m = idx.numel()
                r = head.forward_standardized(Xtr[torch.cat([tp["ci"][idx], tp["ri"][idx]])])
                batch = {k: None if v is None else v[idx] for k, v in tp.items()}
                rc, rr, w = r[:m], r[m:], w_train[:, idx]
            loss_k = member_losses(rc, rr, batch, w, tie_model, cfg.center_coef, tie_param, beta)
            loss = loss_k.sum() + cfg.weight_decay * head.l2()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if vp is None:
            best_epoch = epoch
            continue
        head.eval()
        with torch.no_grad():
            r = head.forward_standardized(Xva)
            vl = member_losses(r[vp["ci"]], r[vp["ri"]], vp, w_val, tie_model, cfg.center_coef, tie_param, beta)
            d = (r[vp["ci"]] - r[vp["ri"]]).mean(1)  # the score alone, as it is served
            decided = ~vp["tie"]
            vacc = float((d[decided] > 0).float().mean()) if bool(decided.any()) else float("nan")
        improved = vl < best_loss - 1e-5
        if bool(improved.any()):
            state = head.state_dict()
            for k in torch.nonzero(improved).flatten().tolist():
                for name, t in state.items():
                    if name in ("mu", "sigma"):
                        continue
                    best_state[name][k] = t[k].detach().clone()
                if best_tie is not None and tie_param is not None:
                    best_tie[k] = tie_param.detach()[k]
                if best_beta is not None and beta is not None:
                    best_beta[k] = beta.detach()[k]
            best_loss = torch.where(improved, vl, best_loss)
            best_epoch, since_best = epoch, 0
        else:
            since_best += 1
        history.append({"epoch": epoch, "train_loss": float(loss_k.detach().mean()), "val_loss": float(vl.mean()), "val_accuracy": vacc})
        if progress is not None:
            progress({"phase": "train", "step": epoch, "total": cfg.epochs, "loss": float(loss_k.detach().mean()),
                      "val_accuracy": vacc, "eta_s": None})
        if since_best >= cfg.patience:
            break
    if vp is not None:
        head.load_state_dict(best_state)
        final_tie, final_beta = best_tie, best_beta
    else:
        final_tie = tie_param.detach() if tie_param is not None else None
        final_beta = beta.detach() if beta is not None else None
    head.eval()
    return HeadResult(
        head=head,
        tie_param=None if final_tie is None else final_tie.numpy().copy(),
        best_epoch=best_epoch,
        epochs_run=epoch,
        seconds=time.time() - t0,
        history=history,
        length_coef=None if final_beta is None else final_beta.numpy().copy(),
        train_loss=[float(x) for x in loss_k.detach()],
        val_loss=None if vp is None else [float(x) for x in best_loss],
        tie_model=tie_model,
    )
