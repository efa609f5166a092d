"""Finetune mode on tiny random models (encoder and decoder): it learns, scores are read from the right token,
save/load round-trips exactly (LoRA head included), ties, cancellation."""
from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open

from db.config import Settings
from db.pairs import TrainingPair
from rm_engine import loss as L
from rm_engine.backbone import is_decoder, load_config, load_tokenizer, resolve_backbone
from rm_engine.config import Cancelled, TrainConfig
from rm_engine.finetune.model import FinetunedModel, load_backbone_model
from rm_engine.finetune.reward_net import RewardNet, collate
from rm_engine.finetune.train import plan_epoch, train_finetune
from rm_engine.loss import pair_nll
from tests.tiny_models import build_tiny_decoder, build_tiny_encoder

torch.set_num_threads(1)  # the CI box is shared: more threads spin and oversubscribe
WORDS = "apple river stone cloud music table green orange window paper light water".split()


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny_models")
    build_tiny_encoder(root / "enc")
    build_tiny_decoder(root / "dec", pad_equals_eos=True, chat_template=True)
    return root


@pytest.fixture
def settings(home: Path, tiny_root: Path) -> Settings:
    return Settings(home=home, db_url=f"sqlite:///{home / 'rmstudio.db'}", model_dirs=(tiny_root,))


