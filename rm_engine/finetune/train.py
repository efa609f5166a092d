"""Finetune mode: the whole backbone (or LoRA adapters) with a scalar head, trained on preference pairs.

Design, and why:

* ``AutoModelForSequenceClassification`` with one label, from any allowed local Hugging Face directory, encoder
  or decoder. Decoders are padded on the right and their score is read at the last non-pad token *found through
  the attention mask*, never by searching for ``pad_token_id`` (pad often equals eos: the "stuck at 0.693" bug).
* Chosen and rejected go through ONE forward pass (rows ``[c_1..c_k, r_1..r_k]``), in token-budget batches of
  similar length (:mod:`rm_engine.finetune.batching`): almost no compute is spent on padding.
* On CUDA: bf16 autocast over fp32 master weights, fused AdamW; the loss is always computed in fp32.
* No host synchronisation per step: loss and accuracy accumulate in device tensors and are read every
  ``log_every`` steps; ``should_stop`` is a host-side call checked between steps.
* Dropout is disabled (config fields and modules), as TRL does: with dropout the two passes of a pair see
  different networks and held-out accuracy drops.
* Gradient checkpointing only when ``cfg.grad_checkpointing`` or when memory demands it: on one GPU a probe step
  on the heaviest batch (with packing, the fullest row, uncompiled) turns it on, then halves the token budget, only
  if needed (:mod:`rm_engine.finetune.memory_fit`);
  ``torch.compile`` only when ``cfg.compile``.
* Distributed data parallel when a ``torch.distributed`` process group is initialised (see
  :mod:`rm_engine.finetune.ddp`): every rank builds the same global batch plan and takes its shard; losses are
  normalised by the *global* weight sum so N ranks compute the same update as one process on the whole batch.
  The model is replicated (DDP) or sharded (FSDP2, ``cfg.strategy``; :mod:`rm_engine.finetune.sharding`).

Padding-free packing is optional (``cfg.packing``, decoders only; :mod:`rm_engine.finetune.packing`): each batch becomes ONE
row ``[1, batch_tokens]`` (sequences end to end, position ids restarting at 0, attention confined to each sequence,
one dummy tail segment), so every step has the same shape and ``torch.compile`` compiles the backbone once
(``dynamic=False``) instead of once per padded shape. In one process the batches are random pairs filling the row
with real tokens (:func:`rm_engine.finetune.batching.plan_packed`: far fewer empty slots than the padded plan, nearly all
in the epoch's last row; BENCHMARKS.md, token slots per step); DDP ranks fill one such row each. Same
loss, weights, on-device accumulation and DDP logic; validation and scoring stay padded. Tested on CPU: packed
scores and gradients equal padded ones (sdpa; flex_attention forward, eager and compiled in one graph), packed
training on a given plan reaches the same weights as padded training on it (full, LoRA, checkpointing, compile; two
gloo DDP ranks). On CUDA packed rows run torch's varlen flash attention where the model supports it, else
flex_attention (a sparse BlockMask); the GPU-only tests show both equal to padded training (DEVELOPING.md) and
BENCHMARKS.md gives their speed. Encoders fall back to padded batches (logged); on CPU packing needs
``batch_tokens <= 4096`` (dense mask).
"""
from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from db.config import Settings
from db.pairs import TrainingPair
from rm_engine.backbone import TRUNCATION_POLICY, is_decoder, load_config, load_tokenizer, resolve_backbone
from rm_engine.config import Cancelled, TrainConfig
from rm_engine.device import torch_device
from rm_engine.finetune import distributed, memory_plan, sharding
from rm_engine.finetune.batching import BatchPlanConfig, plan_batches, plan_packed, plan_packed_ranks, shard
from rm_engine.finetune.linear_probe import init_head_by_probe
from rm_engine.finetune.memory_fit import fit_to_memory, fits, heaviest
from rm_engine.finetune.model import FinetunedModel, FinetuneMeta, load_backbone_model
from rm_engine.finetune.packing import PackedTrainer
from rm_engine.finetune.reward_net import RewardNet, backbone_pooling, unwrap_hf
from rm_engine.loss import init_tie_param, pair_nll
from rm_engine.objective import PairTerms, active_tie_model, length_start, pair_terms, preference_loss
from rm_engine.progress import eta_s

