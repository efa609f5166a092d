"""Sharded data parallelism (FSDP2, ``torch.distributed.fsdp.fully_shard``): weights, gradients and optimizer state
split across the ranks instead of copied to each.

Why: DDP keeps a full replica on every GPU. A full fine-tune with AdamW holds ~16 bytes per parameter (fp32
weights and gradients, two fp32 moments), ~112 GB for a 7B model before any activation: more than one 80 GB GPU,
however many there are. Sharded over N GPUs each holds 16/N bytes per parameter, plus the one layer being
all-gathered at a time (:mod:`rm_engine.finetune.memory_plan` states the arithmetic).

The groups: every transformer layer (the classes the model names in ``_no_split_modules``), then each remaining
part that holds parameters: the body's embeddings and final norm (through the body module), the score head, the
rich head. A group's weights are all-gathered just before its forward and freed after it; its gradients are
reduce-scattered after its backward. There is deliberately no group at the root: packed rows call the body and the
score head directly (:mod:`rm_engine.finetune.packing`), so every part must gather its own weights on its own
forward. Mixed precision on CUDA: bf16 compute, fp32 gradient reduction, fp32 master weights in the shards.

Gradient averaging over ranks is FSDP's, as DDP's is, so the training loop's loss scaling is the same for both;
tested on CPU with gloo: two sharded ranks reach the weights of one process on the same global batches.
"""
from __future__ import annotations

import logging
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from rm_engine.finetune.memory_plan import transformer_layers
from rm_engine.finetune.reward_net import RewardNet, unwrap_hf

log = logging.getLogger(__name__)


def layer_modules(net: RewardNet) -> list[nn.Module]:
    """The model's repeated transformer layers (classes listed in its ``_no_split_modules``), outermost first."""
    return transformer_layers(net, unwrap_hf(net.model))


def top_parts(net: RewardNet) -> list[nn.Module]:
    """The parts outside the layers that hold parameters: the Hugging Face model's children (body, score or
    classifier head) and the rich head."""
    hf = unwrap_hf(net.model)
    parts = [c for c in hf.children() if any(True for _ in c.parameters())]
    if net.rich_head is not None:
        parts.append(net.rich_head)
    return parts


def shard_model(net: RewardNet, device: torch.device, *, offload: bool = False) -> int:
    """Shard ``net`` in place across the initialised process group (one group per layer, then :func:`top_parts`);
    returns the number of groups. ``offload``: the shards (weights, gradients, hence the optimizer state) live in
    CPU memory and the optimizer steps there; each group is copied to the GPU for its forward and backward."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    kw: dict[str, Any] = {"mesh": mesh, "mp_policy": mp,
                          "offload_policy": CPUOffloadPolicy() if offload and device.type == "cuda" else OffloadPolicy()}
    layers = layer_modules(net)
    if not layers:
        raise ValueError(f"{type(unwrap_hf(net.model)).__name__}: no transformer layers to shard "
                         "(the model lists none in _no_split_modules); train with strategy='ddp'")
    for m in layers:
        fully_shard(m, **kw)
    parts = top_parts(net)
    for m in parts:
        fully_shard(m, **kw)
    return len(layers) + len(parts)


def is_sharded(net: nn.Module) -> bool:
    """Whether ``net``'s parameters are FSDP shards (DTensors)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in net.parameters())


def full_state_dict(net: nn.Module) -> dict[str, torch.Tensor]:
    """Every rank calls this (a collective): the whole, unsharded state dict on rank 0's CPU, ``{}`` elsewhere."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(net, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
