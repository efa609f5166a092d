"""Heads on cached features: K linear or small-MLP reward heads trained together, in one batched computation.

Features are standardised with the training responses' mean and std (stored with the head). Each ensemble
member has its own seed and, when K > 1, its own bootstrap resample of the training pairs (multinomial counts
used as pair weights), so members disagree where the data is thin: their std is the score's uncertainty.

Training is full-batch Adam (minibatches above ``full_batch_pairs``) on the weighted preference loss
(Bradley-Terry, or a tie model with one learned tie parameter per member) plus an L2 penalty
``weight_decay * ||W||^2``. Each member keeps the weights of its best validation loss; training stops when no
member has improved for ``patience`` evaluations (early stopping). Without validation pairs it runs all epochs.
10,000 cached pairs retrain in a few seconds on a laptop CPU.
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

from rm_engine.config import Cancelled
from rm_engine.length_covariate import length_only_coef, standardize
from rm_engine.loss import init_tie_param, preference_loss

Progress = Callable[[dict[str, Any]], None] | None


@dataclass(frozen=True)
class PairArrays:
    """Pairs as indices into a feature matrix: ``ci``/``ri`` rows of chosen/rejected, ``tie`` flags, ``weight``
    (source weight), ``margin`` (from label strength)."""

    ci: np.ndarray
    ri: np.ndarray
    tie: np.ndarray
    weight: np.ndarray
    margin: np.ndarray

    @classmethod
    def build(cls, ci: Any, ri: Any, tie: Any = None, weight: Any = None, margin: Any = None) -> PairArrays:
        """Arrays with defaults: no ties, weight 1, margin 0."""
        ci = np.asarray(ci, dtype=np.int64)
        n = ci.size
        return cls(
            ci=ci,
            ri=np.asarray(ri, dtype=np.int64),
            tie=np.zeros(n, bool) if tie is None else np.asarray(tie, dtype=bool),
            weight=np.ones(n, np.float32) if weight is None else np.asarray(weight, dtype=np.float32),
            margin=np.zeros(n, np.float32) if margin is None else np.asarray(margin, dtype=np.float32),
        )

    def __len__(self) -> int:
        return int(self.ci.size)


@dataclass(frozen=True)
class HeadTrainSpec:
    """Head-training settings (taken from ``TrainConfig.resolved()``)."""

    kind: str = "linear"
    members: int = 1
    hidden: int = 128
    epochs: int = 300
    lr: float = 3e-3
    weight_decay: float = 1e-2
    tie_model: str | None = None
    center_coef: float = 0.0
    seed: int = 0
    patience: int = 30
    eval_every: int = 1
    full_batch_pairs: int = 16384
    minibatch_pairs: int = 4096
    dropout: float = 0.1


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
    length_coef: np.ndarray | None = None  # per member, on the standardised log length (``lengths`` given)
    train_loss: list[float] = field(default_factory=list)  # per member, at the last step
    val_loss: list[float] | None = None  # per member, the best validation loss (inf: never improved on the start)


def _member_weights(pairs: PairArrays, members: int, seed: int) -> np.ndarray:
    """``(K, n)`` pair weights: source weights times bootstrap counts (no bootstrap when K == 1)."""
    base = pairs.weight.astype(np.float32)
    if members == 1:
        return base[None, :]
    rng = np.random.default_rng(seed + 7919)
    n = len(pairs)
    counts = np.stack([rng.multinomial(n, np.full(n, 1.0 / n)) for _ in range(members)]).astype(np.float32)
    return counts * base[None, :]


def _per_member_loss(rc: torch.Tensor, rr: torch.Tensor, tie: torch.Tensor, margin: torch.Tensor, w: torch.Tensor,
                     spec: HeadTrainSpec, tie_param: torch.Tensor | None) -> torch.Tensor:
    """Loss of each member ``(K,)``: ``rc``/``rr`` are ``(m, K)`` scores, ``w`` is ``(K, m)``."""
    losses = []
    for k in range(rc.shape[1]):
        if float(w[k].sum()) <= 0:
            losses.append(torch.zeros((), device=rc.device))
            continue
        losses.append(preference_loss(
            rc[:, k], rr[:, k], tie=tie, weight=w[k], margin=margin,
            tie_model=spec.tie_model, tie_param=None if tie_param is None else tie_param[k],
            center_coef=spec.center_coef,
        ))
    return torch.stack(losses)


def train_heads(
    X: np.ndarray,
    train: PairArrays,
    spec: HeadTrainSpec,
    *,
    val: PairArrays | None = None,
    lengths: np.ndarray | None = None,
    progress: Progress = None,
    should_stop: Callable[[], bool] | None = None,
) -> HeadResult:
    """Train ``spec.members`` heads on features ``X`` (rows indexed by the pairs); see the module docstring.

    ``lengths`` (one per row of ``X``, e.g. log word counts): the loss then sees ``score + beta * length`` with
    ``beta`` learned per member and free of weight decay, so the labels' length preference goes into ``beta``
    rather than the head; the head alone is returned (``length_coef`` = beta, on the standardised length)."""
    t0 = time.time()
    if len(train) == 0:
        raise ValueError("no training pairs")
    torch.manual_seed(spec.seed)
    Xt = torch.as_tensor(np.asarray(X, dtype=np.float32))
    used = np.unique(np.concatenate([train.ci, train.ri]))
    mu = Xt[used].mean(0)
    sigma = Xt[used].std(0).clamp(min=1e-4) if used.size > 1 else torch.ones(Xt.shape[1])
    head = EnsembleHead(spec.kind, Xt.shape[1], spec.members, spec.hidden, spec.seed, spec.dropout)
    head.mu.copy_(mu)
    head.sigma.copy_(sigma)
    Lz: torch.Tensor | None = None
    beta: nn.Parameter | None = None
    if lengths is not None:
        lt = torch.as_tensor(np.asarray(lengths, dtype=np.float32)).reshape(-1)
        if lt.numel() != Xt.shape[0]:
            raise ValueError(f"lengths: {lt.numel()} values for {Xt.shape[0]} feature rows")
        Lz = torch.as_tensor(standardize(lt.numpy(), lt.numpy()[used]), dtype=torch.float32)
        keep = ~train.tie  # start from what length alone explains, so the head's gradients begin on the rest
        b0 = length_only_coef((Lz[train.ci[keep]] - Lz[train.ri[keep]]).numpy(), train.weight[keep])
        beta = nn.Parameter(torch.full((spec.members,), b0))

    def scores(Z: torch.Tensor, L: torch.Tensor | None) -> torch.Tensor:
        """What the loss sees: the head's scores, plus the length term while training with ``lengths``."""
        r = head.forward_standardized(Z)
        return r if beta is None else r + L[:, None] * beta[None, :]

    def tens(p: PairArrays, X: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        """The standardised rows this split uses (once; the loop calls forward_standardized) and its pairs with
        indices remapped into those rows: training never touches the rows of other splits."""
        rows, inv = np.unique(np.concatenate([p.ci, p.ri]), return_inverse=True)
        n = len(p)
        Z = head.standardize(X[torch.as_tensor(rows)])
        return Z, {"ci": torch.as_tensor(inv[:n]), "ri": torch.as_tensor(inv[n:]), "tie": torch.as_tensor(p.tie),
                   "margin": torch.as_tensor(p.margin), "len": None if Lz is None else Lz[torch.as_tensor(rows)]}

    Xtr, tp = tens(train, Xt)
    Xva, vp = tens(val, Xt) if val is not None and len(val) else (None, None)
    del Xt
    w_train = torch.as_tensor(_member_weights(train, spec.members, spec.seed))
    w_val = torch.as_tensor(val.weight)[None, :].expand(spec.members, -1) if vp is not None else None
    tie_param: nn.Parameter | None = None
    if spec.tie_model is not None:
        share = float(train.tie.mean()) if len(train) else 0.0
        tie_param = nn.Parameter(torch.full((spec.members,), init_tie_param(spec.tie_model, share)))
    params = list(head.parameters()) + [p for p in (tie_param, beta) if p is not None]
    opt = torch.optim.Adam(params, lr=spec.lr)
    n = len(train)
    mb = n if n <= spec.full_batch_pairs else spec.minibatch_pairs
    gen = torch.Generator().manual_seed(spec.seed)

    best_loss = torch.full((spec.members,), float("inf"))
    best_state = copy.deepcopy(head.state_dict())
    best_tie = tie_param.detach().clone() if tie_param is not None else None
    best_beta = beta.detach().clone() if beta is not None else None
    best_epoch, since_best, history = 0, 0, []
    epoch = 0
    for epoch in range(1, spec.epochs + 1):
        if should_stop is not None and should_stop():
            raise Cancelled("head training cancelled")
        head.train()
        order = torch.randperm(n, generator=gen) if mb < n else None
        for start in range(0, n, mb):
            if order is None:
                r = scores(Xtr, tp["len"])
                rc, rr, tie, mg, w = r[tp["ci"]], r[tp["ri"]], tp["tie"], tp["margin"], w_train
            else:  # only the rows of this minibatch go through the head
                idx = order[start:start + mb]
                m = idx.numel()
                both = torch.cat([tp["ci"][idx], tp["ri"][idx]])
                r = scores(Xtr[both], None if tp["len"] is None else tp["len"][both])
                rc, rr, tie, mg, w = r[:m], r[m:], tp["tie"][idx], tp["margin"][idx], w_train[:, idx]
            loss_k = _per_member_loss(rc, rr, tie, mg, w, spec, tie_param)
            loss = loss_k.sum() + spec.weight_decay * head.l2()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if vp is None or epoch % spec.eval_every:
            if vp is None:
                best_epoch = epoch
            continue
        head.eval()
        with torch.no_grad():
            r = scores(Xva, vp["len"])
            vl = _per_member_loss(r[vp["ci"]], r[vp["ri"]], vp["tie"], vp["margin"], w_val, spec, tie_param)
            d = (r[vp["ci"]] - r[vp["ri"]]).mean(1)
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
            progress({"phase": "train", "step": epoch, "total": spec.epochs, "loss": float(loss_k.detach().mean()),
                      "val_accuracy": vacc, "eta_s": None})
        if since_best >= spec.patience:
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
    )
