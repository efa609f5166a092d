"""The bulk import path (``db/bulk.py``) stores exactly what the per-record path (``db/store.py``) stores.

The same files (slices of the files in the real-data folder plus a synthetic file with rankings, repeated keys,
categories and models filled in late, a tie, both orientations of one pair) are imported into two fresh
databases, one per path, and every table is compared row by row by content keys (ids may differ), on SQLite
and PostgreSQL. Also: all or nothing on a bad record in the middle of a large file, and a second import of the
same file adding nothing.
"""
from __future__ import annotations

import gzip
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from db.formats import FormatError
from db.importer import import_file
from db.models import Annotator, Comparison, Label, Prompt, Ranking, RankingItem, Response
from db.session import Database
from tests.conftest import PG_URL, _pg_admin_engine

TABLES = (Annotator, Prompt, Response, Comparison, Label, Ranking, RankingItem)


def _lines(path: Path, n: int | None = None) -> list[str]:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        out = [line for line in f if line.strip()]
    return out[:n] if n is not None else out


def _jsonl(rows: list[Any]) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) + "\n") for r in rows).encode("utf-8")


def _synthetic() -> bytes:
    """Comparisons, rankings and unlabeled lines exercising every rule the two paths must share (one file of
    several kinds of line: imported as format mixed)."""
    rows: list[Any] = [
        {"prompt": "Explain tides.", "responses": ["The moon.", "Gravity of moon and sun.", "Wind."]},  # unlabeled, no category
        # the pair (b, a) of the unlabeled prompt: stored orientation is swapped relative to the file
        {"prompt": "Explain tides.", "response_a": "Gravity of moon and sun.", "response_b": "The moon.", "winner": "a",
         "category": "science", "model_a": "m2", "annotator": "  ann1  ", "source": "expert", "strength": 2},
        {"prompt": "Explain tides.", "response_a": "The moon.", "response_b": "Wind.", "winner": "b", "category": "other",
         "model_a": "m1", "model_b": "m3", "annotator": "ann2", "split": "test", "time_spent_ms": 1234},
        {"prompt": "Explain tides.", "response_a": "Wind.", "response_b": "The moon.", "winner": "tie", "annotator": "ann1",
         "source": "crowd"},
        {"prompt": "Explain tides.", "response_a": "Wind.", "response_b": "Gravity of moon and sun.", "winner": "both_bad",
         "annotator": "ann3", "source": "ai", "extra": {"note": "x"}, "origin": "elsewhere"},
        # the same judgment twice in the file (same content -> same key): stored once
        {"prompt": "Say hi.", "response_a": "hi", "response_b": "hello", "winner": "a", "annotator": "ann2"},
        {"prompt": "Say hi.", "response_a": "hi", "response_b": "hello", "winner": "a", "annotator": "ann2"},
        # an explicit key repeated with different content: the first one wins, the second adds nothing at all
        {"prompt": "Keyed.", "response_a": "k1", "response_b": "k2", "winner": "b", "key": "k-1"},
        {"prompt": "Keyed other.", "response_a": "k3", "response_b": "k4", "winner": "a", "key": "k-1"},
        {"prompt": "Rank these.", "history": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
         "responses": {"gpt4": "r1", "claude": "r2", "bard": "r3"}, "ranking": ["claude", "gpt4", "bard"],
         "annotator": "ann4", "category": "rank"},
        {"prompt": "Rank these.", "history": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
         "responses": ["r3", "r2", "r4"], "ranking": [1, 1, 3], "annotator": "ann1", "split": "test"},
        {"prompt": "Rank these.", "responses": ["r3", "r2"], "ranking": [2, 1], "key": "rank-key"},  # no history: another prompt
        {"prompt": "Rank these.", "responses": ["r2", "r3"], "ranking": [1, 2], "key": "rank-key"},  # repeated key
    ]
    for i in range(450):  # several batches, with prompts and responses shared between them
        p = f"Shared prompt {i % 37}"
        rows.append({"prompt": p, "response_a": f"resp {i % 11}", "response_b": f"resp {(i * 7 + 3) % 13} x",
                     "winner": "ab"[i % 2], "annotator": f"worker{i % 5}", "category": None if i < 300 else f"cat{i % 3}",
                     "model_b": None if i < 200 else "late-model"})
    return _jsonl(rows)


