"""Padding-free packing for decoder reward models: a batch of sequences as ONE row ``[1, L]`` of static length.

A token-budget batch of the existing plan (:mod:`rm_engine.finetune.batching`: rows ``[c_1..c_k, r_1..r_k]``) is laid end
to end in one row of ``L`` tokens (``L = cfg.batch_tokens``); what is left is *one* dummy tail segment whose
output is never read. ``position_ids`` restart at 0 for every sequence (and for the tail), and attention is
confined to each sequence: causal inside a segment, nothing across segments. Every batch then has the same
shape, so ``torch.compile(dynamic=False)`` compiles the backbone once instead of once per padded shape.

How the attention is confined (read from transformers 5.17 and 5.24 ``masking_utils``; same code in both): with
``attention_mask=None``, ``use_cache=False`` and ``position_ids`` given, ``create_causal_mask`` calls
``find_packed_sequence_indices`` (a new segment wherever the position does not go up by 1) and ANDs the causal
mask with "same segment"; a 4D mask (or a flex ``BlockMask``) passed as ``attention_mask`` is used as is. Per
attention implementation:

* ``flex_attention``: our own ``BlockMask`` (:func:`flex_block_mask`, same segments): sparse, no dense ``L x L``
  mask, blocks across segments are skipped. Not transformers' (``create_block_mask(..., _compile=True)``, which
  torch >= 2.10 answers with a deprecation warning: a graph break inside a compiled body). The choice on CUDA
  (not measured here: no GPU in the tests). On CPU the forward works, eager or compiled in one graph (tested;
  inductor compiles the kernel, ~20-40 s the first time), but torch 2.13 has no FlexAttention backward on CPU,
  so CPU training uses sdpa.
* ``sdpa`` / ``eager``: a dense ``[1, 1, L, L]`` mask and full ``L x L`` attention compute. Used for small ``L``
  only (:data:`DENSE_MAX_TOKENS`: the CPU tests, CPU training).
* :data:`rm_engine.finetune.varlen_attention.VARLEN` (``TrainConfig.packed_attention="varlen"``, CUDA): torch's own
  varlen flash attention, given the segment boundaries; no mask. Tested on CPU with a reference kernel only.
* ``flash_attention_2``/``_3`` (only when the model already uses it; needs the ``flash_attn`` package, absent
  from the project's GPU machines): the segment boundaries are passed as ``cu_seq_lens_q/k`` and
  ``max_length_q/k`` and transformers calls ``flash_attn_varlen_func``. Not tested here (no kernel on CPU).

Scores are read at each sequence's last token and only those hidden states go through the ``score`` head.
"""
from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rm_engine.finetune import varlen_attention
from rm_engine.finetune.reward_net import RewardNet, unwrap_hf
from rm_engine.finetune.varlen_attention import VARLEN

log = logging.getLogger(__name__)

DENSE_MAX_TOKENS = 4096  # sdpa/eager materialise an L x L mask: 16 M entries here, 268 M at 16k (use flex there)
OVERFLOW_MULTIPLE = 1024  # a batch over the budget (rare, see packed_length) is rounded to this: few extra shapes
FLASH = ("flash_attention_2", "flash_attention_3")


