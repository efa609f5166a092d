"""Packed rows through torch's varlen flash attention (rm_engine.finetune.varlen_attention). The kernel runs on CUDA only:
on CPU it is replaced by a segment-by-segment reference, which checks our wiring (layouts, causality, grouped-query
heads, scale, segment boundaries, the tail cut to ``max_segment``) against padded attention; on CUDA the real
kernel is compared with padded sdpa."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import rm_engine.finetune.varlen_attention as va
from db.config import Settings
from rm_engine.finetune.packing import (
    PackedTrainer,
    choose_attn_implementation,
    pack_sequences,
    packed_scores,
    set_attn_implementation,
)
from rm_engine.finetune.reward_net import RewardNet
from rm_engine.loss import pair_nll
from tests.unit.test_packing import ROW, _max_diff, _padded, _seqs, _tiny_decoder, _train, settings, tiny_root  # noqa: F401

torch.set_num_threads(1)
CPU = torch.device("cpu")


def reference_varlen_attn(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cu_seq_q: torch.Tensor,
                          cu_seq_k: torch.Tensor, max_q: int, max_k: int, *, scale: float | None = None,
                          window_size: tuple[int, int] = (-1, -1), enable_gqa: bool = False) -> torch.Tensor:
    """What ``varlen_attn`` computes (``window_size`` ``(-1, -1)`` or causal ``(-1, 0)`` only), segment by segment
    with ``scaled_dot_product_attention``: the tests' stand-in for the CUDA kernel. Checks that no segment is
    longer than ``max_q``, as the kernel assumes."""
    if window_size not in ((-1, -1), (-1, 0)) or not torch.equal(cu_seq_q, cu_seq_k) or max_q != max_k:
        raise ValueError("reference_varlen_attn: self-attention, full or causal only")
    bounds = cu_seq_q.tolist()
    out = torch.empty_like(query)
    for a, b in zip(bounds[:-1], bounds[1:]):
        if b - a > max_q:
            raise ValueError(f"reference_varlen_attn: a segment of {b - a} tokens exceeds max_q={max_q}")
        q, k, v = (t[a:b].transpose(0, 1) for t in (query, key, value))  # [H, n, D]
        out[a:b] = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, is_causal=window_size == (-1, 0), scale=scale, enable_gqa=enable_gqa).transpose(0, 1)
    return out


@pytest.fixture(params=["window_size", "window_size_no_gqa", "is_causal"])
def reference_kernel(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """The CUDA kernel replaced by the reference, with today's signature (``window_size``, ``enable_gqa``), torch
    2.10-2.11's (``window_size``, no ``enable_gqa``: the GPU machines' torch) or an older one (``is_causal``, no
    ``enable_gqa``); without ``enable_gqa`` key and value heads are repeated. Returns the calls' kwargs."""
    if request.param == "window_size_no_gqa":
        def fn(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1)):
            # torch 2.11 tells causal attention by `window_size == (-1, 0)`: a list would silently mean full
            is_causal = window_size == (-1, 0)
            return reference_varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, scale=scale,
                                         window_size=(-1, 0) if is_causal else (-1, -1))
        params = frozenset({"query", "key", "value", "cu_seq_q", "cu_seq_k", "max_q", "max_k", "scale", "window_size"})
    elif request.param == "is_causal":
        def fn(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, is_causal=False):
            return reference_varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, scale=scale,
                                         window_size=(-1, 0) if is_causal else (-1, -1))
        params = frozenset({"query", "key", "value", "cu_seq_q", "cu_seq_k", "max_q", "max_k", "scale", "is_causal"})
    else:
        fn, params = reference_varlen_attn, frozenset({"scale", "window_size", "enable_gqa"})
    calls: list[dict] = []

    def spy(*args, **kwargs):
        calls.append({**kwargs, "heads": (args[0].shape[1], args[1].shape[1]), "max_q": args[5]})
        return fn(*args, **kwargs)

    monkeypatch.setattr(va, "_kernel", lambda: (spy, params))
    monkeypatch.setattr(va, "varlen_supported", lambda model, device: None)
    va.register()
    return calls


