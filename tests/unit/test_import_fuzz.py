"""Property-based fuzzing of every importer: malformed JSON/CSV/gzip, wrong types, huge fields, odd encodings,
random bytes. Always a clear ``FormatError`` (or ``RowError``s under ``skip_invalid``) or a clean import, never
another exception, and never a partial write: the database changes by exactly what the report says."""
from __future__ import annotations

import csv
import gzip
import io
import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from db.formats import FormatError
from db.importer import import_file, preview
from db.models import Annotator, Comparison, Label, Prompt, Ranking, RankingItem, Response

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
ERROR_LINE = re.compile(r"^[^\n]+:\d+: field '[^'\n]*': [^\n]+$")

ODD = st.sampled_from(["", " ", "a\u0000b", "\ud800", "x" * 100_000, "é中🙂\u200b", "\n\nHuman: hi\n\nAssistant: yo", "1e400"])
TEXT = st.one_of(st.text(max_size=20), ODD)
ANY = st.one_of(
    TEXT, st.none(), st.booleans(), st.integers(-3, 10**30), st.floats(allow_nan=True, allow_infinity=True),
    st.lists(TEXT, max_size=3), st.dictionaries(st.text(max_size=4), TEXT, max_size=2),
)
WINNER = st.one_of(st.sampled_from(["a", "b", "tie", "both_bad", "A", "model_b", "c", -1, 1, 0]), ANY)
MSGS = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", 3]), "content": TEXT}), max_size=3)


def maybe(strategy, other=ANY):
    """Mostly a sensible value, sometimes anything."""
    return st.one_of(strategy, strategy, other)


def record(fields: dict) -> st.SearchStrategy[dict]:
    """A record with each field sensible, wrong or missing."""
    return st.fixed_dictionaries({}, optional={k: maybe(v) for k, v in fields.items()})


PROVENANCE = {"source": st.sampled_from(["expert", "crowd", "ai", "robot"]), "annotator": TEXT,
              "category": TEXT, "strength": st.sampled_from([1, 2, 3, None]), "split": st.sampled_from(["train", "test", "dev"]),
              "extra": st.dictionaries(st.text(max_size=4), ANY, max_size=2)}
FUZZED = {
    "comparisons": record({"prompt": TEXT, "response_a": TEXT, "response_b": TEXT, "winner": WINNER, "model_a": TEXT,
                           "history": MSGS, **PROVENANCE}),
    "trl": record({"prompt": st.one_of(TEXT, MSGS), "chosen": st.one_of(TEXT, MSGS), "rejected": st.one_of(TEXT, MSGS), **PROVENANCE}),
    "hh-rlhf": record({
        "chosen": st.builds(lambda a, b: f"\n\nHuman: {a}\n\nAssistant: {b}", TEXT, TEXT),
        "rejected": st.builds(lambda a, b: f"\n\nHuman: {a}\n\nAssistant: {b}", TEXT, TEXT),
    }),
    "rankings": record({"prompt": TEXT, "responses": st.one_of(st.lists(TEXT, max_size=4), st.dictionaries(TEXT, TEXT, max_size=4)),
                        "ranking": st.one_of(st.lists(st.integers(-1, 5), max_size=4), st.lists(TEXT, max_size=4)), **PROVENANCE}),
    "unlabeled": record({"prompt": TEXT, "responses": st.one_of(st.lists(TEXT, max_size=4), st.dictionaries(TEXT, TEXT, max_size=4)),
                         "category": TEXT}),
    "mapped": record({"question": TEXT, "answer_a": TEXT, "answer_b": TEXT, "pref": WINNER, "note": ANY}),
}
# Well-formed records (small alphabet, so that prompts and responses repeat and deduplication is exercised).
WORD = st.text(alphabet="abcé中 ", min_size=1, max_size=6).filter(lambda t: t.strip())
VALID = {
    "comparisons": st.builds(lambda p, a, b, w, who: {"prompt": p, "response_a": a, "response_b": a + b, "winner": w, "annotator": who},
                             WORD, WORD, WORD, st.sampled_from(["a", "b", "tie", "both_bad"]), WORD),
    "trl": st.builds(lambda p, a, b: {"prompt": p, "chosen": a, "rejected": a + b}, WORD, WORD, WORD),
    "hh-rlhf": st.builds(lambda p, a, b: {"chosen": f"\n\nHuman: {p}\n\nAssistant: {a}", "rejected": f"\n\nHuman: {p}\n\nAssistant: {a}{b}"},
                         WORD, WORD, WORD),
    "rankings": st.builds(lambda p, rs: {"prompt": p, "responses": rs, "ranking": list(range(len(rs), 0, -1))},
                          WORD, st.lists(WORD, min_size=2, max_size=4, unique=True)),
    "unlabeled": st.builds(lambda p, rs: {"prompt": p, "responses": rs}, WORD, st.lists(WORD, min_size=1, max_size=4, unique=True)),
    "mapped": st.builds(lambda p, a, b, w: {"question": p, "answer_a": a, "answer_b": a + b, "pref": w}, WORD, WORD, WORD, st.sampled_from([-1, 1, 0])),
}
RECORDS = {k: st.one_of(VALID[k], VALID[k], FUZZED[k]) for k in FUZZED}
MAPPED = {"mapping": "prompt=question,a=answer_a,b=answer_b,winner=pref", "winner_values": "-1:a,1:b,0:tie"}


