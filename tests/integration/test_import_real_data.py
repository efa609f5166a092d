"""The files in the real-data folder import with the right counts and provenance (SQLite file database).

Expected numbers are computed from the files themselves where possible, and pinned where the data's documentation states them.
"""
from __future__ import annotations

import collections
import gzip
import json

from sqlalchemy import func, select

from db.importer import import_file
from db.models import Comparison, Label, Prompt, Response, Side
from db.pairs import training_pairs
from db.stats import dataset_stats

LFQA_MAP = "prompt=question,a=answer_a,b=answer_b,winner=overall_preference"


def _lines(path):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _count(s, model):
    return s.scalar(select(func.count()).select_from(model))


def test_hh_rlhf_1300_crowd_pairs(sqlite_db, shared_data):
    path = shared_data / "hh_harmless_1300.jsonl.gz"
    rows = _lines(path)
    assert len(rows) == 1300
    rep = import_file(sqlite_db, path)
    assert (rep.format, rep.records, rep.labels_added, rep.comparisons_added) == ("hh-rlhf", 1300, 1300, 1300)
    # every prompt is a distinct dialogue; 4 chosen replies are empty (the assistant said nothing), kept as such
    assert (rep.prompts_added, rep.responses_added, rep.duplicates, rep.skipped) == (1300, 2600, 0, [])
    with sqlite_db.read() as s:
        ps = training_pairs(s)
        labels = s.scalars(select(Label)).all()
        assert {l.source.value for l in labels} == {"crowd"}
        assert sum(1 for r in s.scalars(select(Response.text)) if r == "") == 4
        # the chosen reply was the file's first response, so it is stored as shown on the left
        for l in labels:
            c = s.get(Comparison, l.comparison_id)
            assert l.left is (Side.a if l.outcome.value == "a" else Side.b)
            assert c is not None
    assert len(ps.pairs) == 1300 and not any(p.tie for p in ps.pairs)
    # an independent reading of each record: last Human turn, final chosen reply, number of earlier turns
    expected = collections.Counter()
    for r in rows:
        head, _, reply = r["chosen"].rpartition("\n\nAssistant:")
        before, _, last_human = head.rpartition("\n\nHuman:")
        expected[(last_human.strip(), reply.strip(), before.count("\n\nHuman:") + before.count("\n\nAssistant:"))] += 1
    got = collections.Counter((p.prompt, p.chosen, len(p.history)) for p in ps.pairs)
    # one record's reply contains its own "\n\nAssistant:" turn: it is cut at the shared prefix instead
    assert sum((got & expected).values()) == 1299
    # multi-turn history is kept as user/assistant turns
    assert max(len(p.history) for p in ps.pairs) >= 8
    assert all(role in ("user", "assistant") for p in ps.pairs for role, _ in p.history)
    again = import_file(sqlite_db, path)
    assert (again.labels_added, again.prompts_added, again.duplicates) == (0, 0, 1300)


def test_lfqa_260_expert_pairs_via_mapping(sqlite_db, shared_data):
    path = shared_data / "lfqa_expert_pairs.jsonl"
    rows = _lines(path)
    want = collections.Counter({-1: "a", 1: "b", 0: "tie"}[r["overall_preference"]] for r in rows)
    rep = import_file(sqlite_db, path, mapping=LFQA_MAP, winner_values="-1:a,1:b,0:tie", source="expert")
    assert (rep.format, rep.records, rep.labels_added, rep.skipped) == ("mapped", 260, 260, [])
    # 120 rows judge a pair another row judged too (other justification): distinct judgments, all kept
    distinct_pairs = len({(r["question"], r["answer_a"], r["answer_b"]) for r in rows})
    assert rep.comparisons_added == distinct_pairs
    with sqlite_db.read() as s:
        ps = training_pairs(s)
        labels = s.scalars(select(Label)).all()
        assert all(l.source.value == "expert" for l in labels)
        assert sum(1 for l in labels if l.extra and l.extra.get("justification")) == sum(1 for r in rows if r["justification"])
        st = dataset_stats(s)
    assert st["labels"] == 260 and st["by_source"] == {"expert": 260, "crowd": 0, "ai": 0}
    assert st["ties"] == want["tie"] and sum(p.tie for p in ps.pairs) == want["tie"]
    # chosen is the answer the expert preferred, whatever order the comparison is stored in
    file_wins = collections.Counter()
    for r in rows:
        if r["overall_preference"] != 0:
            file_wins[(r["question"], r["answer_a"] if r["overall_preference"] == -1 else r["answer_b"])] += 1
    got = collections.Counter((p.prompt, p.chosen) for p in ps.pairs if not p.tie)
    assert got == file_wins


def test_vicuna80_responses_then_comparisons(sqlite_db, shared_data):
    resp_rows = _lines(shared_data / "vicuna80" / "responses.jsonl")
    cmp_rows = _lines(shared_data / "vicuna80" / "comparisons.jsonl.gz")
    rep = import_file(sqlite_db, shared_data / "vicuna80" / "responses.jsonl")
    assert (rep.format, rep.records) == ("unlabeled", 80)
    assert (rep.prompts_added, rep.responses_added, rep.comparisons_added, rep.labels_added) == (80, 400, 800, 0)
    with sqlite_db.read() as s:
        assert {c for (c,) in s.execute(select(Prompt.category))} == {r["category"] for r in resp_rows}
        assert {m for (m,) in s.execute(select(Response.model))} == {"bard", "claude", "gpt35", "gpt4", "vicuna-13b"}

    rep = import_file(sqlite_db, shared_data / "vicuna80" / "comparisons.jsonl.gz")
    assert (rep.format, rep.records, rep.labels_added) == ("comparisons", 3360, 3360)
    assert (rep.prompts_added, rep.responses_added, rep.comparisons_added) == (0, 0, 0)  # same texts: deduplicated
    with sqlite_db.read() as s:
        st = dataset_stats(s)
        ps = training_pairs(s)
    src = collections.Counter(r["source"] for r in cmp_rows)
    assert (src["crowd"], src["ai"]) == (1760, 1600)
    assert st["by_source"] == {"expert": 0, "crowd": 1760, "ai": 1600}
    assert st["by_annotator"] == dict(collections.Counter(r["annotator"] for r in cmp_rows))
    assert st["ties"] == sum(r["winner"] == "tie" for r in cmp_rows)
    # outcomes count what was shown first (the file's response_a) winning, as in the file
    assert st["by_outcome"] == {**{w: 0 for w in ("a", "b", "tie", "both_bad")}, **collections.Counter(r["winner"] for r in cmp_rows)}
    assert st["comparisons"] == 800 and st["unlabeled_comparisons"] == 0 and st["tier"] == "1,000+"
    # the same annotator judging one pair in both orders gives two labels
    assert st["labels"] == 3360
    want = collections.Counter(
        (r["annotator"], r["response_a"] if r["winner"] == "a" else r["response_b"]) for r in cmp_rows if r["winner"] != "tie"
    )
    assert collections.Counter((p.annotator, p.chosen) for p in ps.pairs if not p.tie) == want
