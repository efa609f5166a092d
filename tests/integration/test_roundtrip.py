"""Import -> export -> import round-trips exactly (labels with every outcome and provenance, rankings with ties,
multi-turn prompts, unlabeled comparisons), on a real SQLite file and a real PostgreSQL server."""
from __future__ import annotations

import collections
import gzip
import itertools
import json
from pathlib import Path

import pytest
from sqlalchemy import delete, select

from db import store
from db.exporter import export
from db.formats import parse_file
from db.importer import import_file
from db.models import Annotator, Comparison, Label, Prompt, Ranking, RankingItem, Response
from db.pairs import training_pairs

HISTORY = [{"role": "user", "content": "I need help."}, {"role": "assistant", "content": "Sure, with what?"}]


def seed(db) -> None:
    """Content like the app and the importers make it, covering every field the export must carry."""
    with db.write() as s:
        p1 = store.get_or_create_prompt(s, "Sort a list in Python?", category="coding")
        p2 = store.get_or_create_prompt(s, "And in place?", history=HISTORY, category="coding")
        p3 = store.get_or_create_prompt(s, "Name a prime.")
        r1 = [store.get_or_create_response(s, p1, t, m) for t, m in
              [("sorted(xs)", "gpt4"), ("xs.sort()", "claude"), ("use a loop", None), ("", "silent")]]
        r2 = [store.get_or_create_response(s, p2, t) for t in ("xs.sort()", "sorted(xs)")]
        r3 = [store.get_or_create_response(s, p3, t, "m") for t in ("2", "4", "9", "7", "1")]
        store.get_or_create_response(s, p3, "orphan answer")  # in no comparison or ranking
        cases = [
            (r1[0], r1[1], "a", "expert", "eve", "a", 2, 1200, "train", {"rationale": "idiomatic"}),
            (r1[1], r1[0], "b", "crowd", "cat", "b", 1, None, "test", None),  # same pair, shown swapped
            (r1[0], r1[2], "tie", "ai", "gpt-4", "a", None, None, "train", {"score": [1.5, 2]}),
            (r1[2], r1[3], "both_bad", "crowd", "cat", "b", None, 300, "train", None),
            (r2[0], r2[1], "a", "crowd", "dan", "a", None, None, "train", None),
        ]
        for i, (x, y, outcome, source, who, left, strength, ms, split, extra) in enumerate(cases):
            oc = store.get_or_create_comparison(s, x, y)
            store.add_label(
                s, comparison_id=oc.comparison.id, outcome=oc.outcome_to_stored(outcome), source=source, annotator=who,
                idempotency_key=f"ui-{i}", left=oc.to_stored(left), strength=strength, time_spent_ms=ms, split=split,
                origin="label-page", extra=extra,
            )
        store.get_or_create_comparison(s, r1[1], r1[2])  # queued, never labelled
        store.add_ranking(s, prompt_id=p3.id, response_ids=[r3[2].id, r3[0].id, r3[3].id, r3[1].id], ranks=[3, 1, 1, 4],
                          source="expert", annotator="eve", idempotency_key="rk-1", time_spent_ms=5000, extra={"note": "tie"})
        store.add_ranking(s, prompt_id=p3.id, response_ids=[r3[4].id, r3[0].id], source="crowd", annotator="cat",
                          idempotency_key="rk-2", split="test")


def seed_real(db, shared: Path) -> None:
    """A slice of the real files, so the round trip also covers what importers make of them."""
    def head(path: Path, n: int) -> bytes:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            return b"".join(itertools.islice(f, n))

    import_file(db, head(shared / "hh_harmless_1300.jsonl.gz", 25), filename="hh.jsonl")
    import_file(db, head(shared / "vicuna80" / "comparisons.jsonl.gz", 40), filename="v.jsonl")
    import_file(db, head(shared / "lfqa_expert_pairs.jsonl", 10), filename="lfqa.jsonl", source="expert",
                mapping="prompt=question,a=answer_a,b=answer_b,winner=overall_preference", winner_values="-1:a,1:b,0:tie")


