"""Agreement statistics against hand-computed and textbook numbers."""
from __future__ import annotations

import math

import pytest

from rm_engine.quality.agreement import (
    annotator_pair_kappas,
    cohen_kappa,
    fleiss_kappa,
    krippendorff_alpha_nominal,
    majority,
    outcome_category,
    ratings_from_outcomes,
    source_agreement,
    summarize,
)


def _two_raters(table: dict[tuple[str, str], int]) -> tuple[list[str], list[str]]:
    x: list[str] = []
    y: list[str] = []
    for (a, b), n in table.items():
        x += [a] * n
        y += [b] * n
    return x, y


def test_cohen_textbook_examples() -> None:
    # p_o = 35/50 = 0.7; p_e = 0.5*0.6 + 0.5*0.4 = 0.5; kappa = 0.4
    x, y = _two_raters({("y", "y"): 20, ("y", "n"): 5, ("n", "y"): 10, ("n", "n"): 15})
    assert cohen_kappa(x, y) == pytest.approx(0.4)
    # p_o = 0.6; p_e = 0.6*0.7 + 0.4*0.3 = 0.54; kappa = 0.06 / 0.46
    x, y = _two_raters({("y", "y"): 45, ("y", "n"): 15, ("n", "y"): 25, ("n", "n"): 15})
    assert cohen_kappa(x, y) == pytest.approx(0.06 / 0.46)


def test_cohen_perfect_opposite_and_degenerate() -> None:
    assert cohen_kappa(list("abab"), list("abab")) == pytest.approx(1.0)
    assert cohen_kappa(list("abab"), list("baba")) == pytest.approx(-1.0)
    assert math.isnan(cohen_kappa([], []))
    assert math.isnan(cohen_kappa(list("aaa"), list("aaa")))  # one category: chance agreement is 1
    with pytest.raises(ValueError, match="3 and 2"):
        cohen_kappa(list("abc"), list("ab"))


FLEISS_TEXTBOOK = [  # Fleiss (1971) as in the Wikipedia article: 10 items, 14 raters, 5 categories
    [0, 0, 0, 0, 14],
    [0, 2, 6, 4, 2],
    [0, 0, 3, 5, 6],
    [0, 3, 9, 2, 0],
    [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0],
    [3, 2, 6, 3, 0],
    [2, 5, 3, 2, 2],
    [6, 5, 2, 1, 0],
    [0, 2, 2, 3, 7],
]


def test_fleiss_textbook_example() -> None:
    # P_bar = 0.378, P_e = 0.2133, kappa = 0.210
    assert fleiss_kappa(FLEISS_TEXTBOOK) == pytest.approx(0.20993, abs=1e-4)


def test_fleiss_two_raters_hand_computed() -> None:
    # 4 items, 2 raters: agree, agree, disagree, agree -> P_bar = 0.75; shares a = 5/8, b = 3/8
    # P_e = 25/64 + 9/64 = 34/64; kappa = (0.75 - 34/64) / (1 - 34/64) = 14/30
    counts = [[2, 0], [0, 2], [1, 1], [2, 0]]
    assert fleiss_kappa(counts) == pytest.approx(14 / 30)
    # single-rating items are ignored
    assert fleiss_kappa(counts + [[1, 0]]) == pytest.approx(14 / 30)
    assert math.isnan(fleiss_kappa([[1, 0]]))
    assert math.isnan(fleiss_kappa([[3, 0], [2, 0]]))
    with pytest.raises(ValueError, match="one count per category"):
        fleiss_kappa([[1, 1], [1, 1, 0]])


def test_krippendorff_textbook_example() -> None:
    # Krippendorff (2011), "Computing Krippendorff's alpha-reliability", 4 coders x 12 units, nominal: 0.743
    N = None
    coders = [
        [1, 2, 3, 3, 2, 1, 4, 1, 2, N, N, N],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, N, 3],
        [N, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, N],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, N],
    ]
    units = [[c[u] for c in coders] for u in range(12)]
    assert krippendorff_alpha_nominal(units) == pytest.approx(0.743, abs=5e-4)


