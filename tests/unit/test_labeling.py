"""The labeling queue: fewest labels first, overlap targets, never twice to one annotator, active learning,
left/right randomization recorded with the label, undo, rankings, progress."""
from __future__ import annotations

import random
from collections import Counter

import pytest
from sqlalchemy import func, select

from db.labeling import (
    CONTROL,
    QueuePolicy,
    annotator_progress,
    choice_to_outcome,
    count_control_pairs,
    count_rankable_prompts,
    in_agreement_share,
    item_for_comparison,
    load_queue_policy,
    next_pair,
    save_queue_policy,
    submit_label,
    uncertainty,
    undo_last,
)
from db.models import Comparison, Label, ModelVersion, Outcome, Ranking, RankingItem, ResponseScore, Side, Source
from db.ranking_queue import (
    next_ranking,
    ranking_task_for_prompt,
    submit_ranking,
    undo_last_ranking,
)
from db.session import Database
from db.store import add_ranking
from tests.app.conftest import seed_small


def _label_all(db: Database, name: str, policy: QueuePolicy, choice: str = "left") -> list[int]:
    seen = []
    while True:
        with db.read() as s:
            item = next_pair(s, name, policy)
        if item is None:
            return seen
        seen.append(item.comparison_id)
        with db.write() as s:
            submit_label(s, item, choice, annotator=name, source="crowd")
        assert len(seen) < 100, "queue never ran dry"


def test_control_pairs_come_from_expert_labels_and_look_like_any_other(sqlite_db: Database) -> None:
    seeded = seed_small(sqlite_db)
    gold = seeded.comparison_ids[:2]
    with sqlite_db.write() as s:
        for cid in gold:
            item = item_for_comparison(s, cid)
            submit_label(s, item, "left", annotator="eve", source="expert")
    with sqlite_db.read() as s:
        assert count_control_pairs(s) == 2
    pol = QueuePolicy(target_overlap=1, agreement_share=0.0, control_share=0.5)
    rng = random.Random(0)
    served = []
    while True:
        with sqlite_db.read() as s:
            item = next_pair(s, "carl", pol, rng=rng)
        if item is None:
            break
        served.append((item.comparison_id, item.reason))
        with sqlite_db.write() as s:
            submit_label(s, item, "left", annotator="carl", source="crowd")
    controls = [cid for cid, reason in served if reason == CONTROL]
    assert controls and set(controls) <= set(gold)  # only expert-labelled pairs, never twice
    assert len({cid for cid, _ in served}) == len(served) == len(seeded.comparison_ids)
    with sqlite_db.read() as s:
        stored = {lab.comparison_id: lab.extra["queue"] for lab in s.scalars(select(Label).where(Label.origin == "app"))
                  if lab.comparison_id in controls}
    assert set(stored.values()) == {CONTROL}  # recorded with the label, for analysis
    with sqlite_db.read() as s:  # off: expert-labelled pairs wait like any pair with its label count
        assert next_pair(s, "dora", QueuePolicy(target_overlap=1, agreement_share=0.0), rng=rng) is None
    with pytest.raises(ValueError, match="queue_policy.control_share: must be a finite number from 0 to 0.5"):
        QueuePolicy(control_share=0.8)


def test_every_pair_once_then_nothing_for_that_annotator(sqlite_db: Database) -> None:
    seeded = seed_small(sqlite_db)
    pol = QueuePolicy(target_overlap=1, agreement_share=0.0)
    seen = _label_all(sqlite_db, "alice", pol)
    assert sorted(seen) == sorted(seeded.comparison_ids)  # each pair exactly once, never twice to alice
    # Nobody needs anything more: bob gets nothing either (overlap 1 reached).
    with sqlite_db.read() as s:
        assert next_pair(s, "bob", pol) is None
        assert annotator_progress(s, "alice", pol).pairs_left == 0


