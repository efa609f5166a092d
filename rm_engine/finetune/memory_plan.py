"""GPU memory of a fine-tune, planned from the model's shape before anything is loaded onto a GPU.

One GPU measures instead (:mod:`rm_engine.finetune.memory_fit` probes the heaviest batch), but a probe cannot see
the optimizer state that the first step allocates, nor run across ranks that must all agree. So before the first
step the trainer checks this plan: a model whose weights, gradients and optimizer state cannot fit is refused with
what would fit instead (LoRA, more GPUs, sharding), and a multi-GPU run turns on activation checkpointing, then
lowers the token budget, only when the plan needs it.

The arithmetic (bytes per GPU; ``P`` parameters, ``T`` trainable ones, ``N`` ranks):

* weights fp32 ``4P``, gradients fp32 ``4T``, AdamW's two moments ``8T`` (LoRA: ``T`` is the adapters and head);
  DDP adds gradient buckets of ``4T``; FSDP divides the three by ``N`` and adds the layers it has gathered
  (the running one and the prefetched one: bf16 weights and their unsharded gradients, ``2 x 6`` bytes per
  layer parameter, and the embeddings once, ``6`` bytes each); FSDP with offload keeps the shards in CPU memory.
* activations per token and layer, bf16: ``22h + 6kv + 10i`` bytes for a decoder layer of hidden size ``h``,
  key/value width ``kv`` and MLP width ``i`` (the tensors autograd saves: norms' fp32 inputs, q/k/v before and
  after rotary, attention output, the MLP's gate, up, activation and down inputs; flash attention keeps no
  ``L x L`` matrix); with checkpointing each layer keeps only its fp32 input (``4h``) and one layer is recomputed.
* 2 GiB for the CUDA context and workspaces, and 10% of the rest for allocator fragmentation.

These are estimates that err on the side of caution; where one GPU can measure, the probe has the last word.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any

from rm_engine.config import STRATEGIES

GIB = 1024**3
CONTEXT_BYTES = 2 * GIB
FRAGMENTATION = 0.10
MIN_BUDGET = 1024  # tokens per step below which a smaller budget stops helping: refuse instead
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs to know of a model.

    Attributes:
        params: every parameter.
        lora_params: trainable parameters with LoRA adapters on every linear layer of the layers (at ``lora_r``)
            and the score head trained in full.
        layers: transformer layers.
        layer_params: parameters of one layer (FSDP gathers one at a time).
        outside_params: parameters outside the layers (embeddings, final norm, head).
        hidden: hidden size ``h``.
        kv: key/value projection width (``kv_heads x head_dim``).
        intermediate: MLP width ``i``.
    """

    params: int
    lora_params: int
    layers: int
    layer_params: int
    outside_params: int
    hidden: int
    kv: int
    intermediate: int

    def trainable(self, lora: bool) -> int:
        return self.lora_params if lora else self.params


def transformer_layers(root: Any, hf: Any) -> list[Any]:
    """The repeated transformer layers under ``root``: the outermost modules whose class the Hugging Face model
    ``hf`` lists in its ``_no_split_modules`` (what FSDP shards one by one, and what the plan counts per layer)."""
    names = set(getattr(hf, "_no_split_modules", None) or ())
    found: list[Any] = []
    inside: set[int] = set()
    for m in root.modules():
        if id(m) not in inside and type(m).__name__ in names:
            found.append(m)
            inside.update(id(x) for x in m.modules())
    return found


def step_tokens(cfg: Any) -> int:
    """Tokens per step per GPU of a fine-tune ``cfg``: its token budget, or with fixed-size batches their most."""
    return cfg.batch_tokens or cfg.batch_size * 2 * cfg.max_length


def model_shape(config: Any, *, lora_r: int = 16) -> ModelShape:
    """The :class:`ModelShape` of a Hugging Face config (a sequence-classification model with one label), counted
    on the ``meta`` device: no weights are read or allocated, a 70B config takes a second."""
    import torch
    from torch import nn
    from transformers import AutoModelForSequenceClassification

    config = copy.deepcopy(config)
    config.num_labels = 1
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config)
    layers = transformer_layers(model, model)
    if not layers:
        raise ValueError(f"{type(model).__name__}: no transformer layers found (none listed in _no_split_modules)")
    params = sum(p.numel() for p in model.parameters())
    per_layer = [sum(p.numel() for p in m.parameters()) for m in layers]
    adapters = sum(lora_r * (lin.in_features + lin.out_features)
                   for m in layers for lin in m.modules() if isinstance(lin, nn.Linear))
    head = getattr(model, "score", None) or getattr(model, "classifier", None)
    head_params = sum(p.numel() for p in head.parameters()) if isinstance(head, nn.Module) else 0
    hidden = int(config.hidden_size)
    heads = int(getattr(config, "num_attention_heads", 1))
    head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
    kv = int(getattr(config, "num_key_value_heads", None) or heads) * head_dim
    return ModelShape(params=params, lora_params=adapters + head_params, layers=len(layers),
                      layer_params=max(per_layer), outside_params=params - sum(per_layer), hidden=hidden, kv=kv,
                      intermediate=int(getattr(config, "intermediate_size", None) or 4 * hidden))


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes per GPU of one rank (``host``: per rank in CPU memory, with offload)."""

    strategy: str
    world: int
    batch_tokens: int
    checkpointing: bool
    weights: float
    gradients: float
    optimizer: float
    gathered: float
    activations: float
    host: float

    @property
    def total(self) -> float:
        """Peak bytes on one GPU, fragmentation included."""
        used = self.weights + self.gradients + self.optimizer + self.gathered + self.activations
        return CONTEXT_BYTES + used * (1 + FRAGMENTATION)

    def rows(self) -> list[tuple[str, float]]:
        """``(what, GiB)`` lines for a table."""
        return [(name, getattr(self, name) / GIB) for name in
                ("weights", "gradients", "optimizer", "gathered", "activations")] + [
            ("context", CONTEXT_BYTES / GIB), ("total", self.total / GIB), ("host (offload)", self.host / GIB)]


def activation_bytes_per_token(shape: ModelShape, checkpointing: bool) -> float:
    """Saved activations per token of a step (bf16 compute), every layer, see the module docstring."""
    layer = 22 * shape.hidden + 6 * shape.kv + 10 * shape.intermediate
    kept = 4 * shape.hidden if checkpointing else layer
    return shape.layers * kept + layer


def plan_memory(shape: ModelShape, *, strategy: str = "ddp", world: int = 1, lora: bool = False,
                batch_tokens: int = 16384, checkpointing: bool = False) -> MemoryPlan:
    """The per-GPU bytes of a fine-tune of ``shape`` (see the module docstring for each term)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"plan_memory: unknown strategy {strategy!r}")
    p, t = float(shape.params), float(shape.trainable(lora))
    weights, grads, optim = 4 * p, 4 * t, 8 * t
    gathered = host = 0.0
    if world > 1 and strategy != "ddp":
        weights, grads, optim = weights / world, grads / world, optim / world
        gathered = 2 * 6.0 * shape.layer_params + 6.0 * shape.outside_params
        if strategy == "fsdp-offload":
            host, weights, grads, optim = weights + grads + optim, 0.0, 0.0, 0.0
    elif world > 1:
        grads *= 2  # DDP's buckets
    acts = batch_tokens * activation_bytes_per_token(shape, checkpointing)
    return MemoryPlan(strategy=strategy, world=world, batch_tokens=batch_tokens, checkpointing=checkpointing,
                      weights=weights, gradients=grads, optimizer=optim, gathered=gathered, activations=acts, host=host)


