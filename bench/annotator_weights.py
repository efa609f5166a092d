"""Does weighing labels by annotator reliability help? HH-harmless with simulated annotators, by hand, not in CI.

Each of the 1,300 HH-harmless pairs gets three labels from annotators drawn out of a pool; an annotator keeps the
HH label with their own accuracy and flips it otherwise. A linear head on the cached MiniLM rich features
(``bench/hh_features.py`` fills the cache) is trained on the labels of the training prompts (early stopping on an
inner split of them, their labels as noisy as the rest) and scored on the held-out prompts' original HH labels:

* ``all``: every label, weight 1 (the baseline);
* ``majority``: one label per pair, the majority of its three;
* ``weighted``: every label, weighed by ``rm_engine.quality.annotators`` (what ``--annotator-weights`` does);
* ``oracle``: the labels of the annotators simulated as random dropped (knowing what no one knows).

    python bench/annotator_weights.py --home /tmp/rmstudio-bench [--seeds 0,1,2,3,4]

Pools: ``spam`` (four careful annotators at 0.9 and two at random: a third of the labels are noise) and
``honest`` (0.95, 0.85, 0.75, 0.7: nobody to drop, weighting must not hurt). Prints one JSON and a table; the
differences are against ``all`` in the same run.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

POOLS = {
    "spam": {"c1": 0.9, "c2": 0.9, "c3": 0.9, "c4": 0.9, "rnd1": 0.5, "rnd2": 0.5},
    "honest": {"h1": 0.95, "h2": 0.85, "h3": 0.75, "h4": 0.7},
}


def _labels(pairs: list, pool: dict[str, float], rng: random.Random) -> list[tuple[int, str, bool]]:
    """``(pair index, annotator, keeps the HH label)`` for three annotators per pair."""
    out = []
    for i in range(len(pairs)):
        for name in rng.sample(sorted(pool), 3):
            out.append((i, name, rng.random() < pool[name]))
    return out


def main(argv: list[str] | None = None) -> dict:
    import numpy as np

    from bench.hh_data import cached_features
    from rm_engine.config import TrainConfig
    from rm_engine.head.train import PairArrays, train_heads
    from rm_engine.quality.annotators import annotator_quality, quality_weights
    from rm_engine.training import split_pairs

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", default="/tmp/rmstudio-bench")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    args = ap.parse_args(argv)
    pairs, feats = cached_features(args.home, ("rich",))
    X = feats["rich"]
    index = {id(p): i for i, p in enumerate(pairs)}
    report: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "pools": POOLS, "runs": []}

    def arrays(labels: list[tuple[int, str, bool]], weights: dict[str, float]) -> PairArrays:
        ci = [2 * i if keep else 2 * i + 1 for i, _, keep in labels]
        ri = [2 * i + 1 if keep else 2 * i for i, _, keep in labels]
        return PairArrays.build(ci, ri, weight=[weights.get(a, 1.0) for _, a, _ in labels])

    for pool_name, pool in POOLS.items():
        for seed in [int(s) for s in args.seeds.split(",")]:
            rng = random.Random(seed)
            sp = split_pairs(pairs, 0.2, seed)
            inner = split_pairs(sp["train"], 0.15, seed + 1000)
            fit_ids = {index[id(p)] for p in inner["train"]}
            stop_ids = {index[id(p)] for p in inner["val"]}
            held = sp["val"]
            ho_c = np.array([2 * index[id(p)] for p in held])
            labels = [x for x in _labels(pairs, pool, rng) if x[0] in fit_ids | stop_ids]
            records = [{"item": i, "rater": a, "outcome": "a" if keep else "b", "source": "crowd"}
                       for i, a, keep in labels]
            quality = annotator_quality(records)
            by_pair: dict[int, list[bool]] = {}
            for i, _, keep in labels:
                by_pair.setdefault(i, []).append(keep)
            majority = [(i, "majority", sum(v) >= 2) for i, v in by_pair.items()]
            conditions = {
                "all": (labels, {}),
                "majority": (majority, {}),
                "weighted": (labels, quality_weights(quality)),
                "oracle": ([x for x in labels if pool[x[1]] > 0.5], {}),
            }
            row = {"pool": pool_name, "seed": seed, "estimated": {q.annotator: round(q.accuracy, 3) for q in quality},
                   "weights": {q.annotator: round(q.weight, 3) for q in quality}}
            for name, (labs, w) in conditions.items():
                fit = arrays([x for x in labs if x[0] in fit_ids], w)
                stop = arrays([x for x in labs if x[0] in stop_ids], w)
                res = train_heads(X, fit, TrainConfig(head="linear", weight_decay=1e-2, seed=seed), val=stop)
                sc = res.head.score(X).mean(1)
                row[name] = float(np.mean(sc[ho_c] > sc[ho_c + 1]))
            report["runs"].append(row)
            print(json.dumps(row), flush=True)

    print(json.dumps({k: v for k, v in report.items() if k != "runs"}, indent=2))
    print(f"\n{'pool':<8}{'all':>8}{'majority':>10}{'weighted':>10}{'oracle':>8}   (held-out accuracy, mean over seeds)")
    for pool_name in POOLS:
        runs = [r for r in report["runs"] if r["pool"] == pool_name]
        means = {c: float(np.mean([r[c] for r in runs])) for c in ("all", "majority", "weighted", "oracle")}
        report[f"mean_{pool_name}"] = means
        print(f"{pool_name:<8}" + "".join(f"{means[c]:>{w}.3f}" for c, w in
                                            (("all", 8), ("majority", 10), ("weighted", 10), ("oracle", 8))))
    return report


if __name__ == "__main__":
    main()
