"""The GPU memory plan: its arithmetic on hand-computed numbers, the shape counted on the meta device against
real models (peft's own count for LoRA), the fitting order, and ``rmstudio plan-memory``."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from rm_engine.config import TrainConfig
from rm_engine.finetune.memory_plan import (
    CONTEXT_BYTES,
    FRAGMENTATION,
    GIB,
    DoesNotFit,
    ModelShape,
    activation_bytes_per_token,
    fit_plan,
    model_shape,
    plan_memory,
    plan_run,
)

SHAPE = ModelShape(params=1000, lora_params=100, layers=2, layer_params=400, outside_params=200, hidden=10, kv=4,
                   intermediate=20)


def test_activations_per_token_by_hand() -> None:
    layer = 22 * 10 + 6 * 4 + 10 * 20  # 444 bytes per token and layer
    assert activation_bytes_per_token(SHAPE, checkpointing=False) == 2 * layer + layer
    assert activation_bytes_per_token(SHAPE, checkpointing=True) == 2 * 4 * 10 + layer


@pytest.mark.parametrize(("strategy", "world", "lora", "expect"), [
    ("ddp", 1, False, (4000, 4000, 8000, 0, 0)),  # fp32 weights, gradients, two Adam moments
    ("ddp", 1, True, (4000, 400, 800, 0, 0)),  # LoRA: gradients and moments of the 100 trained only
    ("ddp", 4, False, (4000, 8000, 8000, 0, 0)),  # DDP's gradient buckets
    ("fsdp", 4, False, (1000, 1000, 2000, 12 * 400 + 6 * 200, 0)),  # a quarter each, plus gathered layers
    ("fsdp-offload", 4, False, (0, 0, 0, 12 * 400 + 6 * 200, 4000)),  # the shards in CPU memory
])
def test_plan_by_hand(strategy: str, world: int, lora: bool, expect: tuple[float, ...]) -> None:
    plan = plan_memory(SHAPE, strategy=strategy, world=world, lora=lora, batch_tokens=100, checkpointing=True)
    assert (plan.weights, plan.gradients, plan.optimizer, plan.gathered, plan.host) == expect
    assert plan.activations == 100 * 524
    assert plan.total == pytest.approx(CONTEXT_BYTES + (sum(expect[:4]) + 100 * 524) * (1 + FRAGMENTATION))


def test_fitting_turns_checkpointing_on_first_then_halves_the_budget() -> None:
    big = ModelShape(params=10**9, lora_params=10**7, layers=32, layer_params=3 * 10**7, outside_params=10**8,
                     hidden=4096, kv=1024, intermediate=11008)
    asked = plan_memory(big, strategy="fsdp", world=8, batch_tokens=65536, checkpointing=False)
    ckpt = plan_memory(big, strategy="fsdp", world=8, batch_tokens=65536, checkpointing=True)
    plan, actions = fit_plan(big, ckpt.total + 1, strategy="fsdp", world=8, lora=False, batch_tokens=65536,
                             checkpointing=False)
    assert asked.total > ckpt.total + 1 and actions == ("grad_checkpointing",) and plan.batch_tokens == 65536
    plan, actions = fit_plan(big, ckpt.total - 1, strategy="fsdp", world=8, lora=False, batch_tokens=65536,
                             checkpointing=False)
    assert actions == ("grad_checkpointing", "batch_tokens=32768") and plan.total <= ckpt.total - 1
    assert fit_plan(big, asked.total, strategy="fsdp", world=8, lora=False, batch_tokens=65536,
                    checkpointing=False)[1] == ()
    with pytest.raises(DoesNotFit, match=r"full fine-tune of 1\.00B parameters .* use lora or several GPUs"):
        fit_plan(big, 10 * GIB, strategy="ddp", world=1, lora=False, batch_tokens=65536, checkpointing=False)


def _tiny_llama_config():
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
                       num_attention_heads=4, num_key_value_heads=2, pad_token_id=0)


def test_shape_counts_what_the_real_model_and_peft_count() -> None:
    import copy

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    cfg = _tiny_llama_config()
    shape = model_shape(cfg, lora_r=4)
    real_cfg = copy.deepcopy(cfg)
    real_cfg.num_labels = 1
    model = AutoModelForSequenceClassification.from_config(real_cfg)
    assert shape.params == sum(p.numel() for p in model.parameters())
    assert (shape.layers, shape.hidden, shape.kv, shape.intermediate) == (3, 64, 32, 160)
    assert shape.layer_params == sum(p.numel() for p in model.model.layers[0].parameters())
    assert shape.outside_params == shape.params - 3 * shape.layer_params
    lora = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules="all-linear",
                                            modules_to_save=["score"]))
    assert shape.lora_params == sum(p.numel() for p in lora.parameters() if p.requires_grad)


def test_a_run_on_several_gpus_takes_the_plans_changes_and_one_gpu_leaves_them_to_the_probe() -> None:
    cfg = TrainConfig(mode="finetune", batch_tokens=16384, strategy="fsdp", gpus=2)
    hf = _tiny_llama_config()
    shape = model_shape(hf, lora_r=cfg.lora_r)
    ckpt = plan_memory(shape, strategy="fsdp", world=2, batch_tokens=16384, checkpointing=True)
    out, actions = plan_run(cfg, hf, ckpt.total + 1, world=2)
    assert out.grad_checkpointing and out.batch_tokens == 16384 and actions == ("plan:grad_checkpointing",)
    assert plan_run(cfg, hf, ckpt.total + 1, world=1) == (cfg, ())
    with pytest.raises(DoesNotFit):
        plan_run(cfg, hf, CONTEXT_BYTES, world=2)


def test_plan_memory_command(tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    """A 7B-shaped config (no weights: the plan reads the config alone) on 8 GPUs of 80 GiB."""
    from transformers import Qwen2Config

    from cli import main

    folder = tmp_path / "qwen2-7b"
    Qwen2Config(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False).save_pretrained(folder)
    monkeypatch.setenv("RMSTUDIO_MODEL_DIRS", str(tmp_path))
    assert main(["plan-memory", "--backbone", str(folder), "--gpus", "8", "--gpu-memory", "80", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert 7.0e9 < out["params"] < 7.2e9 and out["gpus"] == 8
    assert not out["plans"]["ddp"]["fits"] and "ddp" in out["does_not_fit"]
    assert out["to_fit"]["fsdp"] == ["grad_checkpointing"]
    assert out["plans"]["fsdp"]["optimizer"] == pytest.approx(8 * out["params"] / 8 / GIB)
    assert main(["plan-memory", "--backbone", str(folder), "--lora", "--gpu-memory", "80"]) == 0
    text = capsys.readouterr().out
    assert "LoRA fine-tune" in text and "ddp: fits with grad_checkpointing" in text
