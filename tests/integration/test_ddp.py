"""Data-parallel fine-tuning, replicated (DDP) and sharded (FSDP2): two CPU processes (gloo) reach the same
weights as one process on the same global batches (padded encoder; packed decoder ranks, one real-token row each,
against a padded single process replaying their steps; LoRA); on two GPUs, sharded trains as replicated."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

import rm_engine.finetune.train as ft
from db.config import Settings
from rm_engine.backbone import build_inputs, load_tokenizer, resolve_backbone
from rm_engine.config import TrainConfig
from rm_engine.finetune.ddp import train_finetune_ddp
from rm_engine.finetune.train import plan_epoch, train_finetune
from tests.integration.test_finetune import make_pairs
from tests.tiny_models import build_tiny_decoder, build_tiny_encoder

pytestmark = pytest.mark.timeout(240)


@pytest.mark.parametrize(("kind", "strategy"), [
    ("enc", "ddp"), ("enc-rich", "ddp"), ("dec-packed", "ddp"), ("enc-length", "ddp"),
    ("enc-rich", "fsdp"), ("dec-packed", "fsdp"), ("dec-lora", "fsdp"),  # rich: the body runs thrice per step
])
def test_two_gloo_ranks_match_one_process(kind: str, strategy: str, tmp_path: Path, home: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Replicated (DDP) or sharded (FSDP2) ranks; the parent loads what rank 0 saved, so a sharded run's gathered
    weights also go through the save/load round trip here."""
    torch.set_num_threads(1)
    decoder = kind.startswith("dec")
    (build_tiny_decoder if decoder else build_tiny_encoder)(tmp_path / kind, seed=7)
    covariate = kind == "enc-length"
    settings = Settings(home=home, db_url=f"sqlite:///{home / 'rmstudio.db'}", model_dirs=(tmp_path,))
    pairs = make_pairs(40, seed=11, ties=4)  # ties exercise the tie parameter's gradient all-reduce
    if covariate:  # chosen responses of varied length: the length coefficient's gradient is all-reduced too
        pairs = [dataclasses.replace(p, chosen=p.chosen + " more" * (i % 3)) for i, p in enumerate(pairs)]
    base = dict(mode="finetune", backbone=str(tmp_path / kind), epochs=2, lr=2e-3, max_length=48, seed=3,
                center_coef=0.01, margin_from_strength=0.0, pooling="rich" if kind == "enc-rich" else "auto",
                length_covariate=covariate, lora=kind == "dec-lora")
    per_device = TrainConfig(**base, batch_tokens=400, packing=decoder, strategy=strategy)  # packed ranks vs padded
    single = TrainConfig(**base, batch_tokens=800)
    tok = load_tokenizer(resolve_backbone(single.backbone, settings), decoder=decoder)
    lengths = [max(len(build_inputs(tok, p.prompt, p.history, s, 48, decoder=decoder)) for s in (p.chosen, p.rejected))
               for p in pairs[:32]]
    if decoder:  # the ranks fill their rows with random pairs; the single process replays those global steps
        sizes = [sum(len(build_inputs(tok, p.prompt, p.history, s, 48, decoder=True)) for s in (p.chosen, p.rejected))
                 for p in pairs[:32]]
        plans = [plan_epoch(lengths, per_device, e, world_size=2, packed_sizes=sizes) for e in range(2)]
        assert all(len(plan) >= 3 and all(len(step.rows) == 2 for step in plan) for plan in plans)
        monkeypatch.setattr(ft, "plan_epoch", lambda lengths, cfg, epoch, world_size=1, **kw: [list(b) for b in plans[epoch]])
    else:  # padded: one process with twice the per-device budget plans what two ranks do together
        for e in range(2):
            plan = plan_epoch(lengths, single, e, world_size=1)
            assert plan == plan_epoch(lengths, per_device, e, world_size=2)
            assert len(plan) >= 4 and all(len(b) >= 2 for b in plan)
    weights = [1.0 + (i % 4) * 0.25 for i in range(32)]

    one = train_finetune(single, pairs[:32], pairs[32:], weights=weights, device="cpu", settings=settings)
    seen: list[dict] = []
    two = train_finetune_ddp(per_device, pairs[:32], pairs[32:], gpus=2, weights=weights, device="cpu",
                             settings=settings, progress=seen.append, log_every=2, threads_per_rank=1, timeout_s=200)

    sd1 = one.model.net.state_dict()  # rich pooling: its own head (probe-initialised on every rank) included
    sd2 = two.model.net.state_dict()
    assert any(k.startswith("rich_head.") for k in sd1) == (kind == "enc-rich")
    assert sd1.keys() == sd2.keys()
    for k in sd1:
        if ".original_module." in k:  # LoRA: the new head's unused, unsaved first copy (peft trains modules_to_save)
            continue
        torch.testing.assert_close(sd2[k], sd1[k], atol=2e-5, rtol=1e-4, msg=lambda m, k=k: f"{k}: {m}")
    for h1, h2 in zip(one.history, two.history):
        assert h2["train_loss"] == pytest.approx(h1["train_loss"], rel=1e-4, abs=1e-6)
        assert h2["val_accuracy"] == pytest.approx(h1["val_accuracy"])
        assert h2["tie_param"] == pytest.approx(h1["tie_param"], rel=1e-4, abs=1e-6)
        assert ("length_coef" in h1) is ("length_coef" in h2) is covariate
        if covariate:
            assert h2["length_coef"] == pytest.approx(h1["length_coef"], rel=1e-4, abs=1e-6)
        assert h2["pairs"] == h1["pairs"] == 32
        assert h2["tokens"] == h1["tokens"]
        if decoder:  # each rank ran one packed row of >= its 400-token budget per step
            assert h2["padded_tokens"] >= 800 * h2["steps"] and h2["steps"] == h1["steps"]
    assert one.history[0]["tie_param"] != one.history[1]["tie_param"]
    if covariate:
        assert one.history[0]["length_coef"] != one.history[1]["length_coef"]
    val = pairs[32:]
    s1 = one.model.score([p.prompt for p in val], None, [p.chosen for p in val])
    s2 = two.model.score([p.prompt for p in val], None, [p.chosen for p in val])
    np.testing.assert_allclose(s2, s1, atol=1e-4)
    assert seen and seen[-1]["step"] == seen[-1]["total"]


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2,
                    reason="sharded training over NCCL needs two CUDA devices")
