"""Gradient checkpointing and smaller batches only when memory demands them: the decision on hand-made probe
answers, the probe's handling of out-of-memory errors, and the wiring inside the finetune trainer."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from db.config import Settings
from db.pairs import TrainingPair
from rm_engine.config import TrainConfig
from rm_engine.finetune import train as finetune
from rm_engine.finetune.memory_fit import fit_to_memory, fits, heaviest
from tests.tiny_models import build_tiny_decoder

torch.set_num_threads(1)


def _oom() -> BaseException:
    return getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)("CUDA out of memory. Tried to allocate 2 GiB")


@pytest.mark.parametrize(("fits_when", "start_ckpt", "expected_actions", "expected_tokens"), [
    (lambda c: True, False, (), 16384),
    (lambda c: c.grad_checkpointing, False, ("gradient checkpointing on",), 16384),
    (lambda c: c.grad_checkpointing and c.batch_tokens <= 4096, False,
     ("gradient checkpointing on", "batch_tokens 8192", "batch_tokens 4096"), 4096),
    (lambda c: c.batch_tokens <= 8192, True, ("batch_tokens 8192",), 8192),  # already checkpointing: halve at once
])
def test_fit_takes_the_cheapest_change_that_fits(fits_when, start_ckpt: bool, expected_actions: tuple,
                                                 expected_tokens: int) -> None:
    enabled = []
    cfg = TrainConfig(mode="finetune", batch_tokens=16384, grad_checkpointing=start_ckpt)
    fit = fit_to_memory(cfg, fits_when, lambda: enabled.append(1))
    assert fit.actions == expected_actions and fit.cfg.batch_tokens == expected_tokens
    assert fit.cfg.grad_checkpointing == (start_ckpt or bool(expected_actions and not start_ckpt))
    assert len(enabled) == (1 if "gradient checkpointing on" in expected_actions else 0)


def test_fit_gives_up_with_advice() -> None:
    with pytest.raises(MemoryError, match="--lora.*max-length \\(now 256\\)"):
        fit_to_memory(TrainConfig(mode="finetune", batch_tokens=4096), lambda c: False, lambda: None)


def test_probe_answers_out_of_memory_and_reraises_the_rest() -> None:
    cleared = []

    def boom(exc: BaseException):
        def step() -> None:
            raise exc
        return step

    assert fits(lambda: None, lambda: cleared.append(1)) is True
    assert fits(boom(_oom()), lambda: cleared.append(1)) is False
    assert fits(boom(RuntimeError("CUDA error: out of memory")), lambda: cleared.append(1)) is False
    assert len(cleared) == 3  # gradients cleared after every probe
    with pytest.raises(ValueError):
        fits(boom(ValueError("a bug, not memory")), lambda: None)


def test_heaviest_batch_is_the_most_padded_tokens() -> None:
    lengths = [10, 50, 12, 11, 49]
    assert heaviest([[0, 2, 3], [1, 4], [2]], lengths) == [1, 4]  # 2 x 50 = 100 > 3 x 12 = 36
    assert heaviest([], lengths) == []


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
def test_trainer_turns_checkpointing_on_when_the_probe_runs_out_of_memory(tmp_path: Path, packing: bool,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """On CPU nothing runs out of memory: the probe is forced on and the model raises the CUDA error whenever it
    runs a training forward pass without gradient checkpointing. Packed rows are probed too (a full row)."""
    build_tiny_decoder(tmp_path / "dec")
    settings = Settings(home=tmp_path, db_url=f"sqlite:///{tmp_path / 'x.db'}", model_dirs=(tmp_path,))
    monkeypatch.setattr(finetune, "_probe_memory", lambda *a: True)
    real_load = finetune.load_backbone_model
    forwards = {"refused": 0}

    def load(*args, **kw):
        model = real_load(*args, **kw)

        def pre_hook(module, inputs):
            if module.training and not model.is_gradient_checkpointing:
                forwards["refused"] += 1
                raise _oom()
        getattr(model, model.base_model_prefix).register_forward_pre_hook(pre_hook)  # what RewardNet calls
        return model

    monkeypatch.setattr(finetune, "load_backbone_model", load)
    rng = random.Random(0)
    pairs = [TrainingPair(prompt_id=i, prompt=f"q{i}", history=(), category=None, chosen_id=2 * i, rejected_id=2 * i + 1,
                          chosen=" ".join(rng.choice("a b c d".split()) for _ in range(5)) + " excellent helpful",
                          rejected="terrible rude", source="crowd", annotator="a") for i in range(60)]
    cfg = TrainConfig(mode="finetune", backbone=str(tmp_path / "dec"), epochs=2, lr=1e-3, batch_tokens=2048,
                      max_length=64, seed=0, packing=packing)
    probes = []
    for name in ("_probe_step", "_probe_packed_step"):
        real = getattr(finetune, name)
        monkeypatch.setattr(finetune, name, lambda *a, _r=real, _n=name: probes.append(_n) or _r(*a))
    res = finetune.train_finetune(cfg, pairs[:50], pairs[50:], device="cpu", settings=settings)
    assert probes == ["_probe_packed_step" if packing else "_probe_step"] * 2  # refused, then fits with checkpointing
    assert forwards["refused"] == 1  # the probe, once; every training step then ran with checkpointing
    assert res.history[0]["memory_fit"] == ["gradient checkpointing on"]
    assert res.model.model.is_gradient_checkpointing
    assert res.history[-1]["val_accuracy"] >= 0.8
