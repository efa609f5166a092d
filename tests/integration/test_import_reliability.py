"""Imports that used to lose or bend data, on a real SQLite file and a real PostgreSQL server: a judgment line
without its verdict (never stored as unlabeled), field names no database can store (refused; every export still
works), bad first rows under ``skip_invalid``, an unclosed CSV quote (reported where it opened; the rows after it
imported), thousands of responses to one prompt (a bounded number of pairs)."""
from __future__ import annotations

import collections
import io
import json
import random
from pathlib import Path

import pytest
from sqlalchemy import func, select

from db.bulk import PAIR_PARTNERS, partner_pairs
from db.exporter import export
from db.formats import FormatError
from db.importer import import_file
from db.models import Annotator, Comparison, Label, Prompt, Ranking, RankingItem, Response
from db.session import Database

TABLES = (Prompt, Response, Comparison, Label, Ranking, RankingItem, Annotator)


def _jsonl(rows: list) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode("utf-8", "surrogatepass")


def _counts(db: Database) -> dict[str, int]:
    with db.read() as s:
        return {m.__tablename__: s.scalar(select(func.count()).select_from(m)) for m in TABLES}


RANK = {"prompt": "Rank them.", "responses": ["x", "y", "z"], "ranking": [2, 1, 3]}


def test_a_ranking_without_its_ranking_is_never_stored_as_unlabeled(any_db: Database) -> None:
    rows = [RANK, dict(RANK, prompt="null ranking", ranking=None), dict(RANK, prompt="empty ranking", ranking=""),
            {"prompt": "no ranking", "responses": ["x", "y"]}, dict(RANK, prompt="Rank these too.")]
    before = _counts(any_db)
    with pytest.raises(FormatError, match=r"^r\.jsonl:2: field 'ranking': .*2 more invalid rows"):
        import_file(any_db, _jsonl(rows), filename="r.jsonl")
    assert _counts(any_db) == before
    rep = import_file(any_db, _jsonl(rows), filename="r.jsonl", skip_invalid=True)
    assert rep.format == "rankings" and rep.rankings_added == 2
    assert [(e.line, e.field) for e in rep.skipped] == [(2, "ranking"), (3, "ranking"), (4, "ranking")]
    after = _counts(any_db)
    assert after["comparisons"] == 0 and after["prompts"] == 2  # nothing of the bad lines was stored
    # a comparisons file's line with responses and a null winner: an invalid comparison, not unlabeled data
    cmp = {"prompt": "2+2?", "response_a": "4", "response_b": "5", "winner": "a"}
    rep = import_file(any_db, _jsonl([cmp, {"prompt": "3+3?", "responses": ["6", "7"], "winner": None}]),
                      filename="c.jsonl", skip_invalid=True)
    assert (rep.labels_added, [(e.line, e.field) for e in rep.skipped]) == (1, [(2, "response_a")])
    with any_db.read() as s:
        assert s.scalar(select(func.count()).select_from(Prompt).where(Prompt.text == "3+3?")) == 0


def test_unstorable_field_names_are_refused_and_every_export_works(any_db: Database, tmp_path: Path) -> None:
    good = [{"prompt": f"q{i}", "response_a": "a", "response_b": "b", "winner": "a", "note": {"k": i}} for i in range(3)]
    bad = ['{"prompt": "q", "response_a": "a", "response_b": "b", "winner": "a", "bad\\ud800key": 1}',
           '{"prompt": "q", "response_a": "a", "response_b": "b", "winner": "a", "nul\\u0000key": 1}',
           '{"prompt": "q", "response_a": "a", "response_b": "b", "winner": "a", "extra": {"in\\ud800side": 1}}']
    rep = import_file(any_db, _jsonl([good[0], *bad, *good[1:]]), filename="k.jsonl", skip_invalid=True)
    assert rep.labels_added == 3
    assert [(e.line, e.field) for e in rep.skipped] == [(2, "bad\\ud800key"), (3, "nul\\x00key"), (4, "extra.in\\ud800side")]
    for fmt, name in (("comparisons", "all.jsonl"), ("csv", "all.csv"), ("parquet", "all.parquet"), ("trl", "trl.jsonl")):
        out = export(any_db, fmt, tmp_path / name)
        assert out.n_written == 3, fmt
    again = import_file(any_db, tmp_path / "all.csv")
    assert (again.labels_added, again.duplicates) == (0, 3)