def test_agreement_share_gets_more_annotators_never_same_one_twice(sqlite_db: Database) -> None:
    seeded = seed_small(sqlite_db)
    pol = QueuePolicy(target_overlap=1, agreement_share=0.5, agreement_overlap=3)
    share = {c for c in seeded.comparison_ids if in_agreement_share(c, pol)}
    assert share and share != set(seeded.comparison_ids), "hash should split the six pairs"
    a = _label_all(sqlite_db, "alice", pol)
    b = _label_all(sqlite_db, "bob", pol)
    c = _label_all(sqlite_db, "carol", pol)
    d = _label_all(sqlite_db, "dave", pol)
    assert len(a) == len(set(a)) and len(b) == len(set(b))
    assert sorted(a) == sorted(seeded.comparison_ids)  # alice took phase 1 entirely
    assert set(b) == share and set(c) == share and d == []  # then the share up to 3 annotators
    with sqlite_db.read() as s:
        counts = dict(s.execute(select(Comparison.id, Comparison.label_count)).all())
    for cid in seeded.comparison_ids:
        assert counts[cid] == (3 if cid in share else 1)


def test_fewest_labels_first(sqlite_db: Database) -> None:
    seed_small(sqlite_db)
    pol = QueuePolicy(target_overlap=2, agreement_share=0.0, pool_size=50)
    with sqlite_db.read() as s:
        item = next_pair(s, "x", pol)
    with sqlite_db.write() as s:
        submit_label(s, item, "tie", annotator="x", source="crowd")
    # Every other pair has 0 labels, so bob never gets the labelled one until the others have one too.
    for _ in range(5):
        with sqlite_db.read() as s:
            nxt = next_pair(s, "bob", pol)
        assert nxt.comparison_id != item.comparison_id
        with sqlite_db.write() as s:
            submit_label(s, nxt, "left", annotator="bob", source="crowd")
    with sqlite_db.read() as s:
        last = next_pair(s, "carol", pol)
    assert last.label_count == 1


def test_left_is_randomized_and_outcome_follows_the_click(sqlite_db: Database) -> None:
    seeded = seed_small(sqlite_db)
    rng = random.Random(0)
    with sqlite_db.read() as s:
        lefts = Counter(item_for_comparison(s, seeded.comparison_ids[0], rng).left for _ in range(200))
    assert 60 < lefts[Side.a] < 140 and lefts[Side.a] + lefts[Side.b] == 200
    with sqlite_db.read() as s:
        item = next_pair(s, "alice", QueuePolicy(), rng=random.Random(1))
    # Clicking "left" prefers whatever was on the left, in stored terms.
    assert choice_to_outcome(item, "left").value == item.left.value
    assert choice_to_outcome(item, "right").value != item.left.value
    assert choice_to_outcome(item, "tie") is Outcome.tie
    with pytest.raises(ValueError, match="choice must be one of"):
        choice_to_outcome(item, "up")
    with sqlite_db.write() as s:
        label, created = submit_label(
            s, item, "right", annotator="alice", source=Source.expert, strength=2, now=item.shown_at + 3.25
        )
    assert created
    with sqlite_db.read() as s:
        row = s.get(Label, label.id)
        assert row.left == item.left and row.source is Source.expert and row.strength == 2
        assert row.time_spent_ms == 3250 and row.annotator.name == "alice"
        comp = s.get(Comparison, item.comparison_id)
        right_id = comp.response_b_id if item.left is Side.a else comp.response_a_id
        assert right_id == item.right_response_id
        assert row.outcome.value == ("a" if right_id == comp.response_a_id else "b")


