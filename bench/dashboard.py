"""Dashboard bench: render times of ``app/views/dashboard.py`` (AppTest, server side) on a large database,
cold, warm, and while labels keep arriving.

    python bench/dashboard.py                          # 10k prompts, 30k pairs, 100k labels, 60 annotators
    python bench/dashboard.py --prompts 2000 --labels 20000
    python bench/dashboard.py --json out.json

The database is built with bulk inserts (about 15 s): every prompt has 3 responses and 3 pairs; labels are
spread over random pairs by 60 annotators of the three sources (one pair in three labelled several times, so
agreement has work to do), with random outcomes and times over 30 days; 5 model versions, the newest with
cached scores of every response. Timed: a fresh server's first render (imports included), warm reruns, the
Agreement tab cold and warm, and renders after a new label (what a researcher sees while labelers work).
Target: dashboard < 2 s.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
PAGE = str(REPO / "app" / "views" / "dashboard.py")


def build(url: str, prompts: int, labels: int, seed: int = 0) -> dict[str, int]:
    """Fill an empty database (bulk inserts); returns the counts."""
    from sqlalchemy import insert, text

    from db.models import Annotator, Comparison, Label, ModelVersion, Prompt, Response, ResponseScore
    from db.session import Database

    rng = random.Random(seed)
    now = datetime.now(timezone.utc)
    db = Database(url)
    sources = ["expert", "crowd", "ai"]
    with db.write() as s:
        s.execute(insert(Annotator), [{"name": f"ann{i:02d}", "default_source": sources[i % 3], "created_at": now} for i in range(60)])
        s.execute(insert(Prompt), [{"content_hash": hashlib.sha256(f"p{i}".encode()).hexdigest(), "text": f"prompt {i} about topic {i % 50}",
                                    "category": f"cat{i % 8}", "created_at": now} for i in range(prompts)])
        s.execute(insert(Response), [{"prompt_id": i // 3 + 1, "content_hash": hashlib.sha256(f"r{i}".encode()).hexdigest(),
                                      "text": f"response {i} " * 20, "created_at": now} for i in range(prompts * 3)])
        comps = [(p + 1, p * 3 + a, p * 3 + b) for p in range(prompts) for a, b in ((1, 2), (1, 3), (2, 3))]
        s.execute(insert(Comparison), [{"prompt_id": p, "response_a_id": a, "response_b_id": b, "label_count": 0, "created_at": now}
                                       for p, a, b in comps])
        rows = []
        for i in range(labels):
            cid = rng.randrange(1, len(comps) + 1) if i % 3 else rng.randrange(1, max(2, len(comps) // 15))
            ann = rng.randrange(1, 61)
            rows.append({"comparison_id": cid, "outcome": rng.choice(["a", "a", "b", "tie", "both_bad"]), "source": sources[(ann - 1) % 3],
                         "annotator_id": ann, "split": "train", "idempotency_key": f"k{i}", "time_spent_ms": rng.randrange(1000, 30000),
                         "created_at": now - timedelta(minutes=rng.randrange(0, 60 * 24 * 30))})
        s.execute(insert(Label), rows)
        s.execute(text("UPDATE comparisons SET label_count = (SELECT count(*) FROM labels WHERE labels.comparison_id = comparisons.id)"))
        for v in range(5):
            s.add(ModelVersion(mode="head", backbone="minilm", path=f"models/v{v}", config={}, norm_stats={"mean": 0.0, "std": 1.0},
                               metrics={"train": {"accuracy": 0.7 + v / 100, "n": 1000}, "val": {"accuracy": 0.6 + v / 100, "n": 250}}))
        s.flush()
        last = s.scalar(text("SELECT max(id) FROM model_versions"))
        s.execute(insert(ResponseScore), [{"model_version_id": last, "response_id": i + 1, "score": rng.gauss(0, 1), "std": 0.1}
                                          for i in range(prompts * 3)])
    db.dispose()
    return {"prompts": prompts, "responses": prompts * 3, "comparisons": len(comps), "labels": labels, "versions": 5}


def render(tab: str | None = None) -> float:
    """One AppTest render of the dashboard (a fresh session) with ``tab`` open; seconds."""
    from streamlit.testing.v1 import AppTest

    t0 = time.perf_counter()
    at = AppTest.from_file(PAGE, default_timeout=600)
    if tab:
        at.session_state["dash_tab"] = tab
    at.run()
    if at.exception:
        raise RuntimeError(f"dashboard raised: {at.exception[0].message[:300]}")
    return time.perf_counter() - t0


def add_label(url: str, k: int) -> None:
    from db.session import Database
    from db.store import add_label as store_label

    db = Database(url)
    with db.write() as s:
        store_label(s, comparison_id=1 + k, outcome="a", source="crowd", annotator="ann01", idempotency_key=f"bench-{k}-{time.time()}")
    db.dispose()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=10_000)
    ap.add_argument("--labels", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    out: dict[str, Any] = {"load_average_start": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory(prefix="rmstudio-dashbench-") as tmp:
        os.environ["RMSTUDIO_HOME"] = tmp
        os.environ["RMSTUDIO_DB"] = url = f"sqlite:///{tmp}/bench.db"
        os.environ.pop("RMSTUDIO_RESEARCHER_TOKEN", None)
        t0 = time.perf_counter()
        out["data"] = build(url, args.prompts, args.labels)
        out["build_s"] = round(time.perf_counter() - t0, 1)
        print(f"built {out['data']} in {out['build_s']} s", flush=True)
        out["first_render_s"] = round(render(), 2)
        out["warm_s"] = [round(render(), 2) for _ in range(args.repeats)]
        out["agreement_first_s"] = round(render("Agreement"), 2)
        out["agreement_warm_s"] = [round(render("Agreement"), 2) for _ in range(args.repeats)]
        after = []
        for k in range(args.repeats):
            add_label(url, k)
            after.append((round(render(), 2), round(render("Agreement"), 2)))
        out["after_new_label_s"] = after
    out["load_average_end"] = os.getloadavg()[0]
    for k, v in out.items():
        print(f"{k}: {v}")
    worst_live = max(max(a, b) for a, b in after)
    print(f"while labels arrive: worst {worst_live:.2f} s, median warm {statistics.median(out['warm_s']):.2f} s "
          f"({'meets' if worst_live < 2 else 'misses'} the 2 s target)")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