def _files(data: Path) -> list[tuple[str, bytes, dict[str, Any]]]:
    vic_cmp = _lines(data / "vicuna80" / "comparisons.jsonl.gz")
    return [
        ("hh.jsonl", _jsonl(_lines(data / "hh_harmless_1300.jsonl.gz", 260)), {}),
        ("vic-responses.jsonl", _jsonl(_lines(data / "vicuna80" / "responses.jsonl", 12)), {}),
        ("vic-cmp.jsonl", _jsonl(vic_cmp[:150] + vic_cmp[-150:]), {}),
        ("lfqa.jsonl", _jsonl(_lines(data / "lfqa_expert_pairs.jsonl", 80)),
         {"mapping": "prompt=question,a=answer_a,b=answer_b,winner=overall_preference", "winner_values": "-1:a,1:b,0:tie",
          "source": "expert", "category": "lfqa"}),
        ("synthetic.jsonl", _synthetic(), {"annotator": "file-default", "format": "mixed"}),
        ("hh.jsonl", _jsonl(_lines(data / "hh_harmless_1300.jsonl.gz", 300)), {}),  # 260 again + 40 new
    ]


def snapshot(db: Database) -> dict[str, Any]:
    """Every table's rows keyed by content (hashes, idempotency keys), ids replaced by those keys.

    Ids (and so which response of a pair is stored as its ``a``) depend on the order rows were written in, which
    the bulk path chooses by key (for lock order): a pair is its two responses in content order, a label's
    verdict the winning response's content (or tie / both_bad), its displayed side the response shown first."""
    with db.read() as s:
        ann = {a.id: a.name for a in s.scalars(select(Annotator))}
        prompts = {p.id: p.content_hash for p in s.scalars(select(Prompt))}
        resp = {r.id: (prompts[r.prompt_id], r.content_hash) for r in s.scalars(select(Response))}
        sides = {c.id: {"a": resp[c.response_a_id], "b": resp[c.response_b_id]} for c in s.scalars(select(Comparison))}
        comp = {cid: tuple(sorted(v.values())) for cid, v in sides.items()}
        rank = {r.id: r.idempotency_key for r in s.scalars(select(Ranking))}
        labels = list(s.scalars(select(Label).order_by(Label.id)))
        snap = {
            "counts": {m.__tablename__: s.scalar(select(func.count()).select_from(m)) for m in TABLES},
            "annotators": {a.name: a.default_source.value for a in s.scalars(select(Annotator))},
            "prompts": {p.content_hash: (p.text, p.history, p.category, p.tags) for p in s.scalars(select(Prompt))},
            "responses": {resp[r.id]: (r.text, r.model) for r in s.scalars(select(Response))},
            "comparisons": {comp[c.id]: (prompts[c.prompt_id], c.label_count) for c in s.scalars(select(Comparison))},
            "labels": {
                l.idempotency_key: (comp[l.comparison_id], sides[l.comparison_id].get(l.outcome.value, l.outcome.value),
                                    l.strength, l.source.value, ann[l.annotator_id],
                                    sides[l.comparison_id][l.left.value] if l.left else None, l.time_spent_ms, l.split.value,
                                    l.origin, l.extra)
                for l in labels
            },
            "rankings": {
                r.idempotency_key: (prompts[r.prompt_id], r.source.value, ann[r.annotator_id], r.split.value, r.time_spent_ms,
                                    r.origin, r.extra)
                for r in s.scalars(select(Ranking))
            },
            "ranking_items": sorted((rank[i.ranking_id], resp[i.response_id], i.position, i.rank) for i in s.scalars(select(RankingItem))),
        }
        # label_count is the real number of labels of each comparison
        real = dict(s.execute(select(Label.comparison_id, func.count()).group_by(Label.comparison_id)).all())
        assert all(c.label_count == real.get(c.id, 0) for c in s.scalars(select(Comparison)))
    return snap


