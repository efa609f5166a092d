"""How steady is an accuracy estimate? One validation split vs K-fold cross-validation, HH-harmless, head mode.

The same training configuration is measured under ten seeds two ways, in one process on the same cached features:

* ``single split`` (the baseline): what every trained version reports, validation accuracy on 20% of the prompts
  (``rmstudio train``; the seed picks the held-out prompts and the head's initialisation);
* ``K-fold CV``: ``rm_engine.crossval.cross_validate`` (``rmstudio cv``), every pair held out once, pooled.

It prints each way's mean and spread over the seeds (the spread is what a researcher comparing two settings has to
beat), the ratio of the spreads, and the seconds per estimate. By hand, not in CI:

    python bench/cv_noise.py [--home /tmp/rmstudio-bench-cv] [--seeds 10] [--folds 10] [--json]

The first run imports ``hh_harmless_1300.jsonl.gz`` (HH-RLHF harmless-base, first 1,300 pairs; read from the
real-data folder beside the checkout) into ``--home`` and embeds its texts with the bundled MiniLM (~90 s on 2
cores); later runs reuse the feature cache.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data" / "hh_harmless_1300.jsonl.gz"


def main(argv: list[str] | None = None) -> dict:
    from db.config import Settings
    from db.importer import import_file
    from db.pairs import training_pairs
    from db.session import Database
    from rm_engine.config import TrainConfig
    from rm_engine.crossval import cross_validate
    from rm_engine.training import fit_pairs, load_pair_set

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--home", default="/tmp/rmstudio-bench-cv")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--folds", type=int, default=10)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    home = Path(args.home)
    home.mkdir(parents=True, exist_ok=True)
    settings = Settings(home=home, db_url=f"sqlite:///{home / 'rmstudio.db'}")
    db = Database(settings.db_url)
    try:
        with db.read() as s:
            empty = not training_pairs(s).pairs
        if empty:
            import_file(db, DATA)
        cfg = TrainConfig()  # the defaults: head mode, rich features, linear head
        ps = load_pair_set(db, cfg)
        runs: dict[str, list[tuple[float, float]]] = {"single split": [], f"{args.folds}-fold CV": []}
        for seed in range(args.seeds):
            c = cfg.replace(seed=seed)
            t0 = time.perf_counter()
            _, metrics, _, _ = fit_pairs(settings, c, ps)
            runs["single split"].append((metrics["val"]["accuracy"], time.perf_counter() - t0))
            t0 = time.perf_counter()
            cv = cross_validate(settings, c, ps, args.folds)
            runs[f"{args.folds}-fold CV"].append((cv["accuracy"], time.perf_counter() - t0))
            print(f"seed {seed}: single split {runs['single split'][-1][0]:.3f}, CV {cv['accuracy']:.3f}", flush=True)
    finally:
        db.dispose()
    out = {"pairs": len(ps.pairs), "seeds": args.seeds, "folds": args.folds, "config": "head mode defaults"}
    for name, rs in runs.items():
        accs = [a for a, _ in rs]
        out[name] = {"mean": statistics.mean(accs), "stdev": statistics.stdev(accs), "min": min(accs),
                     "max": max(accs), "seconds_median": statistics.median(t for _, t in rs)}
    single, cvr = out["single split"], out[f"{args.folds}-fold CV"]
    out["stdev_ratio_single_over_cv"] = single["stdev"] / cvr["stdev"] if cvr["stdev"] else None
    out["seconds_ratio_cv_over_single"] = cvr["seconds_median"] / single["seconds_median"]
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"\n{out['pairs']} pairs, {args.seeds} seeds, head-mode defaults")
        print(f"{'estimate':<16}{'mean':>8}{'stdev':>8}{'min':>8}{'max':>8}{'s/estimate':>12}")
        for name in runs:
            r = out[name]
            print(f"{name:<16}{r['mean']:>8.3f}{r['stdev']:>8.3f}{r['min']:>8.3f}{r['max']:>8.3f}"
                  f"{r['seconds_median']:>12.2f}")
        print(f"spread, single split / CV: {out['stdev_ratio_single_over_cv']:.1f}x; "
              f"time, CV / single split: {out['seconds_ratio_cv_over_single']:.1f}x")
    return out


if __name__ == "__main__":
    main()
