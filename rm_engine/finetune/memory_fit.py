"""Gradient checkpointing and smaller batches only when GPU memory demands them.

Checkpointing recomputes the forward pass during the backward one, about a third more compute per step (TRL turns
it on by default), so the finetune trainer starts without it. Before the first step, one forward and backward pass
on the heaviest batch of the plan (with packing: its fullest row, through the uncompiled model, so a compiled run
compiles once, at the budget that fits) tells whether the run fits; if it does not, checkpointing is turned on,
then the token budget halved, until it fits (or a clear error says what to change). One probe costs one step.

Single process only: in a DDP run one rank running out of memory inside a collective would leave the others
waiting, so distributed runs use the configured settings as they are.
"""
from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from rm_engine.config import TrainConfig

log = logging.getLogger(__name__)

MIN_BATCH_TOKENS = 1024


@dataclass(frozen=True)
class MemoryFit:
    """What the probe decided: the config to train with and the steps taken (for the log and the history)."""

    cfg: TrainConfig
    actions: tuple[str, ...]


def is_oom(exc: BaseException) -> bool:
    """An accelerator out-of-memory error (``torch.OutOfMemoryError`` or the allocator's RuntimeError text)."""
    oom_type = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    return isinstance(exc, oom_type) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


def fits(step: Callable[[], None], zero_grad: Callable[[], None]) -> bool:
    """Run ``step`` (a forward and backward pass); ``False`` if it ran out of memory. Gradients are cleared and the
    allocator's cache emptied either way, so the real run starts from a clean state."""
    try:
        step()
        ok = True
    except Exception as exc:
        if not is_oom(exc):
            raise
        ok = False
    zero_grad()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return ok


def heaviest(plan: Sequence[Sequence[int]], lengths: Sequence[int]) -> list[int]:
    """The batch of ``plan`` with the most padded tokens (ties: the longest sequence), the one to probe."""
    if not plan:
        return []
    return list(max(plan, key=lambda b: (len(b) * max(lengths[i] for i in b), max(lengths[i] for i in b))))


def fit_to_memory(cfg: TrainConfig, try_cfg: Callable[[TrainConfig], bool], enable_checkpointing: Callable[[], None],
                  *, max_halvings: int = 4) -> MemoryFit:
    """The first of ``cfg``, ``cfg`` + gradient checkpointing, then halved token budgets, for which ``try_cfg``
    (a probe step planned with that config) succeeds. Raises ``MemoryError`` naming what to change otherwise."""
    actions: list[str] = []
    if try_cfg(cfg):
        return MemoryFit(cfg, ())
    if not cfg.grad_checkpointing:
        enable_checkpointing()
        cfg = cfg.replace(grad_checkpointing=True)
        actions.append("gradient checkpointing on")
        log.warning("finetune: the heaviest batch does not fit in GPU memory; gradient checkpointing turned on")
        if try_cfg(cfg):
            return MemoryFit(cfg, tuple(actions))
    for _ in range(max_halvings):
        if cfg.batch_tokens // 2 < MIN_BATCH_TOKENS:
            break
        cfg = cfg.replace(batch_tokens=cfg.batch_tokens // 2)
        actions.append(f"batch_tokens {cfg.batch_tokens}")
        log.warning("finetune: still out of GPU memory; batch_tokens halved to %d", cfg.batch_tokens)
        if try_cfg(cfg):
            return MemoryFit(cfg, tuple(actions))
    raise MemoryError(f"finetune: out of GPU memory even with gradient checkpointing and batch_tokens="
                      f"{cfg.batch_tokens}; try --lora, a smaller --max-length (now {cfg.max_length}) or more GPUs")
