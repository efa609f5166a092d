"""Property-based tests over the import formats, on a real SQLite file and a real PostgreSQL server: any field
name and any value is either imported exactly (the label's fields and ``extra`` read back equal to the file's) or
refused with its line and field, the database then unchanged; never stored half or as something else. After
every import, every export format writes every record."""
from __future__ import annotations

import csv
import io
import json
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from db.exporter import export
from db.formats import FormatError
from db.formats.comparisons import KNOWN
from db.importer import import_file
from db.models import Label, Prompt
from db.session import Database

PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
ERROR = re.compile(r"^f\.(jsonl|csv):1: field '[^'\n]*': [^\n]+$")

ODD = ["bad\ud800key", "nul\x00key", "\udfff", "a\x1fformat\x1fb", " spaced ", "", "é中🙂", "new\nline", "tab\there",
       "quote\"d", "x" * 300, "0", "null", "__proto__"]
NAME = st.one_of(st.text(st.characters(codec=None, exclude_categories=()), max_size=12), st.sampled_from(ODD))
TEXT = st.one_of(st.text(st.characters(codec=None, exclude_categories=()), max_size=20), st.sampled_from(ODD))
SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-(10**30), 10**30), st.floats(allow_nan=True, allow_infinity=True), TEXT)
VALUE = st.recursive(SCALAR, lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(NAME, c, max_size=3)), max_leaves=6)
EXTRA_FIELDS = st.dictionaries(NAME.filter(lambda k: k not in KNOWN and k != "extra"), VALUE, max_size=4)


def _labels(db: Database) -> int:
    with db.read() as s:
        return s.scalar(select(func.count()).select_from(Label)) or 0


def _storable(value) -> bool:
    """Whether a value can be stored as is: text without NUL or lone surrogates, finite numbers, at any depth."""
    if isinstance(value, str):
        return "\x00" not in value and not any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if isinstance(value, float):
        return value == value and value not in (float("inf"), float("-inf"))
    if isinstance(value, list):
        return all(_storable(v) for v in value)
    if isinstance(value, dict):
        return all(_storable(k) and _storable(v) for k, v in value.items())
    return True


def _check(db: Database, data: bytes, filename: str, prompt: str, expected: dict | None, **kw) -> None:
    """Import one record; it is stored exactly as ``expected`` (prompt, responses, extra) or refused."""
    before = _labels(db)
    try:
        rep = import_file(db, data, filename=filename, skip_invalid=True, **kw)
    except FormatError as exc:  # the file's only record is unreadable (NaN, Infinity): the file is refused
        assert ERROR.match(str(exc)) and expected is None and _labels(db) == before, (str(exc), expected)
        return
    if rep.skipped:
        assert len(rep.skipped) == 1 and ERROR.match(str(rep.skipped[0])), rep.skipped
        assert rep.labels_added == 0 and _labels(db) == before
        if _storable(prompt):
            with db.read() as s:
                assert s.scalar(select(func.count()).select_from(Prompt).where(Prompt.text == prompt)) == 0
        assert expected is None, (rep.skipped, expected)  # refused only what cannot be stored
        return
    assert expected is not None, "stored a record holding what no database can store"
    assert rep.labels_added == 1 and _labels(db) == before + 1
    with db.read() as s:
        lab = s.scalars(select(Label).order_by(Label.id.desc()).limit(1)).one()
        c = lab.comparison
        shown = (c.response_a.text, c.response_b.text) if lab.left.value == "a" else (c.response_b.text, c.response_a.text)
        got = {"prompt": c.prompt.text, "responses": list(shown), "extra": lab.extra or {}}
    assert got == expected
    for fmt in ("comparisons", "csv", "parquet", "trl"):  # every record of the database still exports
        export(db, fmt, io.BytesIO())


def _comparisons_case(n: int, prompt_tail: str, fields: dict) -> tuple[bytes, str, dict | None]:
    prompt = f"prompt {n} {prompt_tail}"
    rec = {"prompt": prompt, "response_a": f"first {n}", "response_b": f"second {n}", "winner": "a", **fields}
    data = (json.dumps(rec, ensure_ascii=True) + "\n").encode()
    ok = _storable(prompt) and prompt.strip() and all(_storable(k) and _storable(v) for k, v in fields.items())
    expected = {"prompt": prompt, "responses": [f"first {n}", f"second {n}"],
                "extra": {k: v for k, v in fields.items() if v is not None}}
    return data, prompt, expected if ok else None


def test_any_field_name_and_value_of_a_comparison(any_db: Database) -> None:
    counter = iter(range(10**6))

    @PROPS
    @given(fields=EXTRA_FIELDS, prompt_tail=TEXT)
    def run(fields, prompt_tail):
        data, prompt, expected = _comparisons_case(next(counter), prompt_tail, fields)
        _check(any_db, data, "f.jsonl", prompt, expected)

    run()


CSV_NAME = st.text(st.characters(codec="utf-8", exclude_characters="\r"), min_size=1, max_size=12).filter(
    lambda k: k == k.strip() and k not in ("q", "x", "y", "w"))
CSV_CELL = st.text(st.characters(codec="utf-8", exclude_characters="\r"), max_size=20)


def test_any_column_name_and_cell_of_a_mapped_csv(any_db: Database) -> None:
    """Columns outside the mapping land in the label's extra under their own names, with their own text."""
    counter = iter(range(10**6))

    @PROPS
    @given(columns=st.dictionaries(CSV_NAME, CSV_CELL, max_size=4))
    def run(columns):
        n = next(counter)
        row = {"q": f"question {n}", "x": f"x {n}", "y": f"y {n}", "w": "b", **columns}
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(list(row))
        w.writerow(list(row.values()))
        data = buf.getvalue().encode("utf-8")
        ok = all("\x00" not in k + v for k, v in columns.items())
        expected = {"prompt": f"question {n}", "responses": [f"x {n}", f"y {n}"],
                    "extra": {k: v for k, v in columns.items() if v != ""}}
        if not ok:  # a NUL in the header or a cell: the header refuses the whole file, a cell its row
            try:
                rep = import_file(any_db, data, filename="f.csv", skip_invalid=True, mapping="prompt=q,a=x,b=y,winner=w")
            except Exception as exc:  # noqa: BLE001
                assert re.match(r"^f\.csv:1: field 'header': ", str(exc)), exc
                return
            assert rep.labels_added == 0 and len(rep.skipped) == 1
            return
        _check(any_db, data, "f.csv", f"question {n}", expected, mapping="prompt=q,a=x,b=y,winner=w")

    run()
