"""Inside one rank of a data-parallel fine-tune: who am I, sum over ranks, agree on stopping, wrap the model.

Every function is a no-op (or the one-process answer) outside a process group, so :mod:`rm_engine.finetune.train`
calls them unconditionally. Starting the ranks is :mod:`rm_engine.finetune.ddp`'s job.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from rm_engine.device import cuda_available


def is_distributed() -> bool:
    """Whether this process is one rank of an initialised process group with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def local_rank() -> int:
    """This rank's GPU index on its machine (``LOCAL_RANK`` as torchrun sets it; 0 when absent)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over ranks in place (no-op in one process)."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is True on any rank (all ranks must call it at the same step)."""
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    all_reduce_sum(t)
    return bool(t.item() > 0)


@contextmanager
def in_turn(enabled: bool = True) -> Iterator[None]:
    """Run the body on one rank at a time, in rank order (every rank enters; a no-op in one process or when not
    ``enabled``). A rank that raises leaves the others waiting: the launcher ends them."""
    if not enabled or not is_distributed():
        yield
        return
    rank, world = rank_and_world()
    for _ in range(rank):
        dist.barrier()
    yield
    for _ in range(world - rank):
        dist.barrier()


def wrap(net: nn.Module, device: torch.device) -> nn.Module:
    """``DistributedDataParallel`` around ``net`` for this rank's device."""
    if device.type == "cuda":
        return DistributedDataParallel(net, device_ids=[device.index], output_device=device.index)
    return DistributedDataParallel(net)


def init_from_env(backend: str | None = None) -> bool:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...); NCCL when CUDA
    is available, else gloo. Returns False (and does nothing) when ``WORLD_SIZE`` is absent or 1."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return dist.is_available() and dist.is_initialized()
    backend = backend or ("nccl" if cuda_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    # Between two fine-tunes rank 0 scores every stored response and publishes while the other ranks wait in a
    # broadcast (rm_engine.finetune.ddp.follow): longer than the default 10 minutes on a large dataset.
    dist.init_process_group(backend=backend, timeout=timedelta(hours=2))
    return True
