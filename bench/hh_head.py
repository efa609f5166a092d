"""Head mode on HH-harmless: validation accuracy on held-out prompts (the features come from the cache that
``bench/hh_features.py`` filled; nothing is recomputed).

    python bench/hh_head.py --home /tmp/rmstudio-bench [--seeds 0,1,2,3,4] [--grid]

Uses the engine's own split (``training.split_pairs``: whole prompts, seeded hash, 20% validation) and head
trainer; prints one line per setting with the mean and per-seed validation accuracy.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    """Train heads on cached HH features and print validation accuracies."""
    import numpy as np

    from bench.hh_data import cached_features
    from rm_engine.config import TrainConfig
    from rm_engine.head.train import PairArrays, train_heads
    from rm_engine.training import split_pairs

    ap = argparse.ArgumentParser()
    ap.add_argument("--home", default="/tmp/rmstudio-bench")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--grid", action="store_true", help="try several recipes, heads and weight decays")
    ap.add_argument("--honest", action="store_true",
                    help="report accuracy on 20%% held-out prompts that early stopping never sees (it uses 15%% of the rest)")
    a = ap.parse_args()
    pairs, feats = cached_features(a.home, ("pair", "rich"))
    settings = [("pair", "linear", 1e-2), ("rich", "linear", 1e-2)]
    if a.grid:
        settings = [(r, h, wd) for r in ("pair", "rich") for h in ("linear", "mlp") for wd in (1e-3, 1e-2, 1e-1, 1.0)]
    for recipe, head, wd in settings:
        accs, secs = [], []
        for seed in [int(x) for x in a.seeds.split(",")]:
            sp = split_pairs(pairs, 0.2, seed)
            held = sp["val"]
            fit = split_pairs(sp["train"], 0.15, seed + 1000) if a.honest else {"train": sp["train"], "val": sp["val"]}
            tr = PairArrays.build([p.chosen_id for p in fit["train"]], [p.rejected_id for p in fit["train"]])
            va = PairArrays.build([p.chosen_id for p in fit["val"]], [p.rejected_id for p in fit["val"]])
            ho = PairArrays.build([p.chosen_id for p in held], [p.rejected_id for p in held])
            t0 = time.time()
            res = train_heads(feats[recipe], tr, TrainConfig(head=head, weight_decay=wd, seed=seed), val=va)
            secs.append(time.time() - t0)
            sc = res.head.score(feats[recipe]).mean(1)
            accs.append(float(np.mean(sc[ho.ci] > sc[ho.ri])))
        print(f"{recipe:5s} {head:6s} wd={wd:<6g} {'held-out' if a.honest else 'val'} acc {np.mean(accs):.3f} (seeds: {' '.join(f'{x:.3f}' for x in accs)}; "
              f"n={len(ho)}; {np.mean(secs):.1f} s/train)", flush=True)


if __name__ == "__main__":
    main()