def make_pairs(n: int, seed: int = 0, ties: int = 0) -> list[TrainingPair]:
    """Learnable pairs: the chosen response ends with 'excellent helpful', the rejected with 'terrible rude'.
    Which one is first in the pair is random per pair only through its content, so a model must read the
    response (a constant or position-based score gets 50%)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 30)))
        base = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 20)))
        tie = i < ties
        out.append(TrainingPair(
            prompt_id=i, prompt=prompt, history=(("user", "hello"), ("assistant", "hi")) if i % 3 == 0 else (),
            category=None, chosen_id=2 * i, rejected_id=2 * i + 1,
            chosen=base + (" fine okay" if tie else " excellent helpful"),
            rejected=base + (" okay fine" if tie else " terrible rude"),
            source=("expert", "crowd", "ai")[i % 3], annotator="a", tie=tie))
    return out


def _cfg(backbone: Path, **kw) -> TrainConfig:
    base = dict(mode="finetune", backbone=str(backbone), epochs=2, lr=1e-3, batch_tokens=2048, max_length=64, seed=0)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("kind", ["enc", "dec"])
def test_trained_model_separates_chosen_from_rejected_and_round_trips(kind: str, tiny_root: Path,
                                                                       settings: Settings, home: Path) -> None:
    pairs = make_pairs(180)
    seen: list[dict] = []
    res = train_finetune(_cfg(tiny_root / kind), pairs[:150], pairs[150:], device="cpu", settings=settings,
                         progress=seen.append, log_every=5)
    val = pairs[150:]
    fm = res.model
    rc = fm.score([p.prompt for p in val], [p.history for p in val], [p.chosen for p in val])
    rr = fm.score([p.prompt for p in val], [p.history for p in val], [p.rejected for p in val])
    # the "stuck at 0.693" bug: identical or near-identical scores for both sides
    assert np.mean(rc > rr) >= 0.9
    assert np.min(np.abs(rc - rr)) > 0
    assert res.history[-1]["val_accuracy"] == pytest.approx(float(np.mean(rc > rr)))
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"] < 0.7
    assert [h["epoch"] for h in res.history] == [1, 2]
    assert seen and all({"step", "total", "loss", "eta_s", "phase"} <= set(d) for d in seen)
    assert seen[-1]["step"] == seen[-1]["total"]
    assert 0 < res.history[0]["tokens"] <= res.history[0]["padded_tokens"]

    out = fm.save(home / "models" / f"v-{kind}")
    assert not list(out.glob("*.bin")) and not list(out.glob("*.pt")) and list(out.glob("*.safetensors"))
    meta = json.loads((out / "finetune.json").read_text())
    assert meta["decoder"] is (kind == "dec") and meta["truncation"].startswith("keep-response")
    back = FinetunedModel.load(out, device="cpu")
    again = back.score([p.prompt for p in val], [p.history for p in val], [p.chosen for p in val])
    np.testing.assert_allclose(again, rc, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["enc", "dec"])
def test_score_is_independent_of_padding_and_batch(kind: str, tiny_root: Path, settings: Settings) -> None:
    """The score of a sequence is the same alone and in a right-padded batch with longer sequences: it is read
    at the last *real* token (decoders: pad == eos here), not at a pad position or by searching the pad id."""
    ref = resolve_backbone(str(tiny_root / kind), settings)
    dec = is_decoder(load_config(ref))
    assert dec is (kind == "dec")
    tok = load_tokenizer(ref, decoder=dec)
    if dec:
        assert tok.pad_token_id == tok.eos_token_id and tok.padding_side == "right"
    torch.manual_seed(0)
    net = RewardNet(load_backbone_model(ref.path, tok, _cfg(ref.path), decoder=dec), dec).eval()
    rng = random.Random(1)
    seqs = [[rng.randrange(1000, 30000) for _ in range(rng.randint(3, 40))] for _ in range(9)]
    seqs[0] = seqs[0][:-1] + [tok.pad_token_id]  # a real trailing token equal to the pad id (eos)
    with torch.no_grad():
        batched = net(*collate(seqs, tok.pad_token_id, torch.device("cpu")))
        alone = torch.cat([net(*collate([s], tok.pad_token_id, torch.device("cpu"))) for s in seqs])
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-4)
    assert batched.std() > 0  # rows really differ
    if dec:  # HF's own pooling searches the pad id: it agrees on ordinary rows, and misreads a trailing eos
        with torch.no_grad():
            hf = torch.cat([net.model(*collate([s], tok.pad_token_id, torch.device("cpu"))).logits[:, 0] for s in seqs])
        torch.testing.assert_close(alone[1:], hf[1:], atol=1e-5, rtol=1e-4)
        assert abs(float(alone[0] - hf[0])) > 1e-4
    net.train()  # dropout is disabled: two training-mode passes agree
    with torch.no_grad():
        a, b = (net(*collate(seqs, tok.pad_token_id, torch.device("cpu"))) for _ in range(2))
    torch.testing.assert_close(a, b)


def test_lora_trains_and_saves_the_score_head(tiny_root: Path, settings: Settings, home: Path) -> None:
    pairs = make_pairs(120, seed=3)
    cfg = _cfg(tiny_root / "dec", lora=True, lora_r=4, lora_alpha=8, lr=5e-3, epochs=2)
    res = train_finetune(cfg, pairs[:100], pairs[100:], device="cpu", settings=settings)
    fm = res.model
    val = pairs[100:]
    before = fm.score([p.prompt for p in val], None, [p.chosen for p in val])
    out = fm.save(home / "models" / "v-lora")
    assert (out / "adapter_model.safetensors").is_file() and not (out / "model.safetensors").exists()
    with safe_open(str(out / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert any("score" in k for k in keys) and any("lora_A" in k for k in keys)
    back = FinetunedModel.load(out, device="cpu")
    np.testing.assert_allclose(back.score([p.prompt for p in val], None, [p.chosen for p in val]), before, rtol=0, atol=1e-6)
    # the head was trained: a freshly initialised model (new random head) scores differently
    torch.manual_seed(123)
    fresh = FinetunedModel(RewardNet(load_backbone_model(tiny_root / "dec", fm.tokenizer, _cfg(tiny_root / "dec"), decoder=True), True).eval(),
                           fm.tokenizer, fm.meta, torch.device("cpu"))
    assert not np.allclose(fresh.score([p.prompt for p in val], None, [p.chosen for p in val]), before, atol=1e-3)
    assert res.history[-1]["val_accuracy"] >= 0.8


def test_ties_learn_a_tie_parameter_and_exclude_drops_them(tiny_root: Path, settings: Settings) -> None:
    pairs = make_pairs(60, seed=5, ties=15)
    res = train_finetune(_cfg(tiny_root / "enc", epochs=1), pairs[:50], pairs[50:], device="cpu", settings=settings)
    assert "tie_param" in res.history[0] and res.model.meta.tie_model == "davidson"
    assert res.model.meta.tie_param == pytest.approx(res.history[0]["tie_param"])
    ex = train_finetune(_cfg(tiny_root / "enc", epochs=1, ties="exclude"), pairs[:50], pairs[50:], device="cpu",
                        settings=settings)
    assert "tie_param" not in ex.history[0] and ex.history[0]["pairs"] == 50 - 15


def test_should_stop_cancels_between_steps(tiny_root: Path, settings: Settings) -> None:
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) >= 3

    with pytest.raises(Cancelled):
        train_finetune(_cfg(tiny_root / "enc", batch_tokens=256), make_pairs(40), [], device="cpu",
                       settings=settings, should_stop=stop)
    assert len(calls) == 3


def test_pair_nll_matches_the_reference_losses() -> None:
    g = torch.Generator().manual_seed(0)
    rc, rr = torch.randn(12, generator=g), torch.randn(12, generator=g)
    w = torch.rand(12, generator=g) + 0.1
    margin = torch.rand(12, generator=g)
    tie = torch.zeros(12, dtype=torch.bool)
    got = (pair_nll(rc, rr, tie, margin, None, None) * w).sum() / w.sum()
    torch.testing.assert_close(got, L.bt_loss(rc, rr, w, margin))
    tie[:4] = True
    margin[:4] = 0  # margins apply to decided pairs only
    for model, fn in (("davidson", L.davidson_tie_loss), ("rao_kupper", L.rao_kupper_loss)):
        p = torch.tensor(0.3)
        got = (pair_nll(rc, rr, tie, margin, model, p) * w).sum() / w.sum()
        torch.testing.assert_close(got, fn(rc, rr, tie, p, w, margin))


def test_fixed_size_batches_when_no_token_budget() -> None:
    cfg = TrainConfig(mode="finetune", batch_tokens=0, batch_size=4)
    plan = plan_epoch([10] * 18, cfg, epoch=0)
    assert [len(b) for b in plan] == [4, 4, 4, 4, 2]
    assert sorted(i for b in plan for i in b) == list(range(18))
    assert plan != plan_epoch([10] * 18, cfg, epoch=1)  # reshuffled every epoch


def _bench_module(name: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``bench/<name>.py`` loaded in this process (torch and transformers are already imported), with ``sys.path``
    (which the script extends) restored after the test."""
    import importlib.util
    import sys

    monkeypatch.setattr(sys, "path", list(sys.path))
    path = Path(__file__).resolve().parents[2] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"rmstudio_bench_{name}", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_gpu_bench_smoke_runs_end_to_end_on_cpu(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """bench/gpu_train.py --smoke: TRL (defaults, no checkpointing) vs ours, speed and accuracy, one JSON.
    Run in this process (torch and transformers are already imported) with sys.path restored afterwards."""
    bench = _bench_module("gpu_train", monkeypatch)
    out = tmp_path / "gpu_train.json"
    bench.main(["--smoke", "--limit", "32", "--out", str(out)])
    stdout = capsys.readouterr().out
    rep = json.loads(out.read_text())
    row = rep["speed"]["smoke"]
    for k in ("a_trl_default", "b_trl_no_ckpt", "c_rmstudio", "d_rmstudio_random16"):
        assert row[k]["pairs_per_s"] > 0 and row[k]["tokens_per_s"] > 0
    assert row["a_trl_default"]["gradient_checkpointing"] and not row["b_trl_no_ckpt"]["gradient_checkpointing"]
    assert row["ratio_c_over_b"] == pytest.approx(row["c_rmstudio"]["pairs_per_s"] / row["b_trl_no_ckpt"]["pairs_per_s"])
    # TRL and ours are fed the same token ids: our real tokens per pair match the shared data's mean length
    c = row["c_rmstudio"]
    assert c["tokens_per_s"] / c["pairs_per_s"] == pytest.approx(2 * row["mean_tokens_per_sequence"], rel=1e-6)
    # length-grouped token budgets pad less than random batches of the same data
    assert row["c_rmstudio"]["padding_share"] < row["d_rmstudio_random16"]["padding_share"]
    # c3's steps profiled by kind (on CPU: operator time, uncompiled): packed rows spend time in attention
    prof = row["p3_profile_c3"]
    assert prof["steps"] == 1 and sum(c["share"] for c in prof["categories"].values()) == pytest.approx(1.0)
    assert {"attention", "matmul"} <= set(prof["categories"]) and "busy" in stdout
    acc = rep["accuracy"]
    assert acc["train_pairs"] + acc["held_out_pairs"] == rep["n_pairs"] == 32
    assert 0 <= acc["trl"]["accuracy"] <= 1 and 0 <= acc["rmstudio"]["accuracy"] <= 1
    assert len(acc["rmstudio"]["val_accuracy_per_epoch"]) == acc["epochs"]
    assert acc["rmstudio"]["accuracy"] == pytest.approx(acc["rmstudio"]["val_accuracy_per_epoch"][-1])
    assert acc["rmstudio_rich"]["pooling"] == "rich"
    # every variant (rich pooling, LoRA at its own rate) scored from texts agrees with the trainer's own validation
    assert acc["rmstudio_lora"]["lora"] is True and acc["rmstudio_lora"]["lr"] == 2e-4
    for name in ("rmstudio_rich", "rmstudio_lora"):
        assert acc[name]["accuracy"] == pytest.approx(acc[name]["val_accuracy_per_epoch"][-1])
    assert "RM Studio" in stdout and "c/b" in stdout


@pytest.mark.parametrize("kind", ["enc", "dec"])
def test_length_covariate_learns_its_coefficient_and_keeps_it_out_of_the_score(kind: str, tiny_root: Path,
                                                                                settings: Settings) -> None:
    """Chosen responses are longer and better: beta starts at the length-only fit (> 0) and is reported; the saved
    model's scores are the score alone (its round trip and validation accuracy read without beta)."""
    pairs = [dataclasses.replace(p, chosen=p.chosen + " indeed very much so") for p in make_pairs(120)]
    res = train_finetune(_cfg(tiny_root / kind, length_covariate=True, epochs=1), pairs[:100], pairs[100:],
                         device="cpu", settings=settings)
    beta = res.history[-1]["length_coef"]
    assert beta > 0.5  # all chosen responses are longer: length alone explains much of the labels
    val = pairs[100:]
    rc = res.model.score([p.prompt for p in val], [p.history for p in val], [p.chosen for p in val])
    rr = res.model.score([p.prompt for p in val], [p.history for p in val], [p.rejected for p in val])
    assert res.history[-1]["val_accuracy"] == pytest.approx(float(np.mean(rc > rr)))  # read without beta
    plain = train_finetune(_cfg(tiny_root / kind, epochs=1), pairs[:100], pairs[100:], device="cpu", settings=settings)
    assert "length_coef" not in plain.history[-1]


def test_gpu_scale_bench_smoke_runs_end_to_end_on_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """bench/gpu_scale.py --smoke: the 8-GPU memory plan of a 7B model, LoRA against TRL + peft, a sharded run
    (two gloo ranks on CPU) and scoring against a plain transformers forward, one JSON; no section fails."""
    bench = _bench_module("gpu_scale", monkeypatch)
    out = tmp_path / "gpu_scale.json"
    bench.main(["--smoke", "--out", str(out)])
    rep = json.loads(out.read_text())
    assert not [k for k in ("plan", "lora", "fsdp", "serving") if "error" in rep[k]], rep
    assert 7.0e9 < rep["plan"]["params"] < 7.2e9 and "does_not_fit" in rep["plan"]["ddp"]
    assert rep["plan"]["fsdp"]["fits_with"] == ["grad_checkpointing"]
    assert rep["lora"]["trl_peft"]["pairs_per_s"] > 0 and rep["lora"]["rmstudio"]["pairs_per_s"] > 0
    assert rep["fsdp"]["gpus"] == 2 and rep["fsdp"]["pairs_per_s"] > 0
    serving = rep["serving"]
    assert serving["rmstudio"]["rewards_per_s"] > 0 and serving["transformers_per_request"]["p95_ms"] > 0
