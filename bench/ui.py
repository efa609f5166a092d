"""UI bench: server-side time from a submitted label to the next pair rendered, and dashboard render time,
with 100,000 labels and 10,000 prompts in the database.

    python bench/ui.py                      # 10k prompts x 3 responses, 30k pairs, 100k labels; 60 submits
    python bench/ui.py --prompts 2000 --labels 20000 --submits 30   # a quick run
    python bench/ui.py --json out.json

What is timed:

* ``page``: one AppTest step of the real Label page (``app/views/label.py``): the click's callback stores the
  label (``db.labeling.submit_label`` in one write transaction) and computes the next pair, then the whole page
  script renders it (identity, progress metrics, queue summary, prompt, both responses, buttons). This is the
  server's share of "click -> next pair on screen"; the browser adds one websocket round trip.
* ``queue``: ``submit_label`` + ``next_pair`` alone, for three queue policies: every pair once (fewest labels
  first), an agreement phase (overlap 3 for half the pairs: the NOT EXISTS check does real work), and active
  learning over cached scores of all 30k responses.
* ``dashboard``: AppTest runs of ``app/views/dashboard.py`` against the same database (two model versions
  with cached scores): the first render with empty caches (``cold``: what a researcher waits for after each
  data change) and reruns with unchanged data (``warm``).

Targets: label page p95 < 150 ms, dashboard < 2 s.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


@dataclass(frozen=True)
class UIBenchConfig:
    """Sizes of the bench database and of the measurement."""

    prompts: int = 10_000
    responses_per_prompt: int = 3
    labels: int = 100_000
    annotators: int = 50
    submits: int = 60
    seed: int = 0


@dataclass
class UIBenchResult:
    """Latencies in milliseconds (p50/p95/max) per measured path."""

    config: dict[str, Any]
    seed_seconds: float
    counts: dict[str, int]
    page_ms: dict[str, float] = field(default_factory=dict)
    queue_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    dashboard_ms: dict[str, Any] | None = None
    dashboard_note: str = ""
    machine: str = ""


def pct(xs: list[float]) -> dict[str, float]:
    """p50, p95 and max of ``xs`` (milliseconds), rounded to 0.1 ms."""
    s = sorted(xs)
    p95 = s[min(len(s) - 1, int(round(0.95 * (len(s) - 1))))]
    return {"p50": round(statistics.median(s), 1), "p95": round(p95, 1), "max": round(s[-1], 1), "n": len(s)}


def seed(url: str, cfg: UIBenchConfig) -> dict[str, int]:
    """Bulk-load prompts, responses, all pairs per prompt, labels (oldest pairs first) and two scored versions."""
    from sqlalchemy import insert, text

    from db.models import Annotator, Comparison, Label, ModelVersion, Prompt, Response, ResponseScore
    from db.session import Database
    from db.store import prompt_hash, sha256

    rng = random.Random(cfg.seed)
    db = Database(url)
    now = datetime.now(timezone.utc)
    k = cfg.responses_per_prompt
    with db.write() as s:
        s.execute(insert(Annotator), [{"name": f"ann{i:03d}", "default_source": "crowd", "created_at": now}
                                      for i in range(cfg.annotators)])
        s.execute(insert(Prompt), [{"content_hash": prompt_hash(f"Prompt {i}: " + "why? " * (i % 7)), "text":
                                    f"Prompt {i}: " + "why? " * (i % 7), "category": f"cat{i % 12}",
                                    "created_at": now} for i in range(cfg.prompts)])
        pids = [r[0] for r in s.execute(text("SELECT id FROM prompts ORDER BY id"))]
        resp = []
        for pid in pids:
            for j in range(k):
                body = f"Answer {j} to prompt {pid}.\n\n```python\nprint({j})\n```\n" + "More detail. " * (j * 5)
                resp.append({"prompt_id": pid, "content_hash": sha256(body), "text": body, "created_at": now})
        s.execute(insert(Response), resp)
        by_prompt: dict[int, list[int]] = {}
        for pid, rid in s.execute(text("SELECT prompt_id, id FROM responses ORDER BY id")):
            by_prompt.setdefault(pid, []).append(rid)
        comps = [{"prompt_id": pid, "response_a_id": ids[i], "response_b_id": ids[j], "label_count": 0,
                  "created_at": now}
                 for pid, ids in by_prompt.items() for i in range(len(ids)) for j in range(i + 1, len(ids))]
        s.execute(insert(Comparison), comps)
        cids = [r[0] for r in s.execute(text("SELECT id FROM comparisons ORDER BY id"))]
        ann_ids = [r[0] for r in s.execute(text("SELECT id FROM annotators ORDER BY id"))]
        # Labels: 5 distinct annotators per pair on the oldest pairs, until cfg.labels are placed.
        per_pair = 5
        labels, counts = [], {}
        for n in range(cfg.labels):
            cid = cids[(n // per_pair) % len(cids)]
            ann = ann_ids[(n // per_pair + n % per_pair) % len(ann_ids)]
            labels.append({"comparison_id": cid, "outcome": rng.choice("ab"), "source": "crowd", "annotator_id": ann,
                           "left": rng.choice("ab"), "time_spent_ms": rng.randint(2000, 20000), "split": "train",
                           "idempotency_key": f"seed-{n}", "created_at": now - timedelta(minutes=cfg.labels - n)})
            counts[cid] = counts.get(cid, 0) + 1
        for i in range(0, len(labels), 20_000):
            s.execute(insert(Label), labels[i:i + 20_000])
        s.execute(text("CREATE TEMP TABLE _lc (id INTEGER PRIMARY KEY, n INTEGER)"))
        s.execute(text("INSERT INTO _lc (id, n) VALUES (:id, :n)"), [{"id": c, "n": n} for c, n in counts.items()])
        s.execute(text("UPDATE comparisons SET label_count = (SELECT n FROM _lc WHERE _lc.id = comparisons.id) "
                       "WHERE id IN (SELECT id FROM _lc)"))
        s.execute(text("DROP TABLE _lc"))
        rids = [r[0] for r in s.execute(text("SELECT id FROM responses"))]
        for v in range(2):
            vid = s.execute(insert(ModelVersion).values(mode="head", backbone="bench", path=f"models/bench-{v}",
                                                         config={}, data_snapshot={}, norm_stats={},
                                                         metrics={"val_accuracy": 0.6 + 0.05 * v}, n_pairs=1000,
                                                         n_labels=cfg.labels, created_at=now)).inserted_primary_key[0]
            s.execute(insert(ResponseScore), [{"model_version_id": vid, "response_id": r, "score": rng.gauss(0, 1),
                                               "std": abs(rng.gauss(0, 0.2))} for r in rids])
    with db.read() as s:
        out = {t: int(s.execute(text(f"SELECT count(*) FROM {t}")).scalar_one())
               for t in ("prompts", "responses", "comparisons", "labels", "response_scores")}
    db.dispose()
    return out


def bench_queue(url: str, annotator: str, submits: int) -> dict[str, dict[str, float]]:
    """``submit_label`` + ``next_pair`` (the work done between click and render) under three policies."""
    from db.labeling import QueuePolicy, next_pair, submit_label
    from db.session import Database

    db = Database(url)
    policies = {
        "fewest_first": QueuePolicy(target_overlap=1, agreement_share=0.0),
        "active_learning": QueuePolicy(target_overlap=1, agreement_share=0.0, active_learning=True),
        "agreement_overlap": QueuePolicy(target_overlap=1, agreement_share=0.5, agreement_overlap=6),
    }
    out = {}
    for name, pol in policies.items():
        if name == "agreement_overlap":  # make phase 1 empty so phase 2 (with NOT EXISTS work) is measured
            from sqlalchemy import text

            with db.write() as s:
                s.execute(text("UPDATE comparisons SET label_count = 1 WHERE label_count = 0"))
        with db.read() as s:
            item = next_pair(s, annotator, pol)
        times = []
        for _ in range(submits):
            t0 = time.perf_counter()
            with db.write() as s:
                submit_label(s, item, "left", annotator=annotator, source="crowd")
            with db.read() as s:
                item = next_pair(s, annotator, pol)
            times.append((time.perf_counter() - t0) * 1000)
            assert item is not None
        out[name] = pct(times)
    db.dispose()
    return out


def bench_page(annotator: str, submits: int, read_s: float = 0.3) -> dict[str, float]:
    """AppTest steps of the real Label page: click "A better", the page reruns with the next pair. Between clicks,
    ``read_s`` untimed (a labeler reading; the page draws the next pair meanwhile). AppTest runs the whole page
    script on each click, where a browser reruns only the labeling area (``bench/label_browser.py``)."""
    from streamlit.testing.v1 import AppTest

    from db.annotators import invite
    from db.session import Database

    db = Database(os.environ["RMSTUDIO_DB"])
    with db.write() as s:  # the labeler's personal link
        token = invite(s, annotator, by="bench")
    db.dispose()
    at = AppTest.from_file(str(REPO / "app" / "views" / "label.py"), default_timeout=60)
    at.query_params["invite"] = token
    at.run()
    times = []
    for _ in range(submits + 3):
        time.sleep(read_s)
        button = next(b for b in at.button if b.label == "A better")
        t0 = time.perf_counter()
        button.click().run()
        times.append((time.perf_counter() - t0) * 1000)
        if at.exception:
            raise RuntimeError(f"label page failed: {at.exception[0].message}")
    return pct(times[3:])  # the first steps warm caches


def bench_dashboard(repeats: int = 3) -> tuple[dict[str, Any] | None, str]:
    """The dashboard page: ``cold`` = a fresh session's first render (caches empty, as after every data change),
    ``warm`` = reruns of the same session with unchanged data."""
    page = REPO / "app" / "views" / "dashboard.py"
    if not page.exists():
        return None, "app/views/dashboard.py absent"
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(page), default_timeout=300)
    cold, warm = [], []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        try:
            at.run()
        except RuntimeError as exc:  # AppTest's own timeout
            return None, f"dashboard did not finish: {exc}"
        (cold if i == 0 else warm).append((time.perf_counter() - t0) * 1000)
        if at.exception:
            return None, f"dashboard raised: {at.exception[0].message[:200]}"
    return {"cold": pct(cold), "warm": pct(warm)}, f"{len(at.get('plotly_chart'))} plotly charts rendered"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=UIBenchConfig.prompts)
    ap.add_argument("--labels", type=int, default=UIBenchConfig.labels)
    ap.add_argument("--submits", type=int, default=UIBenchConfig.submits)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    cfg = UIBenchConfig(prompts=args.prompts, labels=args.labels, submits=args.submits)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory(prefix="rmstudio-uibench-") as tmp:
        os.environ["RMSTUDIO_HOME"] = tmp
        os.environ["RMSTUDIO_DB"] = url = f"sqlite:///{tmp}/bench.db"
        os.environ.pop("RMSTUDIO_RESEARCHER_TOKEN", None)
        t0 = time.perf_counter()
        counts = seed(url, cfg)
        res = UIBenchResult(asdict(cfg), round(time.perf_counter() - t0, 1), counts,
                            machine=f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
        print(f"seeded {counts} in {res.seed_seconds} s", flush=True)
        # ann007 has ~2,000 labels of its own (100k labels over 50 annotators): the worst case for "never the same pair twice".
        res.page_ms = bench_page("ann007", cfg.submits)
        print(f"label page, submit -> next pair rendered: {res.page_ms}", flush=True)
        res.dashboard_ms, res.dashboard_note = bench_dashboard()
        print(f"dashboard render: {res.dashboard_ms} ({res.dashboard_note})", flush=True)
        res.queue_ms = bench_queue(url, "ann013", cfg.submits)
        print(f"queue only (submit + next pair): {json.dumps(res.queue_ms)}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(asdict(res), indent=2))
    ok = res.page_ms["p95"] < 150 and (res.dashboard_ms is None or res.dashboard_ms["warm"]["p95"] < 2000)
    print("targets met" if ok else "TARGET MISSED (label p95 < 150 ms, dashboard < 2 s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