def test_krippendorff_hand_computed_and_degenerate() -> None:
    # units (a,a), (b,b), (a,b): coincidences o_aa=2, o_bb=2, o_ab=o_ba=1; n=6, n_a=n_b=3
    # D_o = 2/6; D_e = 2*3*3/(6*5) = 0.6; alpha = 1 - (1/3)/0.6 = 4/9
    assert krippendorff_alpha_nominal([["a", "a"], ["b", "b"], ["a", "b"]]) == pytest.approx(4 / 9)
    assert krippendorff_alpha_nominal([["a", "a"], ["b", "b"]]) == pytest.approx(1.0)
    assert math.isnan(krippendorff_alpha_nominal([["a", "a"], ["a", None]]))
    assert math.isnan(krippendorff_alpha_nominal([]))


def test_outcome_categories_and_ties() -> None:
    assert outcome_category("both_bad", ties=True) == "tie"
    assert outcome_category("tie", ties=False) is None
    assert outcome_category("a", ties=False) == "a"
    with pytest.raises(ValueError, match="unknown outcome 'left'"):
        outcome_category("left", ties=True)


RECORDS = [
    # item 1: three raters agree on a; item 2: two b one tie; item 3: a vs b conflict; item 4: one rater only
    {"item": 1, "rater": "ann", "outcome": "a", "source": "crowd"},
    {"item": 1, "rater": "bob", "outcome": "a", "source": "crowd"},
    {"item": 1, "rater": "gpt", "outcome": "a", "source": "ai"},
    {"item": 2, "rater": "ann", "outcome": "b", "source": "crowd"},
    {"item": 2, "rater": "bob", "outcome": "tie", "source": "crowd"},
    {"item": 2, "rater": "gpt", "outcome": "b", "source": "ai"},
    {"item": 3, "rater": "ann", "outcome": "a", "source": "crowd"},
    {"item": 3, "rater": "bob", "outcome": "b", "source": "crowd"},
    {"item": 4, "rater": "ann", "outcome": "both_bad", "source": "crowd"},
]


def test_ties_change_the_numbers() -> None:
    with_ties = summarize(RECORDS, ties=True)
    without = summarize(RECORDS, ties=False)
    assert with_ties.n_ratings == 9 and without.n_ratings == 7
    assert with_ties.n_multi_rated == 3 and without.n_multi_rated == 3
    # with ties, 3 categories: item counts a/b/tie = [3,0,0], [0,2,1], [1,1,0]
    assert with_ties.fleiss_kappa == pytest.approx(fleiss_kappa([[3, 0, 0], [0, 2, 1], [1, 1, 0]]))
    # without ties: [3,0], [0,2], [1,1]
    assert without.fleiss_kappa == pytest.approx(fleiss_kappa([[3, 0], [0, 2], [1, 1]]))
    assert without.fleiss_kappa != pytest.approx(with_ties.fleiss_kappa)


def test_annotator_pairs_and_sources() -> None:
    ratings = ratings_from_outcomes(RECORDS, ties=False)
    pairs = {(p.first, p.second): p for p in annotator_pair_kappas(ratings, min_common=1)}
    # ann & bob share items 1 and 3 without ties (item 2 lost bob's tie): (a,a), (a,b)
    assert pairs[("ann", "bob")].n_items == 2
    assert pairs[("ann", "bob")].percent_agreement == pytest.approx(0.5)
    assert pairs[("ann", "gpt")].n_items == 2 and pairs[("ann", "gpt")].percent_agreement == pytest.approx(1.0)
    src = {(p.first, p.second): p for p in source_agreement(ratings)}
    # crowd majority: item 1 a, item 2 b (only ann left), item 3 split -> none; ai: item 1 a, item 2 b
    assert src[("ai", "crowd")].n_items == 2
    assert src[("ai", "crowd")].percent_agreement == pytest.approx(1.0)
    assert src[("ai", "crowd")].kappa == pytest.approx(1.0)


def test_majority_and_repeated_rater() -> None:
    assert majority(["a", "b"]) is None
    assert majority(["a", "b", "a"]) == "a"
    recs = [{"item": 1, "rater": "ann", "outcome": "a"}, {"item": 1, "rater": "ann", "outcome": "b"}]
    assert [r.value for r in ratings_from_outcomes(recs, ties=True)] == ["b"]
    changed_to_tie = recs + [{"item": 1, "rater": "ann", "outcome": "tie"}]
    assert ratings_from_outcomes(changed_to_tie, ties=False) == []  # the latest judgment is a tie: dropped