__all__ = ["FinetuneResult", "FinetunedModel", "train_finetune", "batch_loss", "plan_epoch"]

Progress = Callable[[dict], None]
log = logging.getLogger(__name__)


@dataclass
class FinetuneResult:
    """What :func:`train_finetune` returns: the trained model (ready to score and save), and one dict per epoch
    (``epoch, train_loss, train_accuracy, val_loss, val_accuracy, val_tie_rate, steps, pairs, tokens,
    padded_tokens, seconds, pairs_per_s, tokens_per_s``)."""

    model: FinetunedModel
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def tokenizer(self) -> Any:
        """The tokenizer the model was trained with (pad token and padding side already set)."""
        return self.model.tokenizer


def host_rows(terms: PairTerms, idx: Sequence[int]) -> torch.Tensor:
    """The loss terms of pairs ``idx`` as one host tensor ``(k, 5)``, moved to the device in one copy per step:
    weight, margin, tie, chosen and rejected standardised length (0 without the length covariate)."""
    no_len = np.zeros(len(terms))
    lc = terms.length_c if terms.length_c is not None else no_len
    lr = terms.length_r if terms.length_r is not None else no_len
    return torch.tensor([[terms.weight[i], terms.margin[i], float(terms.tie[i]), lc[i], lr[i]] for i in idx],
                        dtype=torch.float32)


def batch_loss(r: torch.Tensor, host: torch.Tensor, *, tie_model: str | None, tie_param: torch.Tensor | None,
               beta: torch.Tensor | None, center_coef: float, weight_total: float, count_total: int) -> torch.Tensor:
    """The training objective (:func:`rm_engine.objective.preference_loss`) of this rank's share of a batch:
    ``r`` the scores of its rows ``[c_1..c_k, r_1..r_k]``, ``host`` their :func:`host_rows`, normalised by the
    global batch's weight sum and pair count. No host sync."""
    k = host.shape[0]
    return preference_loss(
        r[:k], r[k:], tie=None if tie_param is None else host[:, 2].bool(), weight=host[:, 0], margin=host[:, 1],
        tie_model=tie_model, tie_param=tie_param, center_coef=center_coef, beta=beta,
        length_c=None if beta is None else host[:, 3], length_r=None if beta is None else host[:, 4],
        weight_total=weight_total, count_total=count_total)


def plan_epoch(lengths: Sequence[int], cfg: TrainConfig, epoch: int, world_size: int = 1, *,
               packed_sizes: Sequence[int] | None = None) -> list[list[int]]:
    """The global batches of one epoch (identical on every rank).

    With ``cfg.batch_tokens > 0``: token-budget batches of similar length, ``batch_tokens`` padded tokens per
    device (``x world_size`` per global batch), at most ``cfg.max_batch_pairs`` pairs per device (0: no cap). With
    ``batch_tokens == 0``: random batches of ``batch_size`` pairs per device. With ``packed_sizes`` (each pair's
    chosen + rejected tokens; packed training): random batches filling ``batch_tokens`` real tokens
    (:func:`rm_engine.finetune.batching.plan_packed`), since a packed row costs its full length anyway; with several ranks,
    one such row per rank per step (:func:`rm_engine.finetune.batching.plan_packed_ranks`).
    """
    seed = cfg.seed * 1000 + epoch
    if packed_sizes is not None and cfg.batch_tokens > 0:
        cap = cfg.max_batch_pairs or None
        if world_size != 1:
            return list(plan_packed_ranks(packed_sizes, cfg.batch_tokens, world_size, max_items=cap, seed=seed))
        return plan_packed(packed_sizes, cfg.batch_tokens, max_items=cap, seed=seed)
    if cfg.batch_tokens <= 0:
        rng = np.random.default_rng(seed)
        order = [int(i) for i in rng.permutation(len(lengths))]
        size = cfg.batch_size * world_size
        plan = [order[k : k + size] for k in range(0, len(order), size)]
        if len(plan) > 1 and len(plan[-1]) < world_size:
            plan[-2].extend(plan.pop())
        return plan
    cap = cfg.max_batch_pairs
    pcfg = BatchPlanConfig(
        batch_tokens=cfg.batch_tokens * world_size,
        max_items=cap * world_size if cap > 0 else None,
        min_items=world_size,
        rows_per_item=2,
    )
    return plan_batches(lengths, pcfg, seed=seed)


