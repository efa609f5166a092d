"""Packed rows through torch's own variable-length flash attention (``TrainConfig.packed_attention="varlen"``).

torch (>= 2.10) ships ``torch.nn.attention.varlen.varlen_attn``: Flash Attention over sequences laid end to end,
given their boundaries (``cu_seqlens``), CUDA only, bf16/fp16, with a fake implementation so ``torch.compile``
traces through it. It is the kernel ``flash_attention_2`` would call, without the ``flash_attn`` package that many GPU
images lack. Registered here as a transformers attention implementation (:data:`VARLEN`):
transformers then builds no mask at all (the name is not in its mask interface) and hands every attention layer
the keyword arguments the packed forward passes (``cu_seq_lens_q``, ``max_length_q``; :mod:`rm_engine.finetune.packing`).

Against ``flex_attention``: no ``BlockMask`` to build per row, and a kernel written for exactly this layout, so
packed rows use it on CUDA when the model supports it (``TrainConfig.packed_attention="auto"``; its speed against
flex is ``bench/gpu_train.py``'s ``c5`` row, BENCHMARKS.md). On CPU the tests replace the kernel by a
segment-by-segment reference to check the wiring (layouts, causality, grouped-query heads, scale) against padded
attention, scores and gradients.
"""
from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

VARLEN = "rmstudio_varlen"


@functools.cache
def _kernel() -> tuple[Callable[..., torch.Tensor], frozenset[str]]:
    """torch's ``varlen_attn`` and the names of its parameters (they changed between torch releases:
    ``is_causal`` first, ``window_size`` later; ``enable_gqa`` is not in every release)."""
    from torch.nn.attention.varlen import varlen_attn

    return varlen_attn, frozenset(inspect.signature(varlen_attn).parameters)


def varlen_supported(model: nn.Module, device: torch.device) -> str | None:
    """``None`` when a packed row of ``model`` can run through :data:`VARLEN` on ``device``, else why not."""
    if device.type != "cuda":
        return "torch's varlen flash attention runs on CUDA only"
    try:
        _kernel()
    except ImportError:
        return f"torch {torch.__version__} has no torch.nn.attention.varlen"
    if not getattr(model, "_supports_attention_backend", False):
        return f"{type(model).__name__} does not take custom attention implementations"
    return None


def register() -> None:
    """Make :data:`VARLEN` a transformers attention implementation (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(VARLEN, varlen_attention)


def varlen_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: Any, scaling: float | None = None, dropout: float = 0.0,
                     sliding_window: int | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention-function contract for one packed row: ``query`` ``[1, Hq, L, D]``, ``key`` and
    ``value`` ``[1, Hkv, L, D]``; causal attention inside each segment of ``kwargs["cu_seq_lens_q"]``; returns
    ``([1, L, Hq, D], None)``."""
    del module, attention_mask  # no mask: the segment boundaries say it all
    cu, longest = kwargs.get("cu_seq_lens_q"), kwargs.get("max_length_q")
    if cu is None or longest is None:
        raise ValueError(f"{VARLEN}: needs cu_seq_lens_q and max_length_q (packed rows only; padded batches and "
                         "scoring use the model's own attention)")
    if query.shape[0] != 1:
        raise ValueError(f"{VARLEN}: expects one packed row, got a batch of {query.shape[0]}")
    if sliding_window:
        raise ValueError(f"{VARLEN}: sliding-window attention ({sliding_window}) is not supported; use flex")
    if dropout:
        raise ValueError(f"{VARLEN}: attention dropout {dropout} is not supported (training disables dropout)")
    fn, params = _kernel()
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # [L, H, D]: the projections' own layout
    # Flash takes only 16-bit inputs, and autocast does not cast into this op: rotary embeddings computed in fp32
    # hand it fp32 queries and keys even under bf16 autocast.
    half = _half_dtype(query)
    if half is not None:
        q, k, v = (t.to(half) for t in (q, k, v))
    kw: dict[str, Any] = {"scale": scaling}
    if k.shape[1] != q.shape[1]:
        if "enable_gqa" in params:
            kw["enable_gqa"] = True
        else:
            k, v = (t.repeat_interleave(q.shape[1] // t.shape[1], dim=1) for t in (k, v))
    if "window_size" in params:
        kw["window_size"] = (-1, 0)  # causal
    elif "is_causal" in params:
        kw["is_causal"] = True
    else:  # pragma: no cover - a torch whose varlen_attn cannot be told to be causal
        raise RuntimeError(f"{VARLEN}: torch {torch.__version__}'s varlen_attn takes neither window_size nor is_causal")
    out = fn(q, k, v, cu, cu, int(longest), int(longest), **kw)
    if half is not None and not _autocast(query):
        out = out.to(query.dtype)  # outside autocast the caller gets back the precision it passed
    return out.unsqueeze(0), None


def _half_dtype(t: torch.Tensor) -> torch.dtype | None:
    """The 16-bit dtype to run the kernel in when ``t`` is not 16-bit: autocast's, or bf16 outside autocast. None on
    CPU, where only the tests' reference kernel runs (in the precision it is given)."""
    if t.dtype in (torch.float16, torch.bfloat16) or t.device.type == "cpu":
        return None
    return torch.get_autocast_dtype("cuda") if _autocast(t) else torch.bfloat16


def _autocast(t: torch.Tensor) -> bool:
    return t.is_cuda and torch.is_autocast_enabled("cuda")

