"""CPU benchmark of the engine (run by hand, not in CI); every number comes with the naive approach's number
from the same run, and their ratio.

    nice python bench/cpu.py [--texts 256] [--threads 2] [--pairs 1000,10000,100000] [--out bench.json]

1. Feature extraction (MiniLM-L6, real HH-harmless (prompt, response) texts when the real-data folder is present):
   unbatched (one text per forward) vs batches of 32 in random order vs batches sorted by length vs sorted +
   int8 dynamic quantization. Texts/s and ratios against unbatched and against unsorted batches.
2. Head retraining on cached features (synthetic 1536-d "rich" features for 1k / 10k / 100k pairs): seconds per
   retrain, against the naive approach of recomputing the features at every retrain (feature time estimated from
   the sorted-batch rate measured in 1).
3. Scoring throughput of a head model: one call for all responses (length-sorted batches) vs one call per
   response.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _texts(n: int, seed: int = 0) -> list[tuple[str, tuple, str]]:
    """(prompt, history, response) rows: HH-harmless when available, else synthetic of mixed lengths."""
    from bench.hh_data import DEFAULT, load_hh

    rng = random.Random(seed)
    if DEFAULT.is_file():
        rows = [(p.prompt, p.history, r) for p in load_hh() for r in (p.chosen, p.rejected)]
        rng.shuffle(rows)
        return rows[:n]
    words = "the a model reward answer question helpful safe because however therefore example".split()
    return [("question " + " ".join(rng.choices(words, k=rng.randint(5, 120))), (),
             " ".join(rng.choices(words, k=rng.randint(3, 150)))) for _ in range(n)]


def bench_features(settings, n: int) -> dict:
    """Texts/s of four extraction strategies on the same token ids."""
    from rm_engine.backbone import resolve_backbone
    from rm_engine.head.features import FeatureExtractor, TextItem

    ref = resolve_backbone("minilm", settings)
    rows = _texts(n)
    base = FeatureExtractor(settings, ref, max_length=256)
    seqs = [base.token_ids(TextItem("pr", p, tuple(h), r)) for p, h, r in rows]
    out = {"n_texts": n, "mean_tokens": sum(map(len, seqs)) / n}
    setups = {
        "unbatched": dict(batch_size=1, sort_by_length=False),
        "batched_random": dict(batch_size=32, sort_by_length=False),
        "batched_sorted": dict(batch_size=32, sort_by_length=True),
        "sorted_int8": dict(batch_size=32, sort_by_length=True, quantize=True),
    }
    for name, kw in setups.items():
        fx = FeatureExtractor(settings, ref, max_length=256, **kw)
        fx.model()  # load outside the timing
        sub = seqs if name != "unbatched" else seqs[: max(16, n // 4)]  # the slow one on a quarter
        t0 = time.perf_counter()
        fx.embed_ids(sub)
        dt = time.perf_counter() - t0
        out[name] = {"texts_per_s": len(sub) / dt, "seconds": dt, "texts": len(sub)}
        print(f"features {name:15s} {len(sub) / dt:7.1f} texts/s", flush=True)
    u, r = out["unbatched"]["texts_per_s"], out["batched_random"]["texts_per_s"]
    for name in ("batched_random", "batched_sorted", "sorted_int8"):
        out[name]["x_vs_unbatched"] = out[name]["texts_per_s"] / u
        out[name]["x_vs_random_batches"] = out[name]["texts_per_s"] / r
    return out


def bench_heads(pair_counts: list[int], feat_rate: float, dim: int = 1536) -> dict:
    """Seconds per head retrain on cached (synthetic) features vs recomputing features each time."""
    import numpy as np

    from rm_engine.config import TrainConfig
    from rm_engine.head.train import PairArrays, train_heads

    out = {}
    for n in pair_counts:
        rng = np.random.default_rng(0)
        X = rng.normal(size=(2 * n, dim)).astype(np.float32)
        w = rng.normal(size=dim)
        s = X @ w + rng.normal(scale=float(np.std(X @ w)), size=2 * n)  # noisy preferences, like real labels
        a, b = np.arange(0, 2 * n, 2), np.arange(1, 2 * n, 2)
        ci, ri = np.where(s[a] > s[b], a, b), np.where(s[a] > s[b], b, a)
        cut = int(0.8 * n)
        tr, va = PairArrays.build(ci[:cut], ri[:cut]), PairArrays.build(ci[cut:], ri[cut:])
        t0 = time.perf_counter()
        res = train_heads(X, tr, TrainConfig(epochs=300, weight_decay=0.1, patience=30), val=va)
        dt = time.perf_counter() - t0
        texts = 3 * 2 * n  # rich features: pair, response and context embeddings per response (upper bound)
        naive = texts / feat_rate + dt
        out[str(n)] = {"retrain_s": dt, "epochs": res.epochs_run, "naive_recompute_s": naive, "x_vs_recompute": naive / dt}
        print(f"head retrain {n:>7} pairs: {dt:6.2f} s ({res.epochs_run} epochs); recomputing features would take "
              f"~{naive:8.0f} s ({naive / dt:,.0f}x)", flush=True)
    return out


def bench_scoring(settings, n: int) -> dict:
    """Responses/s: one batched call vs one call per response, with a head on MiniLM."""
    import numpy as np

    from rm_engine.backbone import resolve_backbone
    from rm_engine.head.features import FeatureExtractor
    from rm_engine.head.train import EnsembleHead

    rows = _texts(n, seed=1)
    ref = resolve_backbone("minilm", settings)
    fx = FeatureExtractor(settings, ref, max_length=256)
    head = EnsembleHead("linear", 4 * fx.dim, 1)
    fx.model()
    t0 = time.perf_counter()
    batched = head.score(fx.features_for(rows, "rich", use_cache=False))
    dt_b = time.perf_counter() - t0
    k = max(8, n // 4)
    t0 = time.perf_counter()
    single = np.concatenate([head.score(fx.features_for([r], "rich", use_cache=False)) for r in rows[:k]])
    dt_s = time.perf_counter() - t0
    assert np.allclose(single[:, 0], batched[:k, 0], atol=1e-3)
    out = {"batched_per_s": n / dt_b, "one_by_one_per_s": k / dt_s, "x": (n / dt_b) / (k / dt_s)}
    print(f"scoring: batched {out['batched_per_s']:.1f} responses/s, one by one {out['one_by_one_per_s']:.1f}/s "
          f"({out['x']:.1f}x)", flush=True)
    return out


def main() -> None:
    """Run the three benchmarks and print (and optionally save) the results."""
    import torch

    from db.config import Settings

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--texts", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pairs", default="1000,10000,100000")
    ap.add_argument("--out", help="write the results as JSON here")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    home = Path(tempfile.mkdtemp(prefix="rmstudio-bench-"))
    settings = Settings.from_env({"RMSTUDIO_HOME": str(home)})
    res = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, torch threads {a.threads}",
        "torch": torch.__version__,
    }
    res["features"] = bench_features(settings, a.texts)
    res["heads"] = bench_heads([int(x) for x in a.pairs.split(",")], res["features"]["batched_sorted"]["texts_per_s"])
    res["scoring"] = bench_scoring(settings, max(32, a.texts // 2))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
