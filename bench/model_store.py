"""What database copies of model versions cost (``rm_engine/versions/model_store.py``), by hand, not in CI.

For version folders of several sizes (random safetensors weights, as a fine-tune writes them), on a real database:

* publish: writing the folder (``registry.commit_dir``: hashes + fsync + rename, the baseline) vs also packing it
  and storing the copy in one transaction (what ``train_and_publish`` adds with ``RMSTUDIO_MODELS_IN_DB``);
* first load on another machine: restoring the folder from the database (fetch, unzip, verify, rename) vs the
  verification every load does anyway (``registry.verify_version_dir``, the baseline).

    python bench/model_store.py [--db URL] [--sizes-mb 1,90,400] [--repeat 3]

Default database: a fresh PostgreSQL database on ``RMSTUDIO_TEST_PG_URL`` (127.0.0.1:5432/test), dropped after
(``bench/load.py``'s ``pg_database``).
Prints one JSON and a table; ratios are against the baselines measured in the same run.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from safetensors.numpy import save_file
from sqlalchemy.engine import make_url

from db.config import Settings
from db.session import Database
from db.versions import get_archive, insert_version
from rm_engine.versions import model_store
from rm_engine.versions.registry import commit_dir, stage_dir, verify_version_dir

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load import pg_database


def _write_folder(settings: Settings, mb: float, rng: np.random.Generator) -> str:
    tmp = stage_dir(settings)
    n = max(1, int(mb * 2**20 / 4))
    save_file({"weight": rng.standard_normal(n, dtype=np.float32)}, str(tmp / "model.safetensors"))
    (tmp / "config.json").write_text(json.dumps({"members": 1}))
    return commit_dir(settings, tmp)


def run(url: str, sizes: list[float], repeat: int) -> list[dict[str, float]]:
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        here = Settings(home=Path(a), db_url=url, models_in_db="on")
        there = Settings(home=Path(b), db_url=url, models_in_db="on")
        db = Database(url)
        try:
            for mb in sizes:
                write, copy, verify, restore = [], [], [], []
                for _ in range(repeat):
                    t0 = time.perf_counter()
                    rel = _write_folder(here, mb, rng)
                    t1 = time.perf_counter()
                    packed = model_store.copy_for_db(here, rel)
                    with db.write() as s:
                        vid = insert_version(s, mode="finetune", backbone="bench", path=rel, config={}).id
                        model_store.store_copy(s, vid, packed)
                    t2 = time.perf_counter()
                    verify_version_dir(here, rel, vid)
                    t3 = time.perf_counter()
                    with db.read() as s:
                        data, _ = get_archive(s, vid)
                    model_store.restore(there, rel, vid, data)
                    verify_version_dir(there, rel, vid)  # the load that follows a restore verifies again
                    t4 = time.perf_counter()
                    write.append(t1 - t0)
                    copy.append(t2 - t1)
                    verify.append(t3 - t2)
                    restore.append(t4 - t3)
                m = statistics.median
                rows.append({"size_mb": mb, "write_s": m(write), "copy_s": m(copy), "publish_ratio":
                             (m(write) + m(copy)) / m(write), "verify_s": m(verify), "restore_s": m(restore),
                             "first_load_ratio": m(restore) / m(verify)})
        finally:
            db.dispose()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", help="a SQLAlchemy URL (default: a fresh PostgreSQL database, dropped after)")
    ap.add_argument("--sizes-mb", default="1,90,400")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    url, drop = (args.db, None) if args.db else pg_database()
    try:
        rows = run(url, [float(x) for x in args.sizes_mb.split(",")], args.repeat)
    finally:
        if drop is not None:
            drop()
    print(json.dumps({"database": make_url(url).get_backend_name(), "rows": rows}, indent=2))
    heads = ("write s", 8), ("+copy s", 8), ("publish x", 9), ("verify s", 9), ("restore s", 9), ("1st load x", 10)
    print("\n" + f"{'MB':>6} " + " ".join(f"{h:>{w}}" for h, w in heads))
    for r in rows:
        print(f"{r['size_mb']:>6.0f} {r['write_s']:>8.3f} {r['copy_s']:>8.3f} {r['publish_ratio']:>9.2f} "
              f"{r['verify_s']:>9.3f} {r['restore_s']:>9.3f} {r['first_load_ratio']:>10.2f}")


if __name__ == "__main__":
    main()