@pytest.fixture(params=["sqlite", "postgres"])
def two_dbs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Database, Database]]:
    """Two fresh, empty databases of one backend."""
    if request.param == "sqlite":
        dbs = [Database(f"sqlite:///{tmp_path / f'{n}.db'}") for n in ("per_record", "bulk")]
        yield dbs[0], dbs[1]
        for d in dbs:
            d.dispose()
        return
    from sqlalchemy.engine import make_url

    first = request.getfixturevalue("pg_db")  # skips (or fails under RMSTUDIO_REQUIRE_PG) without a server
    name = f"rmstudio_t_{uuid.uuid4().hex[:12]}"
    admin = _pg_admin_engine()
    with admin.connect() as c:
        c.exec_driver_sql(f'CREATE DATABASE "{name}"')
    second = Database(make_url(PG_URL).set(database=name).render_as_string(hide_password=False))
    try:
        yield first, second
    finally:
        second.dispose()
        with admin.connect() as c:
            c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def _report(rep: Any) -> dict[str, Any]:
    d = rep.to_dict()
    d.pop("seconds")
    return d


def test_bulk_equals_per_record(two_dbs, shared_data):
    old, new = two_dbs
    for name, data, kw in _files(shared_data):
        r_old = import_file(old, data, filename=name, bulk=False, **kw)
        r_new = import_file(new, data, filename=name, bulk=True, **kw)
        assert _report(r_new) == _report(r_old), name
        assert r_new.labels_added + r_new.rankings_added + r_new.duplicates > 0 or name == "vic-responses.jsonl"
    a, b = snapshot(old), snapshot(new)
    for k in a:
        assert b[k] == a[k], k
    assert a["counts"]["rankings"] == 3 and a["counts"]["ranking_items"] == 8
    # the synthetic file's late category / model were filled in, the swapped pair kept its displayed side
    assert a["prompts"][next(h for h, v in a["prompts"].items() if v[0] == "Shared prompt 5")][2] == "cat1"
    assert {v[1] for v in a["responses"].values() if v[0].endswith(" x")} >= {"late-model"}
    assert a["annotators"]["ann1"] == "expert" and "  ann1  " not in a["annotators"]


def test_bulk_bad_record_in_the_middle_changes_nothing(any_db, shared_data):
    lines = _lines(shared_data / "hh_harmless_1300.jsonl.gz", 1000)
    import_file(any_db, _jsonl(lines[:50]), filename="first.jsonl")
    before = snapshot(any_db)
    bad = lines[:600] + ['{"chosen": "\\n\\nHuman: hi\\n\\nAssistant: yo"}\n'] + lines[600:]
    with pytest.raises(FormatError, match=r"^big\.jsonl:601: field 'rejected'"):
        import_file(any_db, _jsonl(bad), filename="big.jsonl")
    assert snapshot(any_db) == before