class DoesNotFit(ValueError):
    """Not even the smallest batch fits: the message says what the model needs and what would fit."""


def fit_plan(shape: ModelShape, gpu_bytes: float, *, strategy: str, world: int, lora: bool, batch_tokens: int,
             checkpointing: bool) -> tuple[MemoryPlan, tuple[str, ...]]:
    """The plan that fits ``gpu_bytes``, and what changed to get there: activation checkpointing first, then the
    token budget halved (not below :data:`MIN_BUDGET`). Raises :class:`DoesNotFit` naming the alternatives."""
    def plan(tokens: int, ckpt: bool) -> MemoryPlan:
        return plan_memory(shape, strategy=strategy, world=world, lora=lora, batch_tokens=tokens, checkpointing=ckpt)

    actions: list[str] = []
    fitted = plan(batch_tokens, checkpointing)
    if fitted.total <= gpu_bytes:
        return fitted, ()
    if not checkpointing:
        actions.append("grad_checkpointing")
        fitted = plan(batch_tokens, True)
    while fitted.total > gpu_bytes and fitted.batch_tokens // 2 >= MIN_BUDGET:
        fitted = plan(fitted.batch_tokens // 2, True)
        actions.append(f"batch_tokens={fitted.batch_tokens}")
    if fitted.total > gpu_bytes:
        raise DoesNotFit(_advice(shape, fitted, gpu_bytes, lora))
    return fitted, tuple(actions)


def _advice(shape: ModelShape, plan: MemoryPlan, gpu_bytes: float, lora: bool) -> str:
    need = plan.total / GIB
    head = (f"a {'LoRA' if lora else 'full'} fine-tune of {shape.params / 1e9:.2f}B parameters needs about "
            f"{need:.0f} GiB per GPU ({plan.strategy}, {plan.world} GPU{'s' if plan.world > 1 else ''}, "
            f"{plan.batch_tokens} tokens per step, checkpointing on); this GPU has {gpu_bytes / GIB:.0f} GiB")
    options = []
    if not lora:
        options.append("lora")
    if plan.world == 1:
        options.append("several GPUs with strategy fsdp")
    elif plan.strategy == "ddp":
        options.append("strategy fsdp")
    elif plan.strategy == "fsdp":
        options.append("more GPUs, or strategy fsdp-offload")
    else:
        options.append("more GPUs")
    return f"{head}: use {' or '.join(options)} (`rmstudio plan-memory` shows each)"


def plan_run(cfg: Any, hf_config: Any, gpu_bytes: float, world: int) -> tuple[Any, tuple[str, ...]]:
    """The plan for a fine-tune ``cfg`` (a ``TrainConfig``) of ``hf_config`` on GPUs of ``gpu_bytes``: raises
    :class:`DoesNotFit` when not even the smallest batch fits. With several ranks, which cannot probe, the plan's
    changes (checkpointing, a smaller token budget) come back applied to ``cfg``, with their names; one GPU leaves
    them to the probe (:mod:`rm_engine.finetune.memory_fit`), which measures."""
    shape = model_shape(hf_config, lora_r=cfg.lora_r)
    plan, actions = fit_plan(shape, gpu_bytes, strategy=cfg.strategy if world > 1 else "ddp", world=world,
                             lora=cfg.lora, batch_tokens=step_tokens(cfg), checkpointing=cfg.grad_checkpointing)
    if world == 1 or not actions:
        return cfg, ()
    log.info("finetune: memory plan (%.1f GiB per GPU): %s", plan.total / GIB, ", ".join(actions))
    return (cfg.replace(grad_checkpointing=plan.checkpointing, batch_tokens=plan.batch_tokens if cfg.batch_tokens else 0),
            tuple(f"plan:{a}" for a in actions))
