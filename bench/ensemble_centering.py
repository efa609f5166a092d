"""What centring ensemble members changes, on HH-harmless head ensembles (features from ``bench/hh_features.py``'s
cache; nothing is recomputed):

    python bench/ensemble_centering.py --home /tmp/rmstudio-bench [--members 5] [--seeds 0,1,2]

For each seed: the engine's split (20% of prompts held out), a K-member head ensemble (own seeds, bootstrap
resamples), scored on every stored response. Printed per seed and on average: held-out accuracy (the same for
both combinations: centring shifts the member mean by one constant), the mean per-response ensemble std of the plain
member mean and of the centred one (``rm_engine.normalize.combine_members``), how far apart the members' centres
are compared with a member's own spread of scores, and how much the std varies from response to response
(a std that is the same for every response tells nothing about any of them).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    """Train head ensembles on cached HH features; print plain vs centred combination."""
    import numpy as np

    from bench.hh_data import cached_features
    from rm_engine.config import TrainConfig
    from rm_engine.head.train import PairArrays, train_heads
    from rm_engine.normalize import combine_members, member_centers
    from rm_engine.training import split_pairs

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", default="/tmp/rmstudio-bench")
    ap.add_argument("--members", type=int, default=5)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--features", default="rich")
    a = ap.parse_args()
    pairs, feats = cached_features(a.home, (a.features,))
    X = feats[a.features]
    out = []
    for seed in [int(x) for x in a.seeds.split(",")]:
        sp = split_pairs(pairs, 0.2, seed)
        fit = split_pairs(sp["train"], 0.15, seed + 1000)  # early stopping on an inner split, as the engine does
        arr = lambda ps: PairArrays.build([p.chosen_id for p in ps], [p.rejected_id for p in ps])  # noqa: E731
        ho = arr(sp["val"])
        res = train_heads(X, arr(fit["train"]), TrainConfig(ensemble=a.members, weight_decay=1e-2, seed=seed),
                          val=arr(fit["val"]))
        S = res.head.score(X).astype(np.float64)
        centers = member_centers(S)
        row = {"seed": seed, "members": a.members, "held_out_pairs": len(ho),
               "center_spread": float(np.std(centers)), "member_score_std": float(np.mean(S.std(axis=0)))}
        accs = []
        for name, c in (("plain", None), ("centred", centers)):
            raw, std = combine_members(S, c)
            accs.append(float(np.mean(raw[ho.ci] > raw[ho.ri])))
            row[f"{name}_std_mean"] = float(std.mean())
            row[f"{name}_std_cv"] = float(std.std() / std.mean())  # relative variation over responses
        assert accs[0] == accs[1], accs
        row["held_out_accuracy"] = accs[0]
        out.append(row)
        print(json.dumps(row), flush=True)
    keys = [k for k in out[0] if k not in ("seed", "members", "held_out_pairs")]
    print(json.dumps({"mean": {k: round(float(np.mean([r[k] for r in out])), 4) for k in keys}}), flush=True)


if __name__ == "__main__":
    main()