def test_this_torch_has_the_kernel_we_call() -> None:
    """The installed torch's varlen_attn takes what varlen_attention passes (checked without running it)."""
    _, params = va._kernel()
    assert {"scale", "window_size", "enable_gqa"} <= params


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_varlen_scores_and_gradients_equal_padded(arch: str, reference_kernel: list[dict]) -> None:
    model, seqs = _tiny_decoder(arch).train(), _seqs(1)
    k = len(seqs) // 2
    tie, margin = torch.zeros(k, dtype=torch.bool), torch.zeros(k)

    def grads(scores_fn):
        model.zero_grad(set_to_none=True)
        r = scores_fn()
        pair_nll(r[:k], r[k:], tie, margin, None, None).mean().backward()
        return r.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    ref_scores, ref = grads(lambda: _padded(model, seqs))
    set_attn_implementation(model, va.VARLEN)
    got_scores, got = grads(lambda: packed_scores(model, pack_sequences(seqs, length=ROW, max_segment=20)))
    assert reference_kernel and len(reference_kernel) == 2  # one call per layer
    call = reference_kernel[0]
    assert call["max_q"] == 17  # the longest segment: the tail (17 tokens, max_segment 20) or a sequence
    if "enable_gqa" in call:
        assert call["window_size"] == (-1, 0) and call["enable_gqa"] and call["heads"] == (4, 2)
    elif "window_size" in call:  # torch 2.10-2.11
        assert call["window_size"] == (-1, 0) and call["heads"] == (4, 4)
    else:
        assert call["is_causal"] and call["heads"] == (4, 4)  # no enable_gqa: key/value heads repeated
    torch.testing.assert_close(got_scores, ref_scores, atol=1e-5, rtol=1e-5)
    assert ref_scores.std() > 1e-3
    for n in ref:
        torch.testing.assert_close(got[n], ref[n], atol=1e-5, rtol=1e-4, msg=n)


def test_the_tail_is_cut_to_max_segment() -> None:
    b = pack_sequences([[5, 6, 7], [8]], length=12, pad_id=0, max_segment=3)
    assert b.cu_seqlens.tolist() == [0, 3, 4, 7, 10, 12]  # the 8-token tail as 3 + 3 + 2
    assert b.position_ids.tolist() == [[0, 1, 2, 0, 0, 1, 2, 0, 1, 2, 0, 1]]
    assert b.last_index.tolist() == [2, 3]
    with pytest.raises(ValueError, match="longer than max_segment=2"):
        pack_sequences([[5, 6, 7]], length=12, max_segment=2)


def test_choosing_varlen_names_what_is_missing() -> None:
    model = _tiny_decoder("llama")
    with pytest.raises(ValueError, match="packed_attention='varlen': torch's varlen flash attention runs on CUDA"):
        choose_attn_implementation(model, CPU, 512, "varlen")
    assert choose_attn_implementation(model, torch.device("cuda"), 16384, "varlen") == va.VARLEN  # not run here
    with pytest.raises(ValueError, match="packed_attention='flex': FlexAttention has no backward on CPU"):
        choose_attn_implementation(model, CPU, 512, "flex")
    with pytest.raises(ValueError, match="packed_attention='sdpa': a dense 8192 x 8192 mask"):
        choose_attn_implementation(model, CPU, 8192, "sdpa")
    assert choose_attn_implementation(model, CPU, 512, "sdpa") == "sdpa"


def test_varlen_refuses_padded_batches_and_sliding_windows() -> None:
    q = torch.zeros(2, 4, 8, 16)
    with pytest.raises(ValueError, match="needs cu_seq_lens_q"):
        va.varlen_attention(None, q, q, q, None)
    cu = torch.tensor([0, 8], dtype=torch.int32)
    with pytest.raises(ValueError, match="one packed row, got a batch of 2"):
        va.varlen_attention(None, q, q, q, None, cu_seq_lens_q=cu, max_length_q=8)
    with pytest.raises(ValueError, match="sliding-window"):
        va.varlen_attention(None, q[:1], q[:1], q[:1], None, sliding_window=4, cu_seq_lens_q=cu, max_length_q=8)