def test_summary_tables() -> None:
    from rm_engine.quality.agreement import summary_tables

    t = summary_tables([summarize(RECORDS, ties=True), summarize(RECORDS, ties=False)])
    assert list(t["overall"]["ties"]) == ["with ties"] * 2 + ["without ties"] * 2
    assert t["overall"]["value"].iloc[0] == pytest.approx(summarize(RECORDS, ties=True).fleiss_kappa)
    assert set(t["sources"]["first"]) == {"ai"} and set(t["sources"]["second"]) == {"crowd"}
    # with ties all 3 pairs share >= 2 items; without ties bob and gpt share only item 1 (bob's tie is dropped)
    assert len(t["annotators"]) == 5


def test_pair_kappas_match_cohen_on_random_data() -> None:
    import random

    rng = random.Random(7)
    recs = [{"item": i, "rater": r, "outcome": rng.choice("aab") if r != "z" else rng.choice("ab")}
            for i in range(300) for r in ("x", "y", "z") if rng.random() < 0.8]
    ratings = ratings_from_outcomes(recs, ties=True)
    got = {(p.first, p.second): p for p in annotator_pair_kappas(ratings)}
    per = {r: {x.item: x.value for x in ratings if x.rater == r} for r in ("x", "y", "z")}
    for a, b in (("x", "y"), ("x", "z"), ("y", "z")):
        common = sorted(set(per[a]) & set(per[b]))
        assert got[(a, b)].n_items == len(common)
        assert got[(a, b)].kappa == pytest.approx(cohen_kappa([per[a][i] for i in common], [per[b][i] for i in common]))


def test_vicuna80_human_and_gpt4_verdicts(shared_data) -> None:
    """Real data: 1,760 crowd and 1,600 GPT-4 verdicts on 800 pairs (several humans per pair)."""
    import gzip
    import json

    recs = []
    with gzip.open(shared_data / "vicuna80" / "comparisons.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            first, second = sorted((r["model_a"], r["model_b"]))
            outcome = r["winner"]
            if outcome in ("a", "b") and r["model_a"] != first:  # orient every verdict on the sorted pair
                outcome = "b" if outcome == "a" else "a"
            recs.append({"item": (r["question_id"], first, second), "rater": r["annotator"], "outcome": outcome,
                         "source": r["source"]})
    assert len(recs) == 3360
    with_ties, without = summarize(recs, ties=True), summarize(recs, ties=False)
    assert with_ties.n_multi_rated == 800
    src_t, src_n = with_ties.sources[0], without.sources[0]
    assert (src_t.first, src_t.second) == ("ai", "crowd")
    # Dropping ties raises agreement, as in MT-Bench (66% with ties vs ~80% without for GPT-4 vs humans).
    assert 0.6 < src_t.percent_agreement < src_n.percent_agreement < 0.9
    assert 0.2 < with_ties.fleiss_kappa < without.fleiss_kappa < 0.7
    assert 0.2 < with_ties.krippendorff_alpha < without.krippendorff_alpha < 0.7
    humans = {p.second for p in with_ties.annotator_pairs if p.first == "gpt-4"}
    assert len(humans) >= 3 and all(h.startswith("human-") for h in humans)


def test_agreement_by_guidelines_revision_hand_computed() -> None:
    from rm_engine.quality.agreement import by_guidelines

    def recs(rev, units):
        return [{"item": f"{rev}-{i}", "rater": f"r{j}", "outcome": o, "source": "crowd", "guidelines": rev}
                for i, unit in enumerate(units) for j, o in enumerate(unit)]

    old = recs(None, [["a", "a"], ["b", "b"], ["a", "b"]])  # alpha 4/9 (the hand-computed case above)
    new = recs(2, [["a", "a"], ["b", "b"], ["b", "b"]])  # perfect agreement
    lonely = recs(3, [["a"]])  # one label per pair under revision 3: nothing to compare
    table = by_guidelines(old + new + lonely)
    without = table[table["ties"] == "without ties"].set_index("guidelines")
    assert list(without.index) == ["none", "revision 2"]
    assert without.loc["none", "krippendorff_alpha"] == pytest.approx(4 / 9)
    assert without.loc["revision 2", "krippendorff_alpha"] == pytest.approx(1.0)
    assert list(without["items"]) == [3, 3]