class _Encoded:
    """The chosen and rejected rows (as :meth:`FinetunedModel.encode` makes them for scoring), their lengths in
    tokens and the pairs' tie flags."""

    def __init__(self, fm: FinetunedModel, pairs: Sequence[TrainingPair]) -> None:
        prompts, histories = [p.prompt for p in pairs], [p.history for p in pairs]
        self.chosen = fm.encode(prompts, histories, [p.chosen for p in pairs])
        self.rejected = fm.encode(prompts, histories, [p.rejected for p in pairs])
        size = fm.net.row_length
        self.lengths = [max(size(c), size(r)) for c, r in zip(self.chosen, self.rejected)]
        self.sizes = [size(c) + size(r) for c, r in zip(self.chosen, self.rejected)]
        self.tie = [bool(p.tie) for p in pairs]


def _sync_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum host numbers over ranks (a no-op in one process)."""
    if not distributed.is_distributed():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    distributed.all_reduce_sum(t)
    return [float(x) for x in t.tolist()]


@torch.no_grad()
def _evaluate(fm: FinetunedModel, enc: _Encoded, idx: Sequence[int], tie_model: str | None,
              tie_param: torch.Tensor | None, *, sharded: bool = False) -> dict[str, float]:
    """Validation on this rank's shard of pairs, summed over ranks: accuracy (strict >), tie rate, mean nll.
    A sharded model scores every pair on every rank instead: each forward gathers weights from all ranks, so all
    ranks must run the same forwards."""
    rank, world = distributed.rank_and_world()
    if sharded:
        rank, world = 0, 1
    local = [i for i in idx][rank::world]
    seqs = [enc.chosen[i] for i in local] + [enc.rejected[i] for i in local]
    scores = fm.score_ids(seqs) if seqs else np.zeros(0, dtype=np.float32)
    k = len(local)
    rc, rr = torch.from_numpy(scores[:k]), torch.from_numpy(scores[k:])
    tie = torch.tensor([enc.tie[i] for i in local], dtype=torch.bool)
    margin = torch.zeros(k)
    decided = ~tie
    tp = None if tie_param is None else tie_param.detach().float().cpu()
    nll = pair_nll(rc, rr, tie, margin, tie_model, tp) if k else torch.zeros(0)
    if tp is None:
        nll = torch.where(tie, torch.zeros_like(nll), nll)  # ties are not scored by plain BT
    sums = [float(((rc > rr) & decided).sum()), float(decided.sum()), float(((rc == rr) & decided).sum()),
            float(nll.sum()), float(k if tp is not None else decided.sum())]
    sums = sums if sharded else _sync_sum(sums, fm.device)
    n = max(sums[1], 1.0)
    return {"val_accuracy": sums[0] / n, "val_tie_rate": sums[2] / n, "val_loss": sums[3] / max(sums[4], 1.0),
            "val_pairs": int(sums[1])}


def _probe_memory(dev: torch.device, world: int) -> bool:
    """Whether to probe GPU memory before training (:mod:`rm_engine.finetune.memory_fit`): one CUDA process."""
    return dev.type == "cuda" and world == 1


def _probe_step(net: RewardNet, pad_id: int, dev: torch.device, amp: Any, tr: _Encoded, cfg: TrainConfig) -> bool:
    """One forward and backward pass on the heaviest batch ``cfg`` would plan; ``False`` on out-of-memory."""
    batch = heaviest(plan_epoch(tr.lengths, cfg, 0, 1), tr.lengths)
    seqs = [tr.chosen[i] for i in batch] + [tr.rejected[i] for i in batch]

    def step() -> None:
        net.train()  # Hugging Face models checkpoint only in training mode
        args, _ = net.collate(seqs, pad_id, dev)
        with amp if amp is not None else contextlib.nullcontext():
            r = net(*args)
        r.float().square().mean().backward()

    return fits(step, lambda: net.zero_grad(set_to_none=True))


def _probe_packed_step(net: RewardNet, pad_id: int, dev: torch.device, amp: Any, tr: _Encoded,
                       cfg: TrainConfig) -> bool:
    """One forward and backward pass on the fullest packed row ``cfg`` would plan (every row is
    ``cfg.batch_tokens`` long), uncompiled: a compiled body saves no more activations than the eager one, so a row
    that fits here fits there, and the model is compiled once, at the budget that fits, instead of once per try."""
    plan = plan_epoch(tr.lengths, cfg, 0, 1, packed_sizes=tr.sizes)
    batch = max(plan, key=lambda b: sum(tr.sizes[i] for i in b), default=[])
    seqs = [tr.chosen[i] for i in batch] + [tr.rejected[i] for i in batch]
    packer = PackedTrainer(net, budget=cfg.batch_tokens, device=dev, pad_id=pad_id, compile=False,
                           attention=cfg.packed_attention, max_segment=cfg.max_length)

    def step() -> None:
        net.train()
        with amp if amp is not None else contextlib.nullcontext():
            r, _ = packer(seqs)
        r.float().square().mean().backward()

    try:
        return fits(step, lambda: net.zero_grad(set_to_none=True))
    finally:
        packer.close()


def train_finetune(
    cfg: TrainConfig,
    train_pairs: Sequence[TrainingPair],
    val_pairs: Sequence[TrainingPair],
    *,
    weights: Sequence[float] | None = None,
    device: str | torch.device | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    settings: Settings,
    log_every: int = 20,
) -> FinetuneResult:
    """Fine-tune ``cfg.backbone`` as a reward model on ``train_pairs``; validate on ``val_pairs`` every epoch.

    The loss is :mod:`rm_engine.objective`'s. ``weights`` are per training pair (an ensemble member's; default
    the pair weights, ``pair.weight * cfg.source_weights[pair.source]``). Tie pairs train through ``cfg.tie_model``
    with a learned tie parameter when ``cfg.ties == "model"``, and are dropped when ``"exclude"``. ``device``: ``"auto"``
    (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (default ``cfg.device``). ``progress`` gets
    ``{"step", "total", "loss", "val_accuracy", "eta_s", "phase", "epoch", "pairs_per_s", "tokens_per_s"}`` every
    ``log_every`` steps and after each epoch; ``should_stop()`` is checked between steps and raises
    ``rm_engine.config.Cancelled``. Inside an initialised ``torch.distributed`` group this is one rank of a
    data-parallel run (see :func:`rm_engine.finetune.ddp.train_finetune_ddp`): replicated (DDP) or, with
    ``cfg.strategy`` ``"fsdp"``/``"fsdp-offload"``, sharded (:mod:`rm_engine.finetune.sharding`); a sharded run
    returns the whole model, on the CPU, on rank 0 only.
    """
    cfg = cfg.resolved()
    if cfg.ties == "exclude":
        keep = [i for i, p in enumerate(train_pairs) if not p.tie]
        weights = None if weights is None else [weights[i] for i in keep]
        train_pairs = [train_pairs[i] for i in keep]
        val_pairs = [p for p in val_pairs if not p.tie]
    if not train_pairs:
        raise ValueError("train_finetune: no training pairs")
    terms = pair_terms(cfg, train_pairs, weights=weights)
    w_host = terms.weight.tolist()
    rank, world = distributed.rank_and_world()
    dev = torch_device(device or cfg.device, local_rank=distributed.local_rank())
    ref = resolve_backbone(cfg.backbone, settings)
    hf_config = load_config(ref)
    decoder = is_decoder(hf_config)
    plan_actions: tuple[str, ...] = ()
    if dev.type == "cuda":  # before any weight reaches the GPU: refuse what cannot fit, adapt a multi-GPU run
        gpu = torch.cuda.get_device_properties(dev).total_memory
        cfg, plan_actions = memory_plan.plan_run(cfg, hf_config, gpu, world)
    tok = load_tokenizer(ref, decoder=decoder)
    torch.manual_seed(cfg.seed)
    sharded = world > 1 and cfg.strategy != "ddp"
    # Sharded runs are for models whose full fp32 copy is large: the ranks of a machine load theirs in turn, so
    # host memory holds one copy at a time (each is moved to its GPU, then sharded, before the next rank loads).
    with distributed.in_turn(sharded):
        hf = load_backbone_model(ref.path, tok, cfg, decoder=decoder)
        pooling = backbone_pooling(ref.path, hf, decoder) if cfg.pooling == "auto" or decoder else cfg.pooling
        net = RewardNet(hf, decoder, pooling).to(dev)
    if decoder and cfg.pooling not in ("auto", "last"):
        log.warning("TrainConfig.pooling=%r ignored: %s is a decoder (score read at its last real token)",
                    cfg.pooling, ref.path)
    meta = FinetuneMeta(decoder=decoder, max_length=cfg.max_length, lora=cfg.lora, backbone=ref.to_dict(),
                        truncation=TRUNCATION_POLICY, pooling=pooling)
    fm = FinetunedModel(net, tok, meta, dev)

    tr, va = _Encoded(fm, train_pairs), _Encoded(fm, val_pairs)
    tie_model = active_tie_model(cfg, terms.tie)
    tie_param = None
    if tie_model is not None:
        tie_param = nn.Parameter(torch.tensor(init_tie_param(tie_model, float(terms.tie.mean())), device=dev))
    beta = None  # the length covariate's coefficient, started at what length alone explains
    if terms.length_c is not None:
        b0 = length_start(terms.length_c, terms.length_r, terms.tie, terms.weight)
        beta = nn.Parameter(torch.tensor(b0, dtype=torch.float32, device=dev))

    cuda = dev.type == "cuda"
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if cuda and torch.cuda.is_bf16_supported() else None
    probe_info = None
    if cfg.head_init == "probe":  # before any DDP wrapper: every rank fits the same probe, rank 0's is broadcast
        probe_info = init_head_by_probe(net, tr.chosen, tr.rejected, w_host, tr.tie, fm.pad_id, dev)
        log.info("finetune: score head initialised by a linear probe (train accuracy %.3f)", probe_info["train_accuracy"])
    fit_actions: tuple[str, ...] = plan_actions
    if _probe_memory(dev, world):
        probe = _probe_packed_step if cfg.packing and decoder else _probe_step
        fit = fit_to_memory(cfg, lambda c: probe(net, fm.pad_id, dev, amp, tr, c),
                            lambda: unwrap_hf(hf).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False}))
        cfg, fit_actions = fit.cfg, fit.actions

    if sharded:  # after the probes above, which run on the whole model
        n_groups = sharding.shard_model(net, dev, offload=cfg.strategy == "fsdp-offload")
        log.info("finetune: %s over %d ranks, %d groups", cfg.strategy, world, n_groups)
    elif world == 1 and cfg.strategy != "ddp":
        log.info("finetune: strategy %s ignored: one process holds the whole model", cfg.strategy)
    replicate = world > 1 and not sharded  # DDP

    packer: PackedTrainer | None = None
    if cfg.packing and not decoder:
        log.warning("TrainConfig.packing ignored: %s is an encoder (score read at [CLS] of padded rows); "
                    "training on padded batches", ref.path)
    elif cfg.packing:
        # Every packed row is [1, batch_tokens]: with cfg.compile the backbone is compiled with dynamic=False, so
        # once, specialised to that shape (the padded path below needs dynamic=True: its shapes vary per batch).
        packer = PackedTrainer(net, budget=cfg.batch_tokens, device=dev, pad_id=fm.pad_id, compile=cfg.compile,
                               wrap=(lambda m: distributed.wrap(m, dev)) if replicate else None,
                               attention=cfg.packed_attention, max_segment=cfg.max_length)
        log.info("finetune: packing into rows of %d tokens, attention %s%s", cfg.batch_tokens, packer.impl,
                 ", compiled (static shape)" if cfg.compile else "")
    train_net: nn.Module = distributed.wrap(net, dev) if replicate and packer is None else net
    if cfg.compile and packer is None:
        train_net = torch.compile(train_net, dynamic=True)
    params = [p for p in net.parameters() if p.requires_grad]
    groups: list[dict[str, Any]] = [{"params": params, "lr": cfg.lr, "weight_decay": cfg.weight_decay}]
    for extra in (tie_param, beta):  # scalars of the loss: a rate of their own, no decay
        if extra is not None:
            groups.append({"params": [extra], "lr": max(cfg.lr, 1e-2), "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups, lr=cfg.lr, fused=cuda and not sharded)
    # Packed rows are filled with real tokens, one row per rank per step.
    sizes = tr.sizes if packer is not None else None
    plans = [plan_epoch(tr.lengths, cfg, e, world, packed_sizes=sizes) for e in range(cfg.epochs)]
    total = sum(len(p) for p in plans)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1.0 - s / max(total, 1)))

    history: list[dict[str, Any]] = []
    step, t_start = 0, time.perf_counter()
    last_val: float | None = None  # until the first validation (JSON-safe, unlike NaN)
    log_acc = torch.zeros(1, device=dev, dtype=torch.float64)  # loss sum since the last log
    for epoch, plan in enumerate(plans):
        net.train()
        t0 = time.perf_counter()
        acc = torch.zeros(3, device=dev, dtype=torch.float64)  # loss sum over steps, correct, decided
        real_tok = pad_tok = 0
        for gbatch in plan:
            if should_stop is not None:  # ranks agree at log intervals only (one collective, no per-step sync)
                if should_stop() if world == 1 else (step % log_every == 0 and distributed.any_rank(should_stop(), dev)):
                    raise Cancelled("finetune cancelled between steps")
            local = shard(gbatch, rank, world)
            k = len(local)
            seqs = [tr.chosen[i] for i in local] + [tr.rejected[i] for i in local]
            if packer is None:
                args, n_real = net.collate(seqs, fm.pad_id, dev)
                pad_tok += sum(a.numel() for a in args[1:6:2])  # the attention masks
                real_tok += n_real
            else:
                real_tok += sum(len(s) for s in seqs)
            host = host_rows(terms, local)
            host = host.pin_memory().to(dev, non_blocking=True) if cuda else host
            tie_t = host[:, 2].bool()
            with amp if amp is not None else contextlib.nullcontext():
                if packer is not None:
                    r, row_len = packer(seqs)
                    pad_tok += row_len
                else:
                    r = train_net(*args)
            r = r.float()
            rc, rr = r[:k], r[k:]
            loss = batch_loss(r, host, tie_model=tie_model, tie_param=tie_param, beta=beta,
                              center_coef=cfg.center_coef, weight_total=sum(w_host[i] for i in gbatch),
                              count_total=len(gbatch))
            (loss * world).backward()  # DDP and FSDP average gradients over ranks: x world makes it the global sum
            for extra in (tie_param, beta) if world > 1 else ():  # outside the model: averaged by hand
                if extra is not None:
                    distributed.all_reduce_sum(extra.grad)
                    extra.grad /= world
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            with torch.no_grad():
                decided = ~tie_t
                acc += torch.stack([loss.detach().double(), ((rc > rr) & decided).sum().double(),
                                    decided.sum().double()])
                log_acc += loss.detach().double()
            step += 1
            if (progress is not None or world > 1) and step % log_every == 0 and step < total:
                la = _sync_sum(log_acc.tolist(), dev)  # the one host sync, every log_every steps (all ranks)
                log_acc.zero_()
                el = time.perf_counter() - t_start
                if progress is not None:
                        progress({"step": step, "total": total, "loss": la[0] / log_every, "val_accuracy": last_val,
                              "eta_s": eta_s(el, step, total), "phase": "finetune", "epoch": epoch})
        a = _sync_sum(acc.tolist(), dev)  # waits for the device: the epoch's time is complete here
        secs = time.perf_counter() - t0
        toks = _sync_sum([float(real_tok), float(pad_tok)], dev)
        with packer.padded() if packer is not None else contextlib.nullcontext():
            val = _evaluate(fm, va, range(len(val_pairs)), tie_model, tie_param, sharded=sharded) if val_pairs else {}
        last_val = val.get("val_accuracy")
        n_pairs = sum(len(b) for b in plan)
        row = {"epoch": epoch + 1, "train_loss": a[0] / max(len(plan), 1), "train_accuracy": a[1] / max(a[2], 1.0),
               **val, "steps": len(plan), "pairs": n_pairs, "tokens": int(toks[0]), "padded_tokens": int(toks[1]),
               "seconds": secs, "pairs_per_s": n_pairs / secs, "tokens_per_s": toks[0] / secs}
        if tie_param is not None:
            row["tie_param"] = float(tie_param.detach())
        if beta is not None:
            row["length_coef"] = float(beta.detach())
        if fit_actions:
            row["memory_fit"] = list(fit_actions)
        if probe_info is not None and epoch == 0:
            row["head_probe"] = probe_info
        history.append(row)
        if progress is not None:
            progress({"step": step, "total": total, "loss": row["train_loss"], "val_accuracy": last_val,
                      "eta_s": eta_s(time.perf_counter() - t_start, step, total), "phase": "finetune",
                      "epoch": epoch + 1, "pairs_per_s": row["pairs_per_s"], "tokens_per_s": row["tokens_per_s"]})
    net.eval()
    if packer is not None:
        packer.close()
    if sharded:  # a collective: every rank sends its shards, rank 0 rebuilds the whole model (on the CPU)
        full = sharding.full_state_dict(net)
        if rank == 0:
            fm = _rebuilt(full, ref.path, tok, cfg, fm.meta)
    if tie_param is not None:
        fm.meta = fm.meta.with_tie(tie_model, float(tie_param.detach()))
    return FinetuneResult(model=fm, history=history)


def _rebuilt(state: dict[str, torch.Tensor], path: Any, tok: Any, cfg: TrainConfig, meta: FinetuneMeta) -> FinetunedModel:
    """A plain (unsharded) model on the CPU holding ``state``: what a sharded run returns on rank 0. On the other
    ranks the result keeps its shards, which score only when every rank scores the same rows."""
    hf = load_backbone_model(path, tok, cfg, decoder=meta.decoder)
    net = RewardNet(hf, meta.decoder, meta.pooling)
    net.load_state_dict(state)
    return FinetunedModel(net.eval(), tok, meta, torch.device("cpu"))