def test_two_gpus_sharded_matches_replicated(tmp_path: Path, home: Path) -> None:
    """On two GPUs (NCCL, bf16 compute): the sharded run (fp32 gradient reduction) trains as the replicated one,
    within bf16 noise, and its gathered model scores as it trained."""
    build_tiny_decoder(tmp_path / "dec", seed=7, hidden=64, layers=4)
    settings = Settings(home=home, db_url=f"sqlite:///{home / 'rmstudio.db'}", model_dirs=(tmp_path,))
    pairs = make_pairs(96, seed=11)
    base = dict(mode="finetune", backbone=str(tmp_path / "dec"), epochs=2, lr=2e-3, max_length=48, seed=3,
                batch_tokens=1024, packing=True, device="cuda")
    runs = {s: train_finetune_ddp(TrainConfig(**base, strategy=s), pairs[:80], pairs[80:], gpus=2, device="cuda",
                                  settings=settings, timeout_s=300) for s in ("ddp", "fsdp")}
    h_ddp, h_fsdp = runs["ddp"].history[-1], runs["fsdp"].history[-1]
    assert h_fsdp["train_loss"] == pytest.approx(h_ddp["train_loss"], abs=0.05)
    assert runs["fsdp"].history[0]["train_loss"] > h_fsdp["train_loss"]  # it learns
    val = pairs[80:]
    s_ddp, s_fsdp = (runs[k].model.score([p.prompt for p in val], None, [p.chosen for p in val]) for k in runs)
    assert np.isfinite(s_fsdp).all() and np.corrcoef(s_ddp, s_fsdp)[0, 1] > 0.9
