"""CI-sized load: several labeler processes submit through the Label page's code path while a dashboard
reader polls and a worker retrains, on SQLite and PostgreSQL. Every acknowledged label must be stored exactly
once with its source and annotator, and no error may reach a labeler. The long run is ``bench/load.py``."""
from __future__ import annotations

from pathlib import Path

import pytest

from db.session import Database
from tests.integration import procs

N_LABELERS = 4
N_LABELS = 30


def test_concurrent_labelers_and_reader_lose_nothing(any_db: Database, tmp_path: Path) -> None:
    procs.seed_comparisons(any_db, N_LABELS + 5)
    logs: dict[str, tuple[Path, str]] = {}
    children = []
    for i in range(N_LABELERS):
        name, source = f"lab{i}<b>", procs.SOURCES[i % 3]
        log = tmp_path / f"lab{i}.jsonl"
        logs[name] = (log, source)
        children.append(procs.spawn_role(
            "labeler", "--name", name, "--n", str(N_LABELS), "--log", str(log), "--source", source,
            "--url", any_db.url, out_dir=tmp_path, name=f"lab{i}",
        ))
    stop = tmp_path / "stop"
    rlog = tmp_path / "reader.jsonl"
    reader = procs.spawn_role(
        "reader", "--seconds", "60", "--interval-ms", "20", "--log", str(rlog), "--stop-file", str(stop),
        "--url", any_db.url, out_dir=tmp_path, name="reader",
    )
    codes = procs.wait_all(children, timeout=120)
    stop.touch()
    assert procs.wait_all([reader], timeout=30) == [0], (tmp_path / "reader.out").read_text()[-2000:]
    assert codes == [0] * N_LABELERS, [(tmp_path / f"lab{i}.out").read_text()[-2000:] for i in range(N_LABELERS)]

    audit = procs.audit_labels(any_db, logs)
    assert audit.ok, audit.summary()
    assert len(audit.acked) == N_LABELERS * N_LABELS
    done = [e for e in procs.read_log(rlog) if e["ev"] == "done"][0]
    assert done["n_errors"] == 0, done["errors"]
    assert done["reads"] > 10
    if any_db.is_sqlite:
        assert procs.sqlite_integrity(procs.sqlite_path(any_db.url)) == "ok"


def test_resubmitting_the_same_keys_adds_nothing(any_db: Database, tmp_path: Path) -> None:
    """Two processes replaying one labeler's keys at once (double clicks, retries): each label exists once."""
    procs.seed_comparisons(any_db, 5, hostile=False)
    log_a, log_b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    kids = [
        procs.spawn_role("labeler", "--name", "ann", "--n", "25", "--fixed", "--log", str(p), "--url", any_db.url,
                         out_dir=tmp_path, name=p.stem)
        for p in (log_a, log_b)
    ]
    assert procs.wait_all(kids, timeout=90) == [0, 0]
    created = [e["created"] for p in (log_a, log_b) for e in procs.read_log(p) if e["ev"] == "ok"]
    audit = procs.audit_labels(any_db, {"ann": (log_a, "crowd")})
    assert audit.ok, audit.summary()  # includes comparisons.label_count == its labels (no double count)
    assert len(created) == 50 and sum(created) == 25  # exactly one of the two submissions of each key created it
    with any_db.read() as s:
        from sqlalchemy import func, select

        from db.models import Label

        assert s.scalar(select(func.count()).select_from(Label)) == 25