@pytest.mark.parametrize("junk", ["{not json", '{"unknown": "layout"}'])
def test_skip_invalid_works_whatever_the_first_rows_hold(any_db: Database, junk: str) -> None:
    rows = [junk] * 30 + [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(5)]
    with pytest.raises(FormatError, match=r"^j\.jsonl:1: "):
        import_file(any_db, _jsonl(rows), filename="j.jsonl")
    rep = import_file(any_db, _jsonl(rows), filename="j.jsonl", skip_invalid=True)
    assert (rep.format, rep.labels_added, len(rep.skipped)) == ("trl", 5, 30)


def test_an_unclosed_csv_quote_does_not_swallow_the_rows_after_it(any_db: Database) -> None:
    lines = [f"q{i},a{i},b{i},a" for i in range(1, 302)]
    lines[1] = 'q2,"a2 is never closed,b2,a'
    data = ("prompt,response_a,response_b,winner\n" + "\n".join(lines) + "\n").encode()
    with pytest.raises(FormatError, match=r"^u\.csv:3: field 'csv': a quoted field opened on line 3 "):
        import_file(any_db, data, filename="u.csv")
    rep = import_file(any_db, data, filename="u.csv", skip_invalid=True)
    assert rep.labels_added == 300 and len(rep.skipped) == 1 and "opened on line 3" in str(rep.skipped[0])


def test_thousands_of_responses_make_a_bounded_number_of_pairs(any_db: Database) -> None:
    responses = [f"response number {i}" for i in range(2000)]
    rep = import_file(any_db, _jsonl([{"prompt": "Many answers.", "responses": responses}]), filename="many.jsonl")
    assert rep.comparisons_added == 2000 * PAIR_PARTNERS // 2 == 8000 and rep.responses_added == 2000
    with any_db.read() as s:
        ends = collections.Counter()
        for a, b in s.execute(select(Comparison.response_a_id, Comparison.response_b_id)):
            ends.update((a, b))
    assert set(ends.values()) == {PAIR_PARTNERS} and len(ends) == 2000  # every response in exactly K pairs
    shuffled = responses[:]
    random.Random(1).shuffle(shuffled)  # the same responses in another order: the same pairs, nothing new
    again = import_file(any_db, _jsonl([{"prompt": "Many answers.", "responses": shuffled}]), filename="many2.jsonl")
    assert (again.comparisons_added, again.responses_added) == (0, 0)


def test_partner_pairs():
    assert partner_pairs(["h1", "h2", "h3"]) == [(0, 1), (0, 2), (1, 2)]
    n = PAIR_PARTNERS + 1
    assert len(partner_pairs([f"h{i}" for i in range(n)])) == n * (n - 1) // 2  # every pair up to K + 1 responses
    hashes = [f"{i:04x}" for i in range(50)]
    pairs = partner_pairs(hashes)
    assert len(pairs) == 50 * PAIR_PARTNERS // 2 and all(i < j for i, j in pairs)
    degree = collections.Counter(x for p in pairs for x in p)
    assert set(degree.values()) == {PAIR_PARTNERS}
    order = list(range(50))
    random.Random(3).shuffle(order)
    moved = partner_pairs([hashes[i] for i in order])
    assert {frozenset((hashes[order[i]], hashes[order[j]])) for i, j in moved} == {frozenset((hashes[i], hashes[j])) for i, j in pairs}


# ---------------------------------------------------------------- several annotators, numeric verdicts

def _panda_like() -> bytes:
    """30 pairs with one verdict column per annotator (0 tie, 1 first, 2 second); 2 pairs invalid (same responses)."""
    rng = random.Random(5)
    rows = []
    for i in range(30):
        same = i in (7, 19)
        rows.append({"instruction": f"Instruction {i}", "response1": f"first {i}", "response2": f"first {i}" if same else f"second {i}",
                     **{f"annotator{k}": rng.choice([0, 1, 2]) for k in (1, 2, 3)}})
    buf = io.StringIO()
    cols = list(rows[0])
    buf.write(",".join(cols) + "\n")
    for r in rows:
        buf.write(",".join(str(r[c]) for c in cols) + "\n")
    return buf.getvalue().encode()


PANDA_MAP = "prompt=instruction,a=response1,b=response2,winner="
PANDA_VALUES = "0:tie,1:a,2:b"