def test_double_submit_stores_one_label_and_undo_returns_the_pair(sqlite_db: Database) -> None:
    seed_small(sqlite_db)
    with sqlite_db.read() as s:
        item = next_pair(s, "alice", QueuePolicy())
    for _ in range(2):
        with sqlite_db.write() as s:
            submit_label(s, item, "left", annotator="alice", source="crowd")
    with sqlite_db.read() as s:
        assert s.scalar(select(func.count()).select_from(Label)) == 1
        assert s.get(Comparison, item.comparison_id).label_count == 1
    with sqlite_db.write() as s:
        assert undo_last(s, "bob", item.key) is None  # bob cannot undo alice's label, even knowing its key
        assert undo_last(s, "alice", item.key) == item.comparison_id
    with sqlite_db.read() as s:
        assert s.scalar(select(func.count()).select_from(Label)) == 0
        assert s.get(Comparison, item.comparison_id).label_count == 0


def test_tie_drops_strength(sqlite_db: Database) -> None:
    seed_small(sqlite_db)
    with sqlite_db.read() as s:
        item = next_pair(s, "alice", QueuePolicy())
    with sqlite_db.write() as s:
        label, _ = submit_label(s, item, "both_bad", annotator="alice", source="ai", strength=2)
    assert label.strength is None and label.outcome is Outcome.both_bad


def test_exclude_skipped(sqlite_db: Database) -> None:
    seeded = seed_small(sqlite_db)
    skip = list(seeded.comparison_ids[:-1])
    with sqlite_db.read() as s:
        item = next_pair(s, "alice", QueuePolicy(), exclude=skip)
        assert item.comparison_id == seeded.comparison_ids[-1]
        assert next_pair(s, "alice", QueuePolicy(), exclude=list(seeded.comparison_ids)) is None


def test_active_learning_prefers_uncertain_pairs(sqlite_db: Database) -> None:
    seeded = seed_small(sqlite_db)
    target = seeded.comparison_ids[2]
    with sqlite_db.write() as s:
        v = ModelVersion(mode="head", backbone="tiny", path="models/x")
        s.add(v)
        s.flush()
        for comp in s.scalars(select(Comparison)):
            gap = 0.01 if comp.id == target else 5.0
            s.add(ResponseScore(model_version_id=v.id, response_id=comp.response_a_id, score=gap, std=0.0))
            s.add(ResponseScore(model_version_id=v.id, response_id=comp.response_b_id, score=0.0, std=0.0))
    pol = QueuePolicy(active_learning=True, pool_size=1)
    with sqlite_db.read() as s:
        picks = {next_pair(s, "alice", pol).comparison_id for _ in range(10)}
    assert picks == {target}
    with sqlite_db.read() as s:
        plain = {next_pair(s, "alice", QueuePolicy(pool_size=50)).comparison_id for _ in range(40)}
    assert len(plain) > 1  # without active learning the choice is spread


def test_uncertainty_ordering() -> None:
    assert uncertainty(0.0, 0.0) > uncertainty(2.0, 0.0) > uncertainty(6.0, 0.0)
    assert uncertainty(2.0, 0.0, 1.0, 1.0) > uncertainty(2.0, 0.0, 0.0, 0.0)
    assert uncertainty(1e9, -1e9) >= 0.0


def test_policy_roundtrip_and_errors(sqlite_db: Database) -> None:
    with sqlite_db.read() as s:
        assert load_queue_policy(s) == QueuePolicy()
    pol = QueuePolicy(target_overlap=2, agreement_share=0.25, agreement_overlap=4, active_learning=True)
    with sqlite_db.write() as s:
        save_queue_policy(s, pol)
    with sqlite_db.read() as s:
        assert load_queue_policy(s) == pol
    with pytest.raises(ValueError, match="agreement_share"):
        QueuePolicy(agreement_share=1.5)
    with pytest.raises(ValueError, match="unknown field.*bogus"):
        QueuePolicy.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="target_overlap"):
        QueuePolicy.from_dict({"target_overlap": "many"})


