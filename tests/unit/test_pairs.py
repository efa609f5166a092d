"""training_pairs: labels and rankings expanded into TrainingPairs, with ties, filters and exclusions."""
from __future__ import annotations

import itertools

import pytest

from db import store
from db.pairs import PairSet, TrainingPair, training_pairs


def _seed(db):
    """Two prompts: one labelled comparison per outcome, plus a 4-way ranking with one tie."""
    with db.write() as s:
        p = store.get_or_create_prompt(
            s, "Which is best?", history=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
            category="advice",
        )
        r = [store.get_or_create_response(s, p, t) for t in ("good", "bad", "meh", "fine")]
        # caller order (bad, good): swapped relative to storage
        oc = store.get_or_create_comparison(s, r[1], r[0])
        assert oc.swapped
        store.add_label(s, comparison_id=oc.comparison.id, outcome=oc.outcome_to_stored("b"), source="expert",
                        annotator="eve", idempotency_key="l1", strength=2)
        oc2 = store.get_or_create_comparison(s, r[2], r[3])
        store.add_label(s, comparison_id=oc2.comparison.id, outcome="tie", source="crowd", annotator="cat",
                        idempotency_key="l2", strength=None)
        store.add_label(s, comparison_id=oc2.comparison.id, outcome="both_bad", source="crowd", annotator="cat",
                        idempotency_key="l3")
        store.add_label(s, comparison_id=oc2.comparison.id, outcome="a", source="ai", annotator="gpt",
                        idempotency_key="l4", split="test")
        q = store.get_or_create_prompt(s, "Rank these")
        rr = [store.get_or_create_response(s, q, t) for t in ("r1", "r2", "r3", "r4")]
        # given order r3, r1, r4, r2 with ranks 2, 1, 3, 2 -> r1 best; r3 and r2 tie
        store.add_ranking(s, prompt_id=q.id, response_ids=[rr[2].id, rr[0].id, rr[3].id, rr[1].id],
                          ranks=[2, 1, 3, 2], source="expert", annotator="eve", idempotency_key="k1")
    return {"r": [x.id for x in r], "rr": [x.id for x in rr]}


def test_labels_and_rankings_become_pairs(sqlite_db):
    ids = _seed(sqlite_db)
    with sqlite_db.read() as s:
        ps = training_pairs(s)
    assert isinstance(ps, PairSet)
    assert all(isinstance(p, TrainingPair) for p in ps.pairs)
    label_pairs = [p for p in ps.pairs if p.label_id is not None]
    rank_pairs = [p for p in ps.pairs if p.ranking_id is not None]
    assert len(label_pairs) == 3 and ps.excluded == {"both_bad": 1}
    assert ps.n_labels == 4 and ps.n_rankings == 1
    first = label_pairs[0]
    assert (first.chosen, first.rejected) == ("good", "bad")
    assert (first.chosen_id, first.rejected_id) == (ids["r"][0], ids["r"][1])
    assert first.source == "expert" and first.annotator == "eve" and first.strength == 2 and not first.tie
    assert first.history == (("user", "hi"), ("assistant", "hello")) and first.category == "advice"
    tie = label_pairs[1]
    assert tie.tie and {tie.chosen, tie.rejected} == {"meh", "fine"} and tie.strength is None
    assert label_pairs[2].split == "test" and label_pairs[2].chosen == "meh"
    # ranking: K(K-1)/2 = 6 pairs, one tie, r1 beats everything, r4 loses to everything
    assert len(rank_pairs) == 6
    assert sum(p.tie for p in rank_pairs) == 1
    non_tie = {(p.chosen, p.rejected) for p in rank_pairs if not p.tie}
    assert non_tie == {("r1", "r3"), ("r1", "r4"), ("r1", "r2"), ("r3", "r4"), ("r2", "r4")}
    assert {frozenset((p.chosen, p.rejected)) for p in rank_pairs} == {
        frozenset(c) for c in itertools.combinations(["r1", "r2", "r3", "r4"], 2)
    }
    assert all(p.history == () for p in rank_pairs)


def test_filters_and_exclusions(sqlite_db):
    _seed(sqlite_db)
    with sqlite_db.read() as s:
        no_ties = training_pairs(s, include_ties=False)
        experts = training_pairs(s, sources=["expert"])
        test_only = training_pairs(s, split="test")
    assert not any(p.tie for p in no_ties.pairs)
    assert no_ties.excluded == {"both_bad": 1, "tie": 2}
    assert len(no_ties.pairs) == 2 + 5
    assert {p.source for p in experts.pairs} == {"expert"}
    assert experts.excluded["source_filtered"] == 3 and len(experts.pairs) == 7
    assert [p.label_id is not None for p in test_only.pairs] == [True]
    assert test_only.excluded["split_filtered"] == 3 + 6
    with pytest.raises(ValueError, match="unknown source"):
        with sqlite_db.read() as s:
            training_pairs(s, sources=["robots"])


def test_empty_database(sqlite_db):
    with sqlite_db.read() as s:
        ps = training_pairs(s)
    assert ps.pairs == [] and ps.n_labels == 0 and ps.n_rankings == 0 and ps.excluded == {}
