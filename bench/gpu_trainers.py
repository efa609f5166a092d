"""The trainers ``bench/gpu_train.py`` compares, called the same way for its speed rows and its accuracy section:
TRL's RewardTrainer on pre-tokenised pairs and RM Studio's finetune trainer."""
from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gpu_setup import alloc_retries, peak_gb, reset_memory


def run_trl(model_dir: Path, tok: Any, ids: tuple[list, list], *, grad_ckpt: bool, batch: int, steps: int,
            warmup: int, lr: float, epochs: float | None = None, seed: int = 0,
            lora: bool = False) -> tuple[dict[str, Any], Any]:
    """TRL RewardTrainer on pre-tokenised pairs; timing skips the first ``warmup`` steps. ``lora``: peft adapters
    of rank 16 on every linear layer (RM Studio's LoRA), through TRL's ``peft_config``."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, TrainerCallback
    from trl import RewardConfig, RewardTrainer

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.t: dict[int, float] = {}

        def on_step_end(self, args, state, control, **kw):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.t[state.global_step] = time.perf_counter()

    reset_memory()
    torch.manual_seed(seed)  # the new head's initialisation
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), num_labels=1).float()  # fp32 master
    model.config.pad_token_id = tok.pad_token_id
    ds = Dataset.from_dict({"chosen_ids": ids[0], "rejected_ids": ids[1]})
    cuda = torch.cuda.is_available()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = RewardConfig(output_dir=tmp, per_device_train_batch_size=batch, gradient_checkpointing=grad_ckpt,
                           bf16=cuda, learning_rate=lr, max_steps=-1 if epochs else steps,
                           num_train_epochs=epochs or 1, logging_steps=10**6, save_strategy="no", report_to=[],
                           dataloader_num_workers=0, seed=seed, use_cpu=not cuda, max_length=None)
        clock = Clock()
        peft_config = None
        if lora:
            from peft import LoraConfig

            peft_config = LoraConfig(task_type="SEQ_CLS", r=16, lora_alpha=32, target_modules="all-linear")
        trainer = RewardTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, callbacks=[clock],
                                peft_config=peft_config)
        trainer.train()
    timed = sorted(k for k in clock.t if k > warmup)
    secs = clock.t[timed[-1]] - clock.t[warmup] if timed and warmup in clock.t else float("nan")
    n_steps = len(timed)
    mean_tok = (sum(map(len, ids[0])) + sum(map(len, ids[1]))) / len(ids[0])
    pairs = n_steps * batch
    return {"pairs_per_s": pairs / secs, "tokens_per_s": pairs * mean_tok / secs, "peak_mem_gb": peak_gb(),
            "alloc_retries": alloc_retries(), "steps_timed": n_steps, "batch": batch, "gradient_checkpointing": grad_ckpt}, trainer.model


def run_ours(model_dir: Path, pairs: list[Any], settings: Any, *, batch_tokens: int, batch_size: int, epochs: int,
             lr: float, max_length: int, compile_: bool, val: list[Any] | None = None, max_pairs: int = 0,
             packing: bool = False, pooling: str = "auto", head_init: str = "random",
             packed_attention: str = "auto", lora: bool = False, seed: int = 0,
             weights: list[float] | None = None,
             should_stop: Callable[[], bool] | None = None) -> tuple[dict[str, Any], Any]:
    """RM Studio's trainer; throughput from its last epoch (the first one pays for warm-up). ``seed`` and
    ``weights`` (per pair) as the engine gives an ensemble member (``rm_engine.objective.member_weights``)."""
    from rm_engine.config import TrainConfig
    from rm_engine.finetune.train import train_finetune

    reset_memory()
    cfg = TrainConfig(mode="finetune", backbone=str(model_dir), epochs=epochs, lr=lr, batch_tokens=batch_tokens,
                      batch_size=batch_size, max_batch_pairs=max_pairs, max_length=max_length, compile=compile_,
                      seed=seed, pooling=pooling, packing=packing, head_init=head_init, packed_attention=packed_attention,
                      lora=lora)
    res = train_finetune(cfg, pairs, val or [], weights=weights, device="auto", settings=settings, log_every=10**6,
                         should_stop=should_stop)
    last = res.history[-1]
    return {"pairs_per_s": last["pairs_per_s"], "tokens_per_s": last["tokens_per_s"], "peak_mem_gb": peak_gb(),
            "alloc_retries": alloc_retries(), "memory_fit": last.get("memory_fit"), "steps_timed": last["steps"], "batch_tokens": batch_tokens or None, "batch_size": None if batch_tokens else batch_size,
            "padding_share": 1 - last["tokens"] / max(last["padded_tokens"], 1),
            "val_accuracy": last.get("val_accuracy"),
            "val_accuracy_per_epoch": [h.get("val_accuracy") for h in res.history]}, res.model