def test_ranking_queue_and_submit(sqlite_db: Database) -> None:
    seeded = seed_small(sqlite_db)
    with sqlite_db.read() as s:
        assert count_rankable_prompts(s) == 1
        task = next_ranking(s, "alice", QueuePolicy())
    assert task is not None and task.prompt_id == seeded.ranking_prompt_id and len(task.response_ids) == 4
    order = list(reversed(task.response_ids))
    with pytest.raises(ValueError, match="exactly once"):
        with sqlite_db.write() as s:
            submit_ranking(s, task, order[:2], annotator="alice", source="expert")
    for _ in range(2):  # double submit -> one ranking
        with sqlite_db.write() as s:
            submit_ranking(s, task, order, annotator="alice", source="expert")
    with sqlite_db.read() as s:
        rk = s.scalars(select(Ranking)).one()
        assert [i.response_id for i in rk.items] == order and [i.rank for i in rk.items] == [1, 2, 3, 4]
        assert rk.extra == {"shown_order": list(task.response_ids)} and rk.source is Source.expert
        assert next_ranking(s, "alice", QueuePolicy()) is None
        assert next_ranking(s, "bob", QueuePolicy()) is not None
        p = annotator_progress(s, "alice")
        assert p.rankings_today == 1 and p.total_rankings == 1 and p.total_labels == 0


def test_undo_last_ranking_takes_back_only_my_app_rankings(sqlite_db: Database) -> None:
    seeded = seed_small(sqlite_db)
    tasks = {}
    for name in ("alice", "bob"):
        with sqlite_db.read() as s:
            tasks[name] = next_ranking(s, name, QueuePolicy())
        with sqlite_db.write() as s:
            submit_ranking(s, tasks[name], list(tasks[name].response_ids), annotator=name, source="crowd")
    with sqlite_db.write() as s:  # a ranking imported under alice's name is not hers to undo from the page
        add_ranking(s, prompt_id=seeded.ranking_prompt_id, response_ids=list(tasks["alice"].response_ids),
                    source="expert", annotator="alice", idempotency_key="imported-1", origin="import")
    with sqlite_db.write() as s:
        assert undo_last_ranking(s, "alice", key=tasks["bob"].key) is None  # bob's key: not alice's ranking
        assert undo_last_ranking(s, "nobody", key=tasks["alice"].key) is None
        assert undo_last_ranking(s, "alice", key="imported-1") is None  # imported: never undone from the page
        assert undo_last_ranking(s, "alice", key=tasks["alice"].key) == seeded.ranking_prompt_id
        assert undo_last_ranking(s, "alice", key=tasks["alice"].key) is None  # gone already
    with sqlite_db.read() as s:
        left = {(r.annotator.name, r.origin) for r in s.scalars(select(Ranking))}
        assert left == {("bob", "app"), ("alice", "import")}
        assert s.scalar(select(func.count()).select_from(RankingItem)) == 2 * len(tasks["bob"].response_ids)
        again = ranking_task_for_prompt(s, seeded.ranking_prompt_id, QueuePolicy())
    assert again.key != tasks["alice"].key and sorted(again.response_ids) == sorted(tasks["alice"].response_ids)
    with sqlite_db.write() as s:  # ranked again under the new key: stored
        submit_ranking(s, again, list(again.response_ids), annotator="alice", source="crowd")
        assert undo_last_ranking(s, "bob", key="") is None  # no key, nothing: a session undoes only its own
        assert undo_last_ranking(s, "bob", key=tasks["bob"].key) == seeded.ranking_prompt_id
    with pytest.raises(ValueError, match="prompt 999999 does not exist"):
        with sqlite_db.read() as s:
            ranking_task_for_prompt(s, 999999)