def snapshot(db) -> dict[str, collections.Counter]:
    """Everything the data layer stores, by content (ids and timestamps left out)."""
    with db.read() as s:
        resp = {r.id: (r.text, r.model) for r in s.scalars(select(Response))}
        prompts = {p.id: (p.text, json.dumps(p.history), p.category) for p in s.scalars(select(Prompt))}
        rp = {r.id: prompts[r.prompt_id][0] for r in s.scalars(select(Response))}
        snap = {
            "prompts": collections.Counter(prompts.values()),
            "responses": collections.Counter((rp[i], *resp[i]) for i in resp),
            "comparisons": collections.Counter(
                frozenset((resp[c.response_a_id][0], resp[c.response_b_id][0])) for c in s.scalars(select(Comparison))
            ),
            "labels": collections.Counter(),
            "rankings": collections.Counter(),
        }
        for l in s.scalars(select(Label)):
            c = s.get(Comparison, l.comparison_id)
            side = {"a": resp[c.response_a_id][0], "b": resp[c.response_b_id][0]}
            winner = side.get(l.outcome.value, l.outcome.value)
            snap["labels"][(
                frozenset(side.values()), winner, side[l.left.value] if l.left else None, l.source.value,
                l.annotator.name, l.strength, l.split.value, l.time_spent_ms, l.idempotency_key, l.origin,
                json.dumps(l.extra, sort_keys=True),
            )] += 1
        for rk in s.scalars(select(Ranking)):
            items = tuple((resp[i.response_id][0], i.rank) for i in rk.items)
            snap["rankings"][(prompts[rk.prompt_id][0], items, rk.source.value, rk.annotator.name, rk.split.value,
                              rk.time_spent_ms, rk.idempotency_key, rk.origin, json.dumps(rk.extra, sort_keys=True))] += 1
        counts = {k: sum(v.values()) for k, v in snap.items()}
        assert all(counts.values()), counts
    return snap


def wipe(db) -> None:
    with db.write() as s:
        for model in (RankingItem, Ranking, Label, Comparison, Response, Prompt, Annotator):
            s.execute(delete(model))


def test_roundtrip_native_jsonl(any_db, tmp_path, shared_data):
    seed(any_db)
    seed_real(any_db, shared_data)
    before = snapshot(any_db)
    out = tmp_path / "all.jsonl"
    rep = export(any_db, "comparisons", out)
    n_labels, n_rankings = sum(before["labels"].values()), sum(before["rankings"].values())
    # one line per label and ranking, plus the unlabeled comparison and the orphan response's line
    assert rep.n_written == n_labels + n_rankings + 2
    again = import_file(any_db, out)  # into the database it came from: nothing new
    assert (again.labels_added, again.rankings_added, again.duplicates) == (0, 0, n_labels + n_rankings)
    assert (again.prompts_added, again.responses_added, again.comparisons_added) == (0, 0, 0)

    wipe(any_db)
    rep2 = import_file(any_db, out)
    assert (rep2.labels_added, rep2.rankings_added, rep2.skipped) == (n_labels, n_rankings, [])
    assert snapshot(any_db) == before
    out2 = tmp_path / "again.jsonl.gz"
    export(any_db, "comparisons", out2)
    assert sorted(gzip.decompress(out2.read_bytes()).splitlines()) == sorted(out.read_bytes().splitlines())


@pytest.mark.parametrize("fmt, name", [("csv", "all.csv"), ("parquet", "all.parquet")])
def test_roundtrip_tables(sqlite_db, tmp_path, fmt, name):
    seed(sqlite_db)
    before = snapshot(sqlite_db)
    rep = export(sqlite_db, fmt, tmp_path / name)
    assert rep.n_written == sum(before["labels"].values()) + sum(before["rankings"].values()) + 2
    wipe(sqlite_db)
    back = import_file(sqlite_db, tmp_path / name)
    assert back.format == "mixed" and back.container == fmt and back.skipped == []  # an export names itself
    assert snapshot(sqlite_db) == before


def test_split_filter_and_trl_export(sqlite_db, tmp_path):
    seed(sqlite_db)
    with sqlite_db.read() as s:
        full = training_pairs(s)
        trainable = training_pairs(s, include_ties=False)
    test_only = export(sqlite_db, "comparisons", tmp_path / "test.jsonl", split="test")
    lines = [json.loads(x) for x in (tmp_path / "test.jsonl").read_text().splitlines()]
    assert {x["split"] for x in lines} == {"test"} and test_only.n_written == 2
    assert test_only.excluded == {"other_split": 4 + 1}  # train labels + the train ranking

    rep = export(sqlite_db, "trl", tmp_path / "trl.jsonl")
    n_ties = sum(p.tie for p in full.pairs)
    assert rep.excluded == {"tie": n_ties, "both_bad": 1} and n_ties == 2  # a labelled tie and a ranking tie
    assert rep.n_written == len(trainable.pairs) == len(full.pairs) - n_ties
    rows = [json.loads(x) for x in (tmp_path / "trl.jsonl").read_text().splitlines()]
    # a multi-turn prompt is present, so every line is conversational
    assert all(isinstance(r["prompt"], list) and r["prompt"][-1]["role"] == "user" for r in rows)
    got = collections.Counter((r["prompt"][-1]["content"], r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows)
    assert got == collections.Counter((p.prompt, p.chosen, p.rejected) for p in trainable.pairs)
    recs = list(parse_file(tmp_path / "trl.jsonl"))
    assert len(recs) == rep.n_written and all(r.kind == "comparison" for r in recs)
    assert [r.history for r in recs if r.prompt == "And in place?"] == [HISTORY]