def counts(db) -> dict[str, int]:
    with db.read() as s:
        return {m.__tablename__: s.scalar(select(func.count()).select_from(m)) for m in
                (Prompt, Response, Comparison, Label, Ranking, RankingItem, Annotator)}


def to_jsonl(rows: list[dict], ascii_only: bool) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=ascii_only) + "\n" for r in rows).encode("utf-8", "surrogatepass")


def to_csv(rows: list[dict]) -> bytes:
    cols = sorted({k for r in rows for k in r}) or ["prompt"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    for r in rows:
        w.writerow({k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in r.items()})
    return buf.getvalue().encode("utf-8", "surrogatepass")


def mangle(data: bytes, how: str, where: int) -> bytes:
    if how == "gzip":
        return gzip.compress(data)
    if how == "gzip-truncated":
        z = gzip.compress(data)
        return z[: max(2, len(z) * where // 100)]
    if how == "flip" and data:
        i = len(data) * where // 101
        return data[:i] + bytes([data[i] ^ 0xA5]) + data[i + 1:]
    if how == "cut" and data:
        return data[: len(data) * where // 100]
    if how == "utf16":
        return data.decode("utf-8", "replace").encode("utf-16")
    if how == "latin1":
        return data.decode("utf-8", "replace").encode("latin-1", "replace")
    return data


def check(db, data: bytes, *, filename: str, skip_invalid: bool, **kw) -> None:
    before = counts(db)
    try:
        rep = import_file(db, data, filename=filename, skip_invalid=skip_invalid, **kw)
    except FormatError as exc:
        assert ERROR_LINE.match(str(exc)), str(exc)
        assert counts(db) == before  # nothing written
        return
    after = counts(db)
    assert after["labels"] - before["labels"] == rep.labels_added
    assert after["rankings"] - before["rankings"] == rep.rankings_added
    assert after["prompts"] - before["prompts"] == rep.prompts_added
    assert after["responses"] - before["responses"] == rep.responses_added
    assert after["comparisons"] - before["comparisons"] == rep.comparisons_added
    assert rep.records + len(rep.skipped) >= rep.labels_added + rep.rankings_added
    assert skip_invalid or not rep.skipped
    for e in rep.skipped:
        assert ERROR_LINE.match(str(e)), str(e)


@pytest.mark.parametrize("fmt", sorted(RECORDS))
def test_fuzz_each_importer(sqlite_db, fmt):
    @FUZZ
    @given(
        rows=st.lists(RECORDS[fmt], min_size=0, max_size=4),
        container=st.sampled_from(["jsonl", "jsonl-ascii", "csv"]),
        how=st.sampled_from(["none", "none", "none", "gzip", "gzip-truncated", "flip", "cut", "utf16", "latin1"]),
        where=st.integers(0, 100),
        skip_invalid=st.booleans(),
        forced=st.booleans(),
    )
    def run(rows, container, how, where, skip_invalid, forced):
        data = to_csv(rows) if container == "csv" else to_jsonl(rows, container == "jsonl-ascii")
        kw = dict(MAPPED) if fmt == "mapped" else {"format": fmt if forced else None}
        name = "f.csv" if container == "csv" else "f.jsonl"
        check(sqlite_db, mangle(data, how, where), filename=name, skip_invalid=skip_invalid, **kw)

    run()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(rows=st.lists(st.one_of(RECORDS["comparisons"], RECORDS["rankings"]), max_size=4), skip_invalid=st.booleans())
def test_fuzz_postgres(pg_db, rows, skip_invalid):
    """PostgreSQL is stricter than SQLite (NUL bytes, column lengths): still never a partial write."""
    check(pg_db, to_jsonl(rows, True), filename="f.jsonl", skip_invalid=skip_invalid)


@FUZZ
@given(data=st.binary(max_size=300), name=st.sampled_from(["x.jsonl", "x.csv", "x.parquet", "x.json", "x.gz", "upload"]),
       skip_invalid=st.booleans())
def test_fuzz_random_bytes(sqlite_db, data, name, skip_invalid):
    check(sqlite_db, data, filename=name, skip_invalid=skip_invalid)
    p = preview(data, filename=name)  # never raises either
    assert p.n_records + p.n_errors >= 0 and all(ERROR_LINE.match(str(e)) for e in p.errors)


def test_bad_row_after_good_ones_writes_nothing(sqlite_db):
    """All or nothing also when the bad row comes last, and under --skip-invalid only the bad row is left out."""
    good = [{"prompt": f"p{i}", "response_a": "a", "response_b": "b", "winner": "a"} for i in range(250)]
    data = to_jsonl(good + [{"prompt": "p", "response_a": "a", "response_b": "b", "winner": "nobody"}], True)
    before = counts(sqlite_db)
    with pytest.raises(FormatError, match=r"^bulk.jsonl:251: field 'winner'"):
        import_file(sqlite_db, data, filename="bulk.jsonl")
    assert counts(sqlite_db) == before
    seen: list[tuple[int, int]] = []
    rep = import_file(sqlite_db, data, filename="bulk.jsonl", skip_invalid=True, progress=lambda d, t: seen.append((d, t)))
    assert rep.labels_added == 250 and [str(e) for e in rep.skipped] == [
        "bulk.jsonl:251: field 'winner': unknown winner 'nobody': expected a, b, tie or both_bad"
    ]
    assert seen[0] == (0, 250) and seen[-1] == (250, 250) and len(seen) >= 3  # batches report progress