def test_packed_varlen_training_equals_padded_training(reference_kernel: list[dict], tiny_root: Path,
                                                       settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The trainer's varlen path (PackedTrainer: the tail cut to cfg.max_length, segment boundaries to every
    layer) reaches the weights padded training reaches on the same batches."""
    import rm_engine.finetune.train as ft

    plans: list = []
    real = ft.plan_epoch
    monkeypatch.setattr(ft, "plan_epoch", lambda *a, **kw: plans.append(real(*a, **kw)) or plans[-1])
    pk, pk_state, _ = _train(tiny_root, settings, "dec", packing=True, packed_attention="varlen")
    assert reference_kernel and {c["max_q"] for c in reference_kernel} == {64}  # cfg.max_length, every row
    monkeypatch.setattr(ft, "plan_epoch", lambda lengths, cfg, epoch, world_size=1, **kw: plans[epoch])
    pad, pad_state, _ = _train(tiny_root, settings, "dec")
    assert _max_diff(pad_state, pk_state) < 1e-4
    for a, b in zip(pad.history, pk.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-5) and a["val_accuracy"] == b["val_accuracy"]


def test_varlen_hands_the_kernel_16_bit_inputs_and_returns_the_callers_dtype(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flash refuses fp32, and rotary embeddings give fp32 queries even under bf16 autocast: off the CPU the kernel
    gets bf16 and the caller its own dtype back (a meta tensor stands in for a CUDA one)."""
    seen: list[torch.dtype] = []

    def kernel(q, k, v, *args, **kwargs):
        seen.extend(t.dtype for t in (q, k, v))
        return torch.empty_like(q)

    monkeypatch.setattr(va, "_kernel", lambda: (kernel, frozenset({"scale", "window_size", "enable_gqa"})))
    q = torch.zeros(1, 4, 8, 16, device="meta")
    cu = torch.tensor([0, 8], dtype=torch.int32, device="meta")
    out, _ = va.varlen_attention(None, q, q[:, :2], q[:, :2], None, cu_seq_lens_q=cu, max_length_q=8)
    assert seen == [torch.bfloat16] * 3 and out.dtype == torch.float32 and out.shape == (1, 8, 4, 16)
    seen.clear()
    va.varlen_attention(None, q.to(torch.float16), q[:, :2].half(), q[:, :2].half(), None, cu_seq_lens_q=cu,
                        max_length_q=8)
    assert seen == [torch.float16] * 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch's varlen flash attention runs on CUDA only")
def test_real_kernel_matches_padded_sdpa_on_cuda() -> None:
    """bf16 autocast on both sides (flash needs 16-bit inputs): scores and gradients agree to bf16 noise; a
    masking or position error shows at O(1)."""
    dev = torch.device("cuda")
    model = _tiny_decoder("qwen2", hidden=64).to(dev).train()
    seqs = _seqs(1)
    va.register()

    def run(fn):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            r = fn()
        r.float().square().mean().backward()
        return r.detach().float(), {n: p.grad.float().clone() for n, p in model.named_parameters()}

    ref_s, ref = run(lambda: _padded(model, seqs))
    trainer = PackedTrainer(RewardNet(model, decoder=True), budget=ROW, device=dev, pad_id=0, attention="varlen",
                            max_segment=32)
    got_s, got = run(lambda: trainer(seqs)[0])
    trainer.close()
    assert float((got_s - ref_s).norm() / ref_s.norm()) < 2e-2
    rel = {n: float((got[n] - ref[n]).norm() / ref[n].norm().clamp_min(1e-30)) for n in ref}
    assert max(rel.values()) < 5e-2, sorted(rel.items(), key=lambda kv: -kv[1])[:5]