def test_progress(sqlite_db: Database) -> None:
    seed_small(sqlite_db)
    pol = QueuePolicy(agreement_share=0.0)
    spent = [2.0, 4.0, 9.0]
    for t in spent:
        with sqlite_db.read() as s:
            item = next_pair(s, "alice", pol)
        with sqlite_db.write() as s:
            submit_label(s, item, "left", annotator="alice", source="crowd", now=item.shown_at + t)
    with sqlite_db.read() as s:
        p = annotator_progress(s, "alice", pol)
        assert p.labels_today == 3 and p.total_labels == 3 and p.pairs_left == 3
        assert p.median_seconds == pytest.approx(4.0)
        assert annotator_progress(s, "nobody", pol).median_seconds is None


def test_queue_on_postgres(pg_db: Database) -> None:
    seeded = seed_small(pg_db)
    pol = QueuePolicy(target_overlap=1, agreement_share=0.5, agreement_overlap=2)
    share = {c for c in seeded.comparison_ids if in_agreement_share(c, pol)}
    a = _label_all(pg_db, "alice", pol)
    b = _label_all(pg_db, "bob", pol)
    assert sorted(a) == sorted(seeded.comparison_ids) and set(b) == share


def test_agreement_share_matches_sql_for_large_ids(any_db: Database) -> None:
    """The SQL bucket equals the Python one, also for ids far beyond 32-bit products (PostgreSQL int4)."""
    from sqlalchemy import insert

    from db.labeling import pairs_left
    from db.models import Prompt, Response

    pol = QueuePolicy(target_overlap=1, agreement_share=0.3, agreement_overlap=2)
    big = [2_000_000_000 + i for i in range(40)]
    with any_db.write() as s:
        s.execute(insert(Prompt).values(id=1, content_hash="h", text="p"))
        s.execute(insert(Response), [{"id": i, "prompt_id": 1, "content_hash": f"r{i}", "text": f"r{i}"} for i in (1, 2)])
        s.execute(insert(Comparison), [{"id": c, "prompt_id": 1, "response_a_id": 1, "response_b_id": 2,
                                        "label_count": 1} for c in big[:1]])
    # One comparison row per (a, b) pair is allowed, so check the bucket rule on the id directly in SQL too.
    from sqlalchemy import literal
    from sqlalchemy import select as sel

    with any_db.read() as s:
        for cid in big:
            sql = s.scalar(sel(((literal(cid) % 100) * 19) % 100))
            assert (sql < pol.agreement_percent) == in_agreement_share(cid, pol)
        assert pairs_left(s, pol) == int(in_agreement_share(big[0], pol))
    assert 0.2 < sum(in_agreement_share(c, pol) for c in range(1000)) / 1000 < 0.4


def test_undo_by_key_and_never_imported_labels(sqlite_db: Database) -> None:
    from db.store import add_label

    seeded = seed_small(sqlite_db)
    with sqlite_db.write() as s:  # an imported label of "human-1"
        add_label(s, comparison_id=seeded.comparison_ids[0], outcome="a", source="crowd", annotator="human-1",
                  idempotency_key="import-1", origin="import:file.jsonl")
    with sqlite_db.write() as s:  # someone typing that name (and even the key) cannot delete imported work
        assert undo_last(s, "human-1", "import-1") is None
    items = []
    for _ in range(2):
        with sqlite_db.read() as s:
            item = next_pair(s, "human-1", QueuePolicy(target_overlap=2, agreement_share=0.0))
        with sqlite_db.write() as s:
            submit_label(s, item, "left", annotator="human-1", source="crowd")
        items.append(item)
    with sqlite_db.write() as s:
        assert undo_last(s, "human-1", items[0].key) == items[0].comparison_id  # the older one, by key
        assert undo_last(s, "human-1", items[0].key) is None  # already gone
        assert undo_last(s, "someone-else", items[1].key) is None  # not theirs
        assert undo_last(s, "human-1", "") is None  # no key, nothing: only what a session stored can be undone
        assert undo_last(s, "human-1", items[1].key) == items[1].comparison_id
    with sqlite_db.read() as s:
        assert [l.idempotency_key for l in s.scalars(select(Label))] == ["import-1"]
