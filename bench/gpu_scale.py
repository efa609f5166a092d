#!/usr/bin/env python
"""Reward models at the scale people train them: a 7B-shaped LoRA fine-tune against TRL + peft on one GPU, a
sharded (FSDP2) 7B full fine-tune over every GPU (with fewer than two, its per-GPU memory plan for 8 GPUs, from the
code the trainer checks), and reward scoring on the GPU for RL-sized requests.

Sections, most needed first, each guarded (a failure is recorded, the next one runs):

* ``plan``: ``rm_engine.finetune.memory_plan`` for a Qwen2-7B config on 8 GPUs of this GPU's memory (80 GiB
  without one): ddp, fsdp and fsdp-offload, and what fits.
* ``lora``: random-weight Qwen2-7B-shaped model (``--lora-shape``), the HH-harmless token lengths; TRL's
  RewardTrainer with a peft LoRA of rank 16 on every linear layer (gradient checkpointing on, TRL's default, and
  ``--trl-batch``) against RM Studio's LoRA (packed rows, compiled). MFU counts 4N FLOPs per token (no weight
  gradients; N = non-embedding parameters).
* ``fsdp``: RM Studio full fine-tune with ``strategy="fsdp"`` over every visible GPU, 6N FLOPs per token.
* ``serving``: ``--serve-requests`` requests of 64 completions of ~300 tokens each scored by RM Studio's scoring
  path (the one ``rmstudio reward-server`` calls: length-sorted batches, bf16) against a plain transformers forward
  per request (tokenizer padding, one batch of 64): rewards/s and p95 latency per request, 0.5B shape.

    python bench/gpu_scale.py                  # on a GPU machine; about 10 minutes on one H100
    python bench/gpu_scale.py --smoke          # tiny shapes and a few steps on CPU (run by make test)

Prints one JSON document (also written to ``--out``); ratios are against the baseline of the same run.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from gpu_setup import SHAPES, build_random_model, device_info, encode, load_data, minilm_tokenizer  # noqa: E402
from gpu_trainers import run_ours, run_trl  # noqa: E402


def _guard(report: dict[str, Any], key: str, fn: Any) -> None:
    t0 = time.perf_counter()
    try:
        report[key] = fn()
    except Exception as exc:  # noqa: BLE001 - recorded; the next section still runs
        report[key] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
    if isinstance(report[key], dict):
        report[key]["seconds"] = round(time.perf_counter() - t0, 1)


def plan_section(gpu_gib: float) -> dict[str, Any]:
    """The memory plan of a Qwen2-7B full fine-tune on 8 GPUs, per strategy."""
    from transformers import Qwen2Config

    from rm_engine.finetune.memory_plan import GIB, DoesNotFit, fit_plan, model_shape, plan_memory

    shape = model_shape(Qwen2Config(**SHAPES["7b"], tie_word_embeddings=False))
    out: dict[str, Any] = {"params": shape.params, "gpus": 8, "gpu_gib": gpu_gib, "batch_tokens": 16384}
    for strategy in ("ddp", "fsdp", "fsdp-offload"):
        plan = plan_memory(shape, strategy=strategy, world=8, batch_tokens=16384)
        row = {k: round(v, 2) for k, v in plan.rows()}
        try:
            fitted, actions = fit_plan(shape, gpu_gib * GIB, strategy=strategy, world=8, lora=False,
                                       batch_tokens=16384, checkpointing=False)
            row["fits_with"] = list(actions)
            row["fitted_total_gib"] = round(fitted.total / GIB, 2)
        except DoesNotFit as exc:
            row["does_not_fit"] = str(exc)
        out[strategy] = row
    return out


def _mfu(tokens_per_s: float | None, n: int, flops_per_param: int, peak: float | None, world: int = 1) -> float | None:
    return flops_per_param * n * tokens_per_s / (peak * world) if tokens_per_s and peak else None


def serving_section(model_dir: Path, settings: Any, args: argparse.Namespace) -> dict[str, Any]:
    """RM Studio's scoring path against a plain transformers forward, per request of 64 completions."""
    import numpy as np
    import torch
    from transformers import AutoModelForSequenceClassification

    from rm_engine.config import TrainConfig
    from rm_engine.finetune.train import train_finetune

    words = "the a cat dog runs fast slow why how good bad answer question more less time place".split()
    rng = np.random.default_rng(0)
    n_words = 300 if not args.smoke else 30
    requests = [["Q: " + " ".join(rng.choice(words, 20)) for _ in range(64)] for _ in range(args.serve_requests)]
    answers = [[" ".join(rng.choice(words, int(rng.integers(n_words // 2, n_words * 3 // 2)))) for _ in range(64)]
               for _ in range(args.serve_requests)]
    # a published fine-tuned model is what the server loads; one step of training makes one
    cfg = TrainConfig(mode="finetune", backbone=str(model_dir), epochs=1, max_length=args.max_length,
                      batch_tokens=2048, max_batch_pairs=2)
    from db.pairs import TrainingPair

    seed_pairs = [TrainingPair(prompt_id=i, prompt=requests[0][i], history=(), category=None, chosen_id=2 * i,
                               rejected_id=2 * i + 1, chosen=answers[0][i], rejected=answers[0][i + 1], source="expert",
                               annotator="a", tie=False) for i in range(2)]
    fm = train_finetune(cfg, seed_pairs, [], settings=settings).model
    cuda = torch.cuda.is_available()

    def timed(fn: Any) -> dict[str, Any]:
        fn(0)  # warm-up
        lat = []
        for i in range(len(requests)):
            t0 = time.perf_counter()
            fn(i)
            if cuda:
                torch.cuda.synchronize()
            lat.append(time.perf_counter() - t0)
        total = sum(lat)
        return {"rewards_per_s": 64 * len(lat) / total, "p50_ms": 1e3 * statistics.median(lat),
                "p95_ms": 1e3 * sorted(lat)[max(0, int(0.95 * len(lat)) - 1)]}

    ours = timed(lambda i: fm.score(requests[i], None, answers[i]))
    tok = fm.tokenizer
    plain = AutoModelForSequenceClassification.from_pretrained(str(model_dir), num_labels=1).to(fm.device).eval()
    plain.config.pad_token_id = tok.pad_token_id

    @torch.no_grad()
    def baseline(i: int) -> Any:
        batch = tok(requests[i], answers[i], padding=True, truncation=True, max_length=args.max_length,
                    return_tensors="pt").to(fm.device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            return plain(**batch).logits[:, 0].float().cpu()

    base = timed(baseline)
    return {"requests": len(requests), "completions_per_request": 64, "mean_words": n_words, "rmstudio": ours,
            "transformers_per_request": base, "ratio_rewards_per_s": ours["rewards_per_s"] / base["rewards_per_s"]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny shapes and a few steps (runs on CPU)")
    ap.add_argument("--data", default=None, help="hh_harmless_1300.jsonl.gz (default: the real-data folder)")
    ap.add_argument("--limit", type=int, default=None, help="use the first N pairs")
    ap.add_argument("--lora-shape", default="7b", choices=sorted(SHAPES))
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--trl-batch", type=int, default=8)
    ap.add_argument("--trl-steps", type=int, default=20)
    ap.add_argument("--batch-tokens", type=int, default=16384)
    ap.add_argument("--serve-requests", type=int, default=20)
    ap.add_argument("--sections", default="plan,lora,fsdp,serving")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "gpu_scale.json"))
    args = ap.parse_args(argv)
    if args.smoke:
        args.lora_shape, args.limit, args.max_length = "smoke", args.limit or 24, 128
        args.trl_batch, args.trl_steps, args.batch_tokens, args.serve_requests = 4, 3, 1024, 3
    import torch

    from db.config import Settings
    from rm_engine.finetune.ddp import train_finetune_ddp

    dev = device_info()
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    sections = {s.strip() for s in args.sections.split(",") if s.strip()}
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "device": dev, "gpus": gpus,
                              "smoke": args.smoke, "command": " ".join(sys.argv), "torch": torch.__version__}
    gpu_gib = torch.cuda.get_device_properties(0).total_memory / 2**30 if gpus else 80.0
    if "plan" in sections:
        _guard(report, "plan", lambda: plan_section(gpu_gib))
    pairs = load_data(args)
    tok = minilm_tokenizer(decoder=True)
    with tempfile.TemporaryDirectory(prefix="rmstudio-bench-") as home_s:
        home = Path(home_s)
        settings = Settings(home=home, db_url=f"sqlite:///{home / 'bench.db'}", model_dirs=(home,))
        model_dir, n = build_random_model(home, args.lora_shape, tok, bf16_files=not args.smoke)
        ids = encode(tok, pairs, args.max_length, decoder=True)
        report["model"] = {"shape": args.lora_shape, "non_embedding_params": n}
        peak = dev.get("peak_flops")

        def lora() -> dict[str, Any]:
            trl, _ = run_trl(model_dir, tok, ids, grad_ckpt=True, batch=args.trl_batch,
                             steps=args.trl_steps + 2, warmup=2, lr=2e-4, lora=True)
            ours, _ = run_ours(model_dir, pairs, settings, batch_tokens=args.batch_tokens, batch_size=16, epochs=2,
                               lr=2e-4, max_length=args.max_length, compile_=not args.smoke, packing=True, lora=True)
            for r in (trl, ours):
                r["mfu_4n"] = _mfu(r.get("tokens_per_s"), n, 4, peak)
            return {"trl_peft": trl, "rmstudio": ours, "ratio_pairs_per_s": ours["pairs_per_s"] / trl["pairs_per_s"]}

        def fsdp() -> dict[str, Any]:
            from rm_engine.config import TrainConfig

            world = gpus if gpus >= 2 else 2
            if gpus == 1:
                return {"skipped": "one GPU: sharding needs two or more (the plan section shows 8)"}
            cfg = TrainConfig(mode="finetune", backbone=str(model_dir), epochs=2, lr=1e-5, max_length=args.max_length,
                              batch_tokens=args.batch_tokens, packing=True, strategy="fsdp", gpus=world)
            res = train_finetune_ddp(cfg, pairs, [], gpus=world, device="cuda" if gpus else "cpu", settings=settings,
                                     threads_per_rank=1 if not gpus else None)
            last = res.history[-1]
            return {"gpus": world, "pairs_per_s": last["pairs_per_s"], "tokens_per_s": last["tokens_per_s"],
                    "memory_fit": last.get("memory_fit"), "mfu_6n": _mfu(last["tokens_per_s"], n, 6, peak, world)}

        if "lora" in sections:
            _guard(report, "lora", lora)
        if "fsdp" in sections:
            _guard(report, "fsdp", fsdp)
        if "serving" in sections:
            serve_dir = model_dir if args.smoke else build_random_model(home, "0.5b", tok)[0]
            _guard(report, "serving", lambda: serving_section(serve_dir, settings, args))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2, default=float))
    print(json.dumps(report, indent=2, default=float))
    return report


if __name__ == "__main__":
    main()