@dataclass(frozen=True)
class PackedBatch:
    """One packed row.

    Attributes:
        input_ids: ``[1, L]`` token ids, sequences end to end, then the tail (``pad_id``).
        position_ids: ``[1, L]``, ``0..len-1`` for every sequence and ``0..tail-1`` for the tail.
        cu_seqlens: ``[segments + 1]`` int32 boundaries ``0, len_1, len_1+len_2, ..., L``; the tail, when
            ``L`` exceeds the tokens, is the last segment.
        last_index: ``[n]`` position of each sequence's last token in the row (where its score is read).
        n_tokens: real tokens (``L - n_tokens`` is the tail).
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    cu_seqlens: torch.Tensor
    last_index: torch.Tensor
    n_tokens: int

    @property
    def length(self) -> int:
        """``L``, the row length."""
        return int(self.input_ids.shape[1])

    def to(self, device: torch.device) -> PackedBatch:
        """A copy on ``device`` (pinned, non-blocking copies on CUDA)."""
        def move(t: torch.Tensor) -> torch.Tensor:
            return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t.to(device)

        return PackedBatch(move(self.input_ids), move(self.position_ids), move(self.cu_seqlens),
                           move(self.last_index), self.n_tokens)


def packed_length(n_tokens: int, budget: int) -> int:
    """The row length for ``n_tokens`` real tokens: ``budget`` whenever they fit (the static shape). Batches of
    the plan fit except an over-budget batch (one pair longer than the budget, or a DDP shard with one extra
    pair): those get ``n_tokens`` rounded up to :data:`OVERFLOW_MULTIPLE` (a separate compiled shape)."""
    if budget <= 0:
        raise ValueError(f"packed_length: the token budget must be positive, got {budget}")
    return budget if n_tokens <= budget else -(-n_tokens // OVERFLOW_MULTIPLE) * OVERFLOW_MULTIPLE


def pack_sequences(seqs: Sequence[Sequence[int]], *, length: int | None = None, pad_id: int = 0,
                   max_segment: int | None = None) -> PackedBatch:
    """Lay ``seqs`` end to end in one row of ``length`` tokens (default: exactly their total), on the CPU.

    ``max_segment``: the tail is cut into segments of at most this many tokens (a varlen kernel sizes its work by
    the longest segment, which then stays the same for every row: one compiled shape).
    Raises ``ValueError`` for no sequence, an empty sequence, a total longer than ``length``, or a sequence longer
    than ``max_segment``.
    """
    if not seqs:
        raise ValueError("pack_sequences: no sequences")
    lens = [len(s) for s in seqs]
    if min(lens) < 1:
        raise ValueError(f"pack_sequences: sequence {lens.index(min(lens))} is empty")
    total = sum(lens)
    length = total if length is None else int(length)
    if total > length:
        raise ValueError(f"pack_sequences: {total} tokens do not fit in a row of {length}")
    tail = length - total
    if max_segment is not None and max(lens) > max_segment:
        raise ValueError(f"pack_sequences: a sequence of {max(lens)} tokens is longer than max_segment={max_segment}")
    step = tail if max_segment is None else max(int(max_segment), 1)
    seg_lens = lens + [min(step, tail - i) for i in range(0, tail, step or 1)]
    ids = torch.full((1, length), int(pad_id), dtype=torch.long)
    ids[0, :total] = torch.as_tensor([t for s in seqs for t in s], dtype=torch.long)
    pos = torch.cat([torch.arange(n, dtype=torch.long) for n in seg_lens])[None]
    cu = torch.zeros(len(seg_lens) + 1, dtype=torch.int32)
    cu[1:] = torch.as_tensor(seg_lens, dtype=torch.int32).cumsum(0)
    last = cu[1 : len(lens) + 1].long() - 1
    return PackedBatch(ids, pos, cu, last, total)


def attn_implementation(model: nn.Module) -> str:
    """The attention implementation the (possibly peft-wrapped) model runs with."""
    return str(unwrap_hf(model).config._attn_implementation)


def choose_attn_implementation(model: nn.Module, device: torch.device, length: int, prefer: str = "auto") -> str:
    """Which attention a packed *training* row runs with: a flash-attention model keeps it; ``prefer="varlen"``:
    torch's varlen flash attention (:mod:`rm_engine.finetune.varlen_attention`, CUDA); ``"flex"``: ``flex_attention``;
    ``"sdpa"``: a dense mask. ``"auto"``: on CPU ``sdpa`` up to :data:`DENSE_MAX_TOKENS` (FlexAttention has no
    backward on CPU in torch 2.13); on CUDA varlen when the model and torch support it (faster than flex: BENCHMARKS.md,
    GPU training), else ``flex_attention``, else ``sdpa`` up to the dense limit. ``ValueError`` naming the reason when the choice cannot run."""
    current = attn_implementation(model)
    if current in FLASH:
        return current
    if prefer == "varlen" or (prefer == "auto" and device.type != "cpu"):

        why_not = varlen_attention.varlen_supported(unwrap_hf(model), device)  # looked up per call: tests swap it
        if why_not and prefer == "varlen":
            raise ValueError(f"TrainConfig.packed_attention='varlen': {why_not}")
        if not why_not:
            varlen_attention.register()
            return VARLEN
    if prefer == "sdpa" and length > DENSE_MAX_TOKENS:
        raise ValueError(f"TrainConfig.packed_attention='sdpa': a dense {length} x {length} mask is too large "
                         f"(batch_tokens <= {DENSE_MAX_TOKENS})")
    if prefer in ("auto", "flex") and device.type != "cpu":
        from transformers.utils import is_torch_flex_attn_available

        if is_torch_flex_attn_available() and getattr(unwrap_hf(model), "_supports_flex_attn", False):
            return "flex_attention"
    if prefer == "flex":
        raise ValueError("TrainConfig.packed_attention='flex': " + (
            "FlexAttention has no backward on CPU" if device.type == "cpu" else
            f"{type(unwrap_hf(model)).__name__} or this torch does not support flex_attention"))
    if length <= DENSE_MAX_TOKENS:
        return "sdpa"
    why = "FlexAttention has no backward on CPU" if device.type == "cpu" else \
        f"{type(unwrap_hf(model)).__name__} does not support flex_attention here"
    raise ValueError(f"TrainConfig.packing: {why}, and a dense {length} x {length} mask is too large: "
                     f"use batch_tokens <= {DENSE_MAX_TOKENS} or packing=False")


def set_attn_implementation(model: nn.Module, impl: str) -> None:
    """Switch the model (inside a possible peft wrapper) to ``impl`` (transformers' ``set_attn_implementation``)."""
    hf = unwrap_hf(model)
    if str(hf.config._attn_implementation) != impl:
        hf.set_attn_implementation(impl)


def segment_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """``[1, L]`` index of the segment of every token: a new segment wherever the position does not go up by 1
    (transformers' ``find_packed_sequence_indices``, without its data-dependent early exit)."""
    first = position_ids[:, :1] - 1
    return (torch.diff(position_ids, prepend=first, dim=-1) != 1).cumsum(-1)


@functools.cache
def _compiled_create_block_mask() -> Any:
    from torch.nn.attention.flex_attention import create_block_mask

    return torch.compile(create_block_mask)


def flex_block_mask(position_ids: torch.Tensor) -> Any:
    """The ``BlockMask`` of a packed row: causal and same segment. Built by ``create_block_mask`` traced into the
    caller's graph under ``torch.compile``, else by a compiled ``create_block_mask`` (no dense ``L x L`` mask
    either way). transformers builds the same mask itself with ``create_block_mask(_compile=True)``, but torch
    >= 2.10 warns there (a deprecation), which is a graph break inside a compiled body: hence our own."""
    from torch.nn.attention.flex_attention import create_block_mask

    seg = segment_ids(position_ids)
    n = int(position_ids.shape[-1])

    def mask_mod(b: Any, h: Any, q: Any, kv: Any) -> Any:
        return (seg[b, q] == seg[b, kv]) & (kv <= q)

    make = create_block_mask if torch.compiler.is_compiling() else _compiled_create_block_mask()
    return make(mask_mod, 1, None, n, n, device=position_ids.device)


def packed_hidden(model: nn.Module, input_ids: torch.Tensor, position_ids: torch.Tensor,
                  flash_kwargs: dict[str, Any] | None = None) -> torch.Tensor:
    """Last hidden states ``[1, L, H]`` of the decoder body of ``model`` on a packed row.

    flex_attention gets its ``BlockMask`` from :func:`flex_block_mask` (a 4D mask transformers passes through
    as is). Otherwise ``attention_mask`` stays None and ``use_cache`` False: transformers detects packed
    sequences from ``position_ids`` only then (a cache disables the detection silently: sequences would see
    each other).
    """
    hf = unwrap_hf(model)
    body = getattr(hf, hf.base_model_prefix)
    mask = flex_block_mask(position_ids) if attn_implementation(model) == "flex_attention" else None
    out = body(input_ids=input_ids, position_ids=position_ids, attention_mask=mask, use_cache=False,
               **(flash_kwargs or {}))
    return out[0] if isinstance(out, tuple) else out.last_hidden_state


def strip_hub_kernel_hooks(model: nn.Module) -> int:
    """Give every module of ``model`` whose class forward is wrapped by the ``kernels`` package's
    ``use_kernelized_func`` hook its original forward back; returns how many were unwrapped.

    transformers decorates attention classes with that hook whenever ``kernels`` is installed. The hook routes
    calls through a context variable that ``torch.compile`` guards on and that changes after the first compiled
    call, so every later call recompiles. RM Studio never kernelizes models (hub kernels are downloads), so the
    hook only forwards to the original function, which is what the unwrapped forward does directly.
    """
    n = 0
    for module in model.modules():
        fwd = type(module).forward
        inner = getattr(fwd, "__wrapped__", None)
        # functools.wraps copies __module__ from the original; the wrapper's own globals name its package
        if inner is not None and getattr(fwd, "__globals__", {}).get("__name__", "").startswith("kernels."):
            module.forward = inner.__get__(module, type(module))  # this instance only; the class stays as it is
            n += 1
    return n


def packed_scores(model: nn.Module, batch: PackedBatch) -> torch.Tensor:
    """fp32 score of every sequence of ``batch`` (on the model's device): the ``score`` head of a decoder
    ``...ForSequenceClassification`` (or its peft wrapper) applied to each sequence's last hidden state."""
    b = batch
    longest = int((b.cu_seqlens[1:] - b.cu_seqlens[:-1]).max())
    net = PackedRewardNet(RewardNet(model, decoder=True), max_segment=longest)
    return net(b.input_ids, b.position_ids, b.last_index, b.cu_seqlens)


class PackedRewardNet(nn.Module):
    """A :class:`RewardNet` (decoder) run on packed rows: ``forward(*tensors of a PackedBatch) -> [n]`` fp32.

    With ``compile=True`` the body is ``torch.compile(dynamic=False)``: every row has the budget's shape, so it
    compiles once (an over-budget row adds one shape). Only the body: the number of sequences per row varies,
    so gathering the last tokens and the tiny ``score`` head stay eager (compiling them statically would
    recompile for every count). Wrap THIS module in DDP (it owns the same parameters as ``net``).
    """

    def __init__(self, net: RewardNet, *, compile: bool = False, max_segment: int | None = None) -> None:
        super().__init__()
        if not net.decoder:
            raise ValueError("PackedRewardNet: packing needs a decoder (encoders read [CLS] of padded rows)")
        self.net = net
        self.max_segment = max_segment  # varlen: every segment of the rows is at most this long (a constant)
        self.compiled = compile
        if compile:
            strip_hub_kernel_hooks(net.model)
        # dynamic=False: one static shape, so no symbolic shapes and kernels specialised to [1, L]
        self._body = torch.compile(self._hidden, dynamic=False) if compile else self._hidden

    def _hidden(self, input_ids: torch.Tensor, position_ids: torch.Tensor,
                cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
        fk = None
        if cu_seqlens is not None:
            fk = {"cu_seq_lens_q": cu_seqlens, "cu_seq_lens_k": cu_seqlens, "max_length_q": self.max_segment,
                  "max_length_k": self.max_segment}
        return packed_hidden(self.net.model, input_ids, position_ids, fk)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, last_index: torch.Tensor,
                cu_seqlens: torch.Tensor) -> torch.Tensor:
        """Scores ``[n]`` of a packed row (the fields of a :class:`PackedBatch`, as tensors for DDP)."""
        impl = attn_implementation(self.net.model)
        if impl in FLASH:  # varlen kernel: boundaries given, no mask (untested)
            longest = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
            fk = {"cu_seq_lens_q": cu_seqlens, "cu_seq_lens_k": cu_seqlens, "max_length_q": longest,
                  "max_length_k": longest}
            hidden = packed_hidden(self.net.model, input_ids, position_ids, fk)
        elif impl == VARLEN:
            if self.max_segment is None:
                raise ValueError(f"PackedRewardNet: {VARLEN} needs max_segment (the longest segment of a row)")
            if self.compiled:  # the number of segments varies per row: only that size is symbolic
                torch._dynamo.mark_dynamic(cu_seqlens, 0)
            hidden = self._body(input_ids, position_ids, cu_seqlens)
        else:
            hidden = self._body(input_ids, position_ids)
        return unwrap_hf(self.net.model).score(hidden[0, last_index])[:, 0].float()


class PackedTrainer:
    """The packed forward of :func:`rm_engine.finetune.train.train_finetune` (``cfg.packing``): picks the attention
    implementation, packs each step's rows into ``[1, budget]`` and returns their scores.

    The implementation is switched for training only: :meth:`padded` (evaluation) and :meth:`close` (end of
    training, before saving) restore the model's own, so saved models and scoring are unchanged.
    """

    def __init__(self, net: RewardNet, *, budget: int, device: torch.device, pad_id: int, compile: bool = False,
                 wrap: Any = None, attention: str = "auto", max_segment: int | None = None) -> None:
        self.budget, self.device, self.pad_id = int(budget), device, int(pad_id)
        self.original = attn_implementation(net.model)
        self.impl = choose_attn_implementation(net.model, device, self.budget, attention)
        # varlen: the tail is cut to segments no longer than the longest sequence can be (cfg.max_length)
        self.max_segment = (max_segment or self.budget) if self.impl == VARLEN else None
        set_attn_implementation(net.model, self.impl)
        self.module = PackedRewardNet(net, compile=compile, max_segment=self.max_segment)
        self.train_module: nn.Module = wrap(self.module) if wrap is not None else self.module

    def pack(self, seqs: Sequence[Sequence[int]]) -> PackedBatch:
        """The packed row of ``seqs`` on the device."""
        n = sum(len(s) for s in seqs)
        return pack_sequences(seqs, length=packed_length(n, self.budget), pad_id=self.pad_id,
                              max_segment=self.max_segment).to(self.device)

    def __call__(self, seqs: Sequence[Sequence[int]]) -> tuple[torch.Tensor, int]:
        """Scores ``[len(seqs)]`` (through the DDP wrapper when there is one) and the row length."""
        b = self.pack(seqs)
        return self.train_module(b.input_ids, b.position_ids, b.last_index, b.cu_seqlens), b.length

    @contextlib.contextmanager
    def padded(self) -> Iterator[None]:
        """The model's own attention implementation inside the block (padded evaluation)."""
        set_attn_implementation(self.module.net.model, self.original)
        try:
            yield
        finally:
            set_attn_implementation(self.module.net.model, self.impl)

    def close(self) -> None:
        """Restore the model's own attention implementation."""
        set_attn_implementation(self.module.net.model, self.original)


@torch.no_grad()
def score_packed(net: RewardNet, seqs: Sequence[Sequence[int]], pad_id: int, device: torch.device, *,
                 budget: int, max_segment: int) -> torch.Tensor:
    """Scores of decoder rows (``net`` in eval mode), fp32 on the CPU in input order, computed on packed rows of
    ``budget`` tokens instead of padded batches: no compute on padding. Rows are filled longest first, first fit
    (each row holds what fits; a sequence longer than the budget gets a row of its own), with the attention
    :class:`PackedTrainer` picks (varlen flash attention on CUDA); bf16 autocast on CUDA. What the GPU scores
    stored responses and reward requests with (``FinetunedModel.score_ids``)."""
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    rows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = len(seqs[i])
        slot = next((r for r, left in enumerate(room) if left >= n), None)
        if slot is None:
            rows.append([i])
            room.append(budget - n)
        else:
            rows[slot].append(i)
            room[slot] -= n
    packer = PackedTrainer(net, budget=budget, device=device, pad_id=pad_id,
                           max_segment=max(max_segment, max(len(s) for s in seqs)))
    was_training = net.training
    net.eval()
    out = torch.empty(len(seqs), dtype=torch.float32)
    use_amp = device.type == "cuda" and torch.cuda.is_bf16_supported()
    try:
        for row in rows:
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                r, _ = packer([seqs[i] for i in row])
            out[torch.as_tensor(row)] = r.float().cpu()
    finally:
        packer.close()
        net.train(was_training)
    return out