def _labels_per_pair(db: Database) -> collections.Counter:
    with db.read() as s:
        return collections.Counter(dict(s.execute(select(Label.comparison_id, func.count()).group_by(Label.comparison_id)).all()))


def _stored(db: Database) -> set[tuple]:
    with db.read() as s:
        return {(lab.comparison.prompt.text, lab.annotator.name, lab.outcome.value, lab.source.value)
                for lab in s.scalars(select(Label))}


def test_one_verdict_column_per_annotator_imported_column_by_column(any_db: Database, tmp_path: Path) -> None:
    path = tmp_path / "panda.csv"
    path.write_bytes(_panda_like())
    for k in (1, 2, 3):
        rep = import_file(any_db, path, mapping=PANDA_MAP + f"annotator{k}", winner_values=PANDA_VALUES,
                          annotator=f"annotator{k}", skip_invalid=True)
        assert (rep.labels_added, rep.duplicates, len(rep.skipped)) == (28, 0, 2)
    per_pair = _labels_per_pair(any_db)
    assert len(per_pair) == 28 and set(per_pair.values()) == {3}
    fourth = import_file(any_db, path, mapping=PANDA_MAP + "annotator2", winner_values=PANDA_VALUES,
                         annotator="annotator2", skip_invalid=True)
    assert (fourth.labels_added, fourth.duplicates) == (0, 28)
    stored = _stored(any_db)
    # the several-columns form reads the same labels: nothing new here, and the same labels in a fresh database
    multi = import_file(any_db, path, mapping=PANDA_MAP + "annotator1|annotator2|annotator3", winner_values=PANDA_VALUES,
                        skip_invalid=True)
    assert (multi.records, multi.labels_added, multi.duplicates) == (84, 0, 84)
    assert _stored(any_db) == stored and len(stored) == 84


def test_several_verdict_columns_in_one_import(sqlite_db: Database, tmp_path: Path) -> None:
    path = tmp_path / "panda.csv"
    path.write_bytes(_panda_like())
    rep = import_file(sqlite_db, path, mapping=PANDA_MAP + "annotator1|annotator2|annotator3", winner_values=PANDA_VALUES,
                      skip_invalid=True, source="expert")
    assert (rep.labels_added, len(rep.skipped)) == (84, 2)
    per_pair = _labels_per_pair(sqlite_db)
    assert len(per_pair) == 28 and set(per_pair.values()) == {3}
    with sqlite_db.read() as s:
        assert sorted(a.name for a in s.scalars(select(Annotator))) == ["annotator1", "annotator2", "annotator3"]
    assert {src for *_, src in _stored(sqlite_db)} == {"expert"}
    again = import_file(sqlite_db, path, mapping=PANDA_MAP + "annotator1|annotator2|annotator3", winner_values=PANDA_VALUES,
                        skip_invalid=True, source="expert")
    assert again.labels_added == 0


def test_numeric_verdicts_on_a_scale(any_db: Database) -> None:
    """AlpacaEval 2's weighted preference (1..2): nearer 1 = output_1 better, nearer 2 = output_2, 1.5 a tie; the
    distance from the midpoint is the strength (2 from half way to an end on, else 1)."""
    prefs = [1.0000002, 1.93, 1.5, 1.3, 1.6]
    rows = [{"instruction": f"I{i}", "output_1": f"one {i}", "output_2": f"two {i}", "preference": p} for i, p in enumerate(prefs)]
    rep = import_file(any_db, _jsonl(rows), filename="alpaca.jsonl", winner_scale="1:a,2:b",
                      mapping="prompt=instruction,a=output_1,b=output_2,winner=preference", source="ai")
    assert rep.labels_added == 5
    with any_db.read() as s:
        got = {}
        for lab in s.scalars(select(Label)):
            c = lab.comparison
            won = {"a": c.response_a.text, "b": c.response_b.text}.get(lab.outcome.value, lab.outcome.value)
            got[c.prompt.text] = (won, lab.strength, lab.extra)
    assert got == {"I0": ("one 0", 2, {"preference": 1.0000002}), "I1": ("two 1", 2, {"preference": 1.93}),
                   "I2": ("tie", None, {"preference": 1.5}), "I3": ("one 3", 1, {"preference": 1.3}),
                   "I4": ("two 4", 1, {"preference": 1.6})}
