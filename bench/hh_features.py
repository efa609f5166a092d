"""Compute (and cache) MiniLM ``rich`` features for every HH-harmless response; run once, in the background:

    nice -n 10 python bench/hh_features.py --home /tmp/rmstudio-bench

The cache lives under ``<home>/cache/features``; later head trainings on the same texts reuse it.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    """Extract features for all pairs, printing progress and throughput."""
    import torch

    from bench.hh_data import load_hh
    from db.config import Settings
    from rm_engine.backbone import resolve_backbone
    from rm_engine.head.features import FeatureExtractor

    ap = argparse.ArgumentParser()
    ap.add_argument("--home", default="/tmp/rmstudio-bench")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--features", default="rich")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    s = Settings.from_env({"RMSTUDIO_HOME": a.home})
    pairs = load_hh()
    rows = [(p.prompt, p.history, t) for p in pairs for t in (p.chosen, p.rejected)]
    fx = FeatureExtractor(s, resolve_backbone("minilm", s), max_length=a.max_length, batch_size=32)
    t0 = time.time()
    last = [0.0]

    def prog(ev: dict) -> None:
        if time.time() - last[0] > 20:
            last[0] = time.time()
            print(f"{ev['step']}/{ev['total']} texts, {ev['step'] / (time.time() - t0):.1f} texts/s", flush=True)

    X = fx.features_for(rows, a.features, progress=prog)
    print(f"done: {X.shape} in {time.time() - t0:.0f} s; cache {fx.cache.dir} ({len(fx.cache)} texts)", flush=True)


if __name__ == "__main__":
    main()
