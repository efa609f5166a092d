#!/usr/bin/env python
"""Automatic feature-cache compaction: full merges vs tiered merges (``rm_engine.head.cache_admin.pick_tier``).

A cache that already holds a large shard (e.g. 20,000 vectors from a first extraction) receives many small writes
(retrains meeting a few new texts each); past ``AUTO_COMPACT_SHARDS`` shards a write compacts. Both policies run
here on real files in the same process, and the script prints the bytes written by compaction, the time spent in
``put_many`` and the ratios full / tiered.

    python bench/cache_compaction.py [--base 20000] [--puts 640] [--per-put 20] [--dim 384]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from db.config import Settings
from rm_engine.head import cache_admin, features
from rm_engine.head.features import FeatureCache


def run(policy: str, args: argparse.Namespace) -> dict[str, float]:
    """One cache from scratch: a base shard, then ``args.puts`` small writes; compaction bytes and put time."""
    written = {"bytes": 0}
    real_write = cache_admin._write_shard

    def counting_write(directory, keys, vecs, mtime):
        out = real_write(directory, keys, vecs, mtime)
        written["bytes"] += out.stat().st_size
        return out

    real_compact = cache_admin.compact
    cache_admin._write_shard = counting_write
    features.compact = (lambda target, tiered=False: real_compact(target, tiered=policy == "tiered"))
    rng = np.random.default_rng(0)
    try:
        with tempfile.TemporaryDirectory() as home:
            cache = FeatureCache(Settings(home=Path(home), db_url="sqlite://"), SimpleNamespace(fingerprint="fp"),
                                 max_length=64)
            cache.put_many([f"base-{i}" for i in range(args.base)], rng.standard_normal((args.base, args.dim)))
            t0 = time.perf_counter()
            for p in range(args.puts):
                keys = [f"p{p}-{j}" for j in range(args.per_put)]
                cache.put_many(keys, rng.standard_normal((args.per_put, args.dim)))
            secs = time.perf_counter() - t0
            shards = len(cache_admin.shard_paths(cache.dir))
            n = len(FeatureCache(Settings(home=Path(home), db_url="sqlite://"), SimpleNamespace(fingerprint="fp"),
                                 max_length=64))
    finally:
        cache_admin._write_shard = real_write
        features.compact = real_compact
    assert n == args.base + args.puts * args.per_put, (policy, n)
    return {"compaction_mb_written": written["bytes"] / 2**20, "put_seconds": secs, "shards_at_end": shards}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=int, default=20000)
    ap.add_argument("--puts", type=int, default=640)
    ap.add_argument("--per-put", type=int, default=20)
    ap.add_argument("--dim", type=int, default=384)
    args = ap.parse_args(argv)
    full, tiered = run("full", args), run("tiered", args)
    out = {"args": vars(args), "auto_compact_shards": features.AUTO_COMPACT_SHARDS, "full": full, "tiered": tiered,
           "bytes_ratio_full_over_tiered": full["compaction_mb_written"] / max(tiered["compaction_mb_written"], 1e-9),
           "time_ratio_full_over_tiered": full["put_seconds"] / max(tiered["put_seconds"], 1e-9)}
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