def test_bulk_failure_inside_the_write_rolls_back(any_db, shared_data, monkeypatch):
    """A failure after some batches were written (here: in the labels insert of the 3rd batch) leaves nothing."""
    from db import bulk

    lines = _lines(shared_data / "hh_harmless_1300.jsonl.gz", 700)
    import_file(any_db, _jsonl(lines[:50]), filename="first.jsonl")
    before = snapshot(any_db)
    calls = {"n": 0}
    real = bulk.BulkWriter._labels

    def failing(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom")
        return real(self, *a, **k)

    monkeypatch.setattr(bulk.BulkWriter, "_labels", failing)
    with pytest.raises(RuntimeError, match="boom"):
        import_file(any_db, _jsonl(lines), filename="big.jsonl")
    assert calls["n"] == 3
    assert snapshot(any_db) == before


def test_bulk_second_import_adds_nothing(any_db, shared_data):
    files = [("hh.jsonl", _jsonl(_lines(shared_data / "hh_harmless_1300.jsonl.gz", 400))), ("mix.jsonl", _synthetic())]
    firsts = [import_file(any_db, data, filename=name, format="mixed" if name == "mix.jsonl" else None) for name, data in files]
    assert firsts[0].labels_added == 400 and (firsts[1].labels_added, firsts[1].rankings_added, firsts[1].duplicates) == (456, 3, 3)
    snap = snapshot(any_db)
    for (name, data), first in zip(files, firsts):
        again = import_file(any_db, data, filename=name, format="mixed" if name == "mix.jsonl" else None)
        assert (again.labels_added, again.rankings_added, again.prompts_added, again.responses_added, again.comparisons_added) == (0, 0, 0, 0, 0)
        assert again.duplicates == first.duplicates + first.labels_added + first.rankings_added
    assert snapshot(any_db) == snap


def test_bulk_spills_large_files_to_disk(sqlite_db, tmp_path, monkeypatch):
    """Beyond the in-memory limit the prepared batches go through a temporary file; same result."""
    from db import importer

    monkeypatch.setattr(importer, "_KEEP_IN_MEMORY", 100)
    rep = import_file(sqlite_db, _synthetic(), filename="mix.jsonl", format="mixed")
    assert (rep.labels_added, rep.rankings_added, rep.duplicates) == (456, 3, 3)
    other = Database(f"sqlite:///{tmp_path / 'per_record.db'}")
    try:
        import_file(other, _synthetic(), filename="mix.jsonl", format="mixed", bulk=False)
        assert snapshot(other) == snapshot(sqlite_db)
    finally:
        other.dispose()


def test_bulk_hashing_happens_before_the_write_transaction(sqlite_db, monkeypatch):
    """Parsing, hashing and checks run before the write lock is taken; under it, only the batches are written."""
    from contextlib import contextmanager

    from db import bulk, importer

    state = {"in_write": False, "prepared": 0, "parsed_in_write": 0}
    real_write, real_prepare, real_parse = sqlite_db.write, bulk.prepare_record, importer.parse_file

    @contextmanager
    def write():
        with real_write() as s:
            state["in_write"] = True
            try:
                yield s
            finally:
                state["in_write"] = False

    def prepare_record(rec, origin):
        assert not state["in_write"], "a record was hashed inside the write transaction"
        state["prepared"] += 1
        return real_prepare(rec, origin)

    def parse_file(*a, **k):
        for item in real_parse(*a, **k):
            state["parsed_in_write"] += state["in_write"]
            yield item

    monkeypatch.setattr(sqlite_db, "write", write)
    monkeypatch.setattr(bulk, "prepare_record", prepare_record)
    monkeypatch.setattr(importer, "parse_file", parse_file)
    monkeypatch.setattr(importer, "_KEEP_IN_MEMORY", 100)  # the large-file path parses twice: both before the lock
    rep = import_file(sqlite_db, _synthetic(), filename="mix.jsonl", format="mixed")
    assert rep.labels_added == 456 and state["prepared"] == 460 and state["parsed_in_write"] == 0


def test_bulk_concurrent_imports_of_one_file(any_db, shared_data):
    """Two imports of the same file at once: every label once, label_count exact, the reports add up."""
    import threading

    data = _jsonl(_lines(shared_data / "hh_harmless_1300.jsonl.gz", 300))
    reports, errors = [], []

    def run():
        try:
            reports.append(import_file(any_db, data, filename="same.jsonl"))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert sorted(r.labels_added for r in reports) == [0, 300] and sorted(r.duplicates for r in reports) == [0, 300]
    snap = snapshot(any_db)  # checks label_count against the real counts
    assert snap["counts"]["labels"] == 300 and snap["counts"]["comparisons"] == 300 and snap["counts"]["prompts"] == 300
