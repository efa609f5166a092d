"""Annotator reliability from multi-rated pairs: decided votes, agreement with the others' majority (hand-computed),
one-coin Dawid-Skene recovering known accuracies, and the loss weights it gives."""
from __future__ import annotations

import math
import random

import pytest

from db.pairs import PairSet, TrainingPair
from rm_engine.quality.annotators import (
    agreement_with_others,
    annotator_quality,
    dawid_skene,
    decided_votes,
    quality_weights,
    weigh_annotators,
)


def _rec(item, rater, outcome, source="crowd"):
    return {"item": item, "rater": rater, "outcome": outcome, "source": source}


def test_decided_votes_keep_latest_decided_labels_on_shared_items() -> None:
    records = [_rec(1, "x", "a"), _rec(1, "y", "b"), _rec(1, "x", "b"),  # x changed their mind: b counts
               _rec(2, "x", "a"), _rec(2, "y", "tie"),  # one decided vote left on item 2: not shared
               _rec(3, "x", "both_bad"), _rec(3, "y", "a"), _rec(3, "z", "a")]
    assert sorted(decided_votes(records)) == [(1, "x", 0), (1, "y", 0), (3, "y", 1), (3, "z", 1)]


def test_agreement_with_the_others_majority_by_hand() -> None:
    votes = [(1, "x", 1), (1, "y", 1), (1, "z", 0),  # x: others y=1,z=0 tie -> skipped; y likewise; z: others 1,1 -> 0 vs 1
             (2, "x", 1), (2, "y", 1), (2, "z", 1),  # everyone agrees with the other two
             (3, "x", 0), (3, "y", 1)]  # two raters: each compared with the other
    assert agreement_with_others(votes) == {"x": (1, 2), "y": (1, 2), "z": (1, 2)}


def test_agreement_with_the_experts_by_hand() -> None:
    votes = [(1, "e1", 1), (1, "e2", 1), (1, "c", 0), (1, "d", 1),  # experts say 1: c disagrees, d agrees
             (2, "e1", 1), (2, "e2", 0), (2, "c", 1),  # experts split: no verdict on item 2 (for c; each expert
             #                                           is compared with the other expert)
             (3, "c", 1), (3, "d", 1)]  # no expert on item 3
    got = agreement_with_others(votes, judges={"e1", "e2"})
    assert got == {"c": (0, 1), "d": (1, 1), "e1": (1, 2), "e2": (1, 2)}


def test_dawid_skene_recovers_simulated_accuracies() -> None:
    rng = random.Random(0)
    truth = {i: rng.random() < 0.5 for i in range(600)}
    accuracy = {"careful": 0.95, "good": 0.85, "ok": 0.7, "spam1": 0.5, "spam2": 0.5}
    votes = [(i, r, int(t if rng.random() < p else not t)) for i, t in truth.items() for r, p in accuracy.items()]
    est, posterior = dawid_skene(votes)
    for r, p in accuracy.items():
        assert est[r] == pytest.approx(p, abs=0.05), r
    right = sum((posterior[i] > 0.5) == t for i, t in truth.items()) / len(truth)
    majority = sum((sum(v for j, _, v in votes if j == i) > 2.5) == t for i, t in truth.items()) / len(truth)
    assert right > majority + 0.05  # weighting by reliability beats the plain vote (0.94 vs 0.86 here)


def test_weights_typical_one_chance_zero_few_labels_absent() -> None:
    rng = random.Random(1)
    records = []
    for i in range(300):
        t = rng.random() < 0.5
        for r, p in (("a1", 0.95), ("a2", 0.85), ("a3", 0.85), ("a4", 0.75), ("spam", 0.5)):
            records.append(_rec(i, r, "a" if (t if rng.random() < p else not t) else "b"))
    records += [_rec(i, "newbie", "a") for i in range(5)]  # 5 overlapping labels: not measured
    quality = {q.annotator: q for q in annotator_quality(records)}
    assert list(quality)[-1] in ("spam", "newbie") and quality["spam"].weight < 0.2
    assert quality["a1"].weight > 1.0 > quality["a4"].weight > 0.5
    typical = sorted(q.accuracy for q in quality.values() if q.measured)[2]  # equal label counts: the median of 5
    assert quality["a1"].weight == pytest.approx((2 * quality["a1"].accuracy - 1) / (2 * typical - 1))
    assert not quality["newbie"].measured and quality["newbie"].weight == 1.0
    assert set(quality_weights(list(quality.values()))) == {"a1", "a2", "a3", "a4", "spam"}


def test_everyone_at_chance_weighs_no_one() -> None:
    rng = random.Random(2)
    records = [_rec(i, r, rng.choice("ab")) for i in range(200) for r in ("x", "y", "z")]
    quality = annotator_quality(records)
    assert all(not q.measured and q.weight == 1.0 for q in quality) and quality_weights(quality) == {}


def test_no_overlap_no_estimate() -> None:
    assert annotator_quality([_rec(1, "x", "a"), _rec(2, "y", "b")]) == []
    assert dawid_skene([]) == ({}, {})
    q = annotator_quality([_rec(1, "x", "a"), _rec(1, "y", "a")])
    assert all(math.isnan(x.agrees_with_others) is False for x in q)  # two raters agreeing: compared once each


def test_weigh_annotators_multiplies_pair_weights() -> None:
    def pair(annotator: str, weight: float = 1.0) -> TrainingPair:
        return TrainingPair(prompt_id=1, prompt="p", history=(), category=None, chosen_id=1, rejected_id=2,
                            chosen="c", rejected="r", source="crowd", annotator=annotator, weight=weight)

    rng = random.Random(3)
    records = []
    for i in range(200):
        t = rng.random() < 0.5
        for r, p in (("good", 0.9), ("fair", 0.8), ("spam", 0.5)):
            records.append(_rec(i, r, "a" if (t if rng.random() < p else not t) else "b"))
    ps = PairSet(pairs=[pair("good"), pair("spam", 0.5), pair("unseen")])
    weights = weigh_annotators(ps, records)
    assert [p.weight for p in ps.pairs] == pytest.approx([weights["good"], 0.5 * weights["spam"], 1.0])
    assert ps.extra["annotator_weights"] == {k: round(v, 4) for k, v in sorted(weights.items())}
