"""Retrain latency: from the N-th new label to a new model version and refreshed cached scores.

    python bench/retrain_latency.py --pairs 1300 10000 --repeat 3

What is timed, per dataset size, on a real SQLite file (or ``--db-url`` PostgreSQL):

1. The dataset is stored (HH-RLHF harmless pairs from ``hh_harmless_1300.jsonl.gz``, chosen preferred, source crowd) and a
   first head-mode version is trained inline, with MiniLM features already in the on-disk cache.
2. ``rmstudio worker`` runs as a separate process with its defaults (idle poll every 1 s, engine preloaded); the
   policy is min_new_labels=N (20), min_interval 0.
3. N new labels arrive one per transaction, as from the Label page. The clock starts when the N-th commits and
   stops (a) when the new version's row is visible and (b) when the rescore job that follows it has cached the
   scores of every stored response. Phases come from the job logs.

Features: "with features cached" means no backbone forward pass happens during the retrain. For 1,300 pairs the
cache holds real MiniLM-L6 features (reused from ``--feature-cache`` when it has them, else computed here once,
~5 min on 2 cores). HH has only 1,300 pairs, so the 10,000-pair set adds 8,700 variants of them (response text
suffixed with ``[variant k]``) whose cached vectors are the base texts' vectors plus small noise: the pipeline
(pairs from the database, cache lookups, head training, publishing, rescoring) does the same work as for real
texts; only the learned model is meaningless.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_CACHE = Path("/tmp/rmstudio-bench/cache")


def _history(h: tuple[tuple[str, str], ...]) -> list[dict[str, str]]:
    return [{"role": r, "content": c} for r, c in h]


def build_dataset(n_pairs: int) -> list[tuple[str, tuple[tuple[str, str], ...], str, str, int | None]]:
    """``(prompt, history, chosen, rejected, variant)`` rows: the HH pairs, then variants up to ``n_pairs``."""
    from bench.hh_data import load_hh

    base = load_hh()
    rows: list[tuple[str, tuple[tuple[str, str], ...], str, str, int | None]] = []
    k = 0
    while len(rows) < n_pairs:
        for p in base:
            if len(rows) >= n_pairs:
                break
            if k == 0:
                rows.append((p.prompt, p.history, p.chosen, p.rejected, None))
            else:
                rows.append((p.prompt, p.history, f"{p.chosen} [variant {k}]", f"{p.rejected} [variant {k}]", k))
        k += 1
    return rows


def fill_cache(settings: Any, rows: list[Any], source_cache: Path | None, log: Any) -> dict[str, float]:
    """Make sure every feature the retrain needs is cached; returns timing notes."""
    import numpy as np

    from rm_engine.backbone import resolve_backbone
    from rm_engine.head.features import FeatureCache, FeatureExtractor, items_for

    ref = resolve_backbone("minilm", settings)
    fx = FeatureExtractor(settings, ref, max_length=256)
    if source_cache is not None and source_cache.is_dir():
        src = source_cache / "features" / fx.cache.dir.name
        if src.is_dir():
            fx.cache.dir.mkdir(parents=True, exist_ok=True)
            for shard in src.glob("s-*.npz"):
                shutil.copy2(shard, fx.cache.dir / shard.name)
            log(f"copied {len(list(src.glob('s-*.npz')))} feature shards from {src}")
    real = [(p, h, t) for p, h, c, r, v in rows if v is None for t in (c, r)]
    t0 = time.time()
    fx.features_for(real, "rich", progress=None)  # computes only what the cache lacks
    notes = {"real_feature_s": round(time.time() - t0, 1)}
    cache = FeatureCache(settings, ref, max_length=256)
    rng = np.random.default_rng(0)
    keys: list[str] = []
    vecs: list[Any] = []
    for p, h, c, r, v in rows:
        if v is None:
            continue
        for text, base_text in ((c, c.rsplit(" [variant ", 1)[0]), (r, r.rsplit(" [variant ", 1)[0])):
            new_items = items_for(p, h, text, "rich")[:2]  # "pr" and "r"; the context "p" is the base's
            base_items = items_for(p, h, base_text, "rich")[:2]
            got = cache.get_many([b.key for b in base_items])
            for it, b in zip(new_items, base_items):
                x = got[b.key] + rng.normal(0, 0.02, size=got[b.key].shape).astype("float32")
                keys.append(it.key)
                vecs.append(x / np.linalg.norm(x))
    for i in range(0, len(keys), 4096):
        cache.put_many(keys[i:i + 4096], np.stack(vecs[i:i + 4096]))
    notes["synthetic_vectors"] = len(keys)
    return notes


def seed(db: Any, rows: list[Any]) -> list[tuple[int, str]]:
    """Store prompts, responses and comparisons; returns ``(comparison id, stored outcome for 'chosen wins')``."""
    from db import store

    out = []
    seen: set[int] = set()
    with db.write() as s:
        for prompt, hist, chosen, rejected, _v in rows:
            p = store.get_or_create_prompt(s, prompt, history=_history(hist) or None)
            a = store.get_or_create_response(s, p, chosen)
            b = store.get_or_create_response(s, p, rejected)
            if a.id == b.id:
                continue
            oc = store.get_or_create_comparison(s, a, b)
            if oc.comparison.id in seen:
                continue
            seen.add(oc.comparison.id)
            out.append((oc.comparison.id, oc.outcome_to_stored("a").value))
    return out


def add_labels(db: Any, pairs: list[tuple[int, str]], who: str, one_per_txn: bool) -> float:
    """Label ``pairs`` (chosen wins); returns the time the last commit returned."""
    from db import store

    def one(s: Any, cid: int, outcome: str) -> None:
        store.add_label(s, comparison_id=cid, outcome=outcome, source="crowd", annotator=who,
                        idempotency_key=f"{who}-{cid}", left="a", time_spent_ms=4000)

    if not one_per_txn:
        with db.write() as s:
            for cid, oc in pairs:
                one(s, cid, oc)
        return time.time()
    t = 0.0
    for cid, oc in pairs:
        with db.write() as s:
            one(s, cid, oc)
        t = time.time()
    return t


def wait_for(pred: Any, timeout: float, what: str) -> Any:
    end = time.time() + timeout
    while time.time() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.02)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def run_size(n_pairs: int, args: argparse.Namespace, log: Any) -> dict[str, Any]:
    """One dataset size: set up, then ``args.repeat`` timed retrains."""
    from sqlalchemy import select

    from db import jobs as jobq
    from db import policy as pol
    from db.config import Settings
    from db.models import ModelVersion
    from db.session import Database
    from rm_engine.config import TrainConfig
    from rm_engine.training import train_and_publish

    home = Path(args.home) / f"p{n_pairs}"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    env = {"RMSTUDIO_HOME": str(home)}
    if args.db_url:
        env["RMSTUDIO_DB"] = args.db_url
    os.environ.update(env)
    settings = Settings.from_env()
    db = Database(settings.db_url)
    rows = build_dataset(n_pairs)
    held = args.n_new * args.repeat
    t0 = time.time()
    notes = fill_cache(settings, rows, Path(args.feature_cache) if args.feature_cache else None, log)
    pairs = seed(db, rows)
    add_labels(db, pairs[: len(pairs) - held], "bulk", one_per_txn=False)
    with db.write() as s:
        pol.set_policy(s, enabled=True, min_new_labels=args.n_new, min_interval_s=0.0, mode="head", rescore=True)
    t1 = time.time()
    v0 = train_and_publish(db, settings, TrainConfig(mode="head", device="cpu"))
    notes["setup_s"] = round(t1 - t0, 1)
    notes["first_version_inline_s"] = round(time.time() - t1, 1)
    log(f"{n_pairs} pairs stored, first version {v0.id} in {notes['first_version_inline_s']} s")
    out_path = home / "worker.out"
    worker = subprocess.Popen(
        [sys.executable, "-m", "cli", "worker", "--device", "cpu"], cwd=REPO, env={**os.environ},
        stdout=open(out_path, "wb"), stderr=subprocess.STDOUT, start_new_session=True,  # noqa: SIM115 - the worker writes to it
    )
    runs = []
    try:
        wait_for(lambda: "engine preloaded" in out_path.read_text(errors="replace"), 300, "the worker's preload")
        last_vid = v0.id
        for rep in range(args.repeat):
            new = pairs[len(pairs) - held + rep * args.n_new: len(pairs) - held + (rep + 1) * args.n_new]
            add_labels(db, new[:-1], f"amy{rep}", one_per_txn=True)
            time.sleep(args.settle)
            t_label = add_labels(db, new[-1:], f"amy{rep}", one_per_txn=True)  # the N-th new label

            def _version(last_vid: int = last_vid) -> Any:
                with db.read() as s:
                    v = s.scalar(select(ModelVersion).where(ModelVersion.id > last_vid).order_by(ModelVersion.id))
                    return (v.id, v.job_id) if v is not None else None

            vid, job_id = wait_for(_version, 600, "a new version")
            t_version = time.time()

            def _rescored(job_id: int = job_id) -> Any:
                with db.read() as s:
                    js = [j for j in jobq.list_jobs(s, None, kinds=["rescore"]) if (j.params or {}).get("after_job") == job_id]
                    return js[0].status.value if js and js[0].status.value in ("succeeded", "failed") else None

            status = wait_for(_rescored, 600, "the rescore")
            t_scores = time.time()
            with db.read() as s:
                logs = [(r.created_at.timestamp(), r.line) for r in jobq.job_logs(s, job_id)]
                job = jobq.get_job(s, job_id)
                claimed = job.started_at.timestamp()
                created = job.created_at.timestamp()
                metrics = s.get(ModelVersion, vid).metrics
            phases = _phases(logs, t_version)
            run = {
                "to_version_s": round(t_version - t_label, 2), "to_scores_s": round(t_scores - t_label, 2),
                "enqueued_after_s": round(created - t_label, 2), "claimed_after_s": round(claimed - t_label, 2),
                "phases_s": phases, "rescore": status, "val_accuracy": metrics.get("val", {}).get("accuracy"),
                "training": {k: metrics.get("training", {}).get(k) for k in ("seconds_features", "seconds_train", "epochs_run")},
            }
            log(f"{n_pairs} pairs, run {rep + 1}: {json.dumps(run)}")
            runs.append(run)
            last_vid = vid
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        db.dispose()
    vs = [r["to_version_s"] for r in runs]
    ss = [r["to_scores_s"] for r in runs]
    return {"pairs": n_pairs, "n_new": args.n_new, "runs": runs, "median_to_version_s": statistics.median(vs),
            "median_to_scores_s": statistics.median(ss), "notes": notes}


def _phases(logs: list[tuple[float, str]], t_end: float) -> dict[str, float]:
    marks = [(t, line.split(": ", 1)[1]) for t, line in logs if line.startswith("phase: ")]
    out: dict[str, float] = {}
    for i, (t, name) in enumerate(marks):
        nxt = marks[i + 1][0] if i + 1 < len(marks) else t_end
        out[name] = round(out.get(name, 0.0) + nxt - t, 2)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, nargs="+", default=[1300, 10000])
    ap.add_argument("--n-new", type=int, default=20, help="the policy's min_new_labels (20)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--home", default="/tmp/rmstudio-bench-latency")
    ap.add_argument("--db-url", default=None, help="PostgreSQL URL (default: SQLite file in the home)")
    ap.add_argument("--feature-cache", default=str(DEFAULT_CACHE), help="a cache/ folder to copy MiniLM features from")
    ap.add_argument("--settle", type=float, default=3.0, help="pause before the N-th label (s)")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    results = {"machine": f"{os.cpu_count()} cores, load {os.getloadavg()}", "date": time.strftime("%Y-%m-%d"),
               "sizes": [run_size(n, args, log) for n in args.pairs]}
    results["load_after"] = os.getloadavg()
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
