"""Every metric against hand-computed numbers."""
from __future__ import annotations

import math

import pytest

from rm_engine.metrics import (
    accuracy_band,
    accuracy_std_error,
    bradley_terry_slope,
    calibration,
    fit_temperature,
    grouped_accuracy,
    length_bias,
    margin_distribution,
    overfitting_flag,
    pair_calibration,
    paired_difference,
    pairwise_accuracy,
    score_histograms,
    spearman_per_prompt,
    split_metrics,
    temperature_calibration,
    word_count,
)


def test_accuracy_is_strict_and_ties_reported_apart() -> None:
    # 1>0 yes, 2>2 no (equal), 3>1 yes, 0>1 no
    out = pairwise_accuracy([1, 2, 3, 0], [0, 2, 1, 1])
    assert out == {"accuracy": 0.5, "tie_rate": 0.25, "n": 4}
    # constant scores (the "stuck at 0.693" model) are 0% accurate, 100% tied, never 100% accurate
    assert pairwise_accuracy([0.3] * 5, [0.3] * 5) == {"accuracy": 0.0, "tie_rate": 1.0, "n": 5}
    assert pairwise_accuracy([], [])["accuracy"] is None
    with pytest.raises(ValueError, match="differ in length"):
        pairwise_accuracy([1, 2], [1])


def test_grouped_accuracy() -> None:
    out = grouped_accuracy([1, 2, 3, 0], [0, 2, 1, 1], ["expert", "expert", "crowd", None])
    assert out["expert"] == {"accuracy": 0.5, "tie_rate": 0.5, "n": 2}
    assert out["crowd"] == {"accuracy": 1.0, "tie_rate": 0.0, "n": 1}
    assert out["(none)"]["accuracy"] == 0.0


@pytest.mark.parametrize("acc,band", [(0.5, "random"), (0.65, "weak"), (0.7, "decent"), (0.85, "good"), (0.95, "suspicious")])
def test_bands(acc: float, band: str) -> None:
    out = accuracy_band(acc)
    assert out["band"] == band and out["message"]


@pytest.mark.parametrize("acc,n,above", [(0.58, 1300, True), (0.58, 100, False), (0.55, 1000, True), (0.55, 800, False),
                                         (0.5, 10**6, False)])
def test_band_under_60_says_whether_it_is_above_chance(acc: float, n: int, above: bool) -> None:
    # z = (acc - 0.5) / sqrt(0.25 / n): 0.58 on 1,300 pairs is 5.8 SE over chance, on 100 pairs 1.6; 0.55 crosses
    # 3 SE between 800 pairs (z 2.83) and 1,000 (z 3.16)
    out = accuracy_band(acc, n)
    assert out["band"] == "random"
    assert out["message"].startswith("above chance but barely") is above
    assert ("about chance" in out["message"]) is not above
    assert accuracy_band(acc)["message"] == accuracy_band(0.5)["message"]  # without n: the plain message


@pytest.mark.parametrize("acc,n,se", [(0.6, 260, math.sqrt(0.6 * 0.4 / 260)), (0.5, 100, 0.05), (1.0, 10, 0.0),
                                      (0.6, 0, None), (None, 10, None)])
def test_accuracy_std_error(acc: float | None, n: int, se: float | None) -> None:
    assert accuracy_std_error(acc, n) == (None if se is None else pytest.approx(se))
    if acc == 0.6 and n == 260:
        assert 0.030 < accuracy_std_error(acc, n) < 0.031  # why one 20% split of 1,300 pairs moves by ~3 points


def test_overfitting_flag() -> None:
    assert overfitting_flag(0.9, 0.75)["overfitting"] is True
    assert overfitting_flag(0.9, 0.75)["gap"] == pytest.approx(0.15)
    assert overfitting_flag(0.8, 0.75)["overfitting"] is False
    assert overfitting_flag(0.8, None)["overfitting"] is False


def test_spearman_per_prompt() -> None:
    out = spearman_per_prompt([
        ("p1", [3.0, 2.0, 1.0], [1, 2, 3]),  # perfect: best rank gets the top score
        ("p2", [1.0, 2.0, 3.0], [1, 2, 3]),  # reversed
        ("p3", [2.0, 1.0, 3.0], [1, 2, 3]),  # d = ranks of scores (2,1,3) vs (1,2,3): rho = 1 - 6*(1+1+4)/24 = -0.5
        ("p4", [1.0, 2.0], [1, 2]),  # fewer than 3 responses: not counted
        ("p5", [1.0, 1.0, 1.0], [1, 2, 3]),  # constant scores: undefined, skipped
    ])
    assert out["per_prompt"] == pytest.approx({"p1": 1.0, "p2": -1.0, "p3": -0.5})
    assert out["mean"] == pytest.approx(-0.5 / 3)
    assert out["n_prompts"] == 3 and out["skipped"] == 1


def test_calibration_hand_computed() -> None:
    out = calibration([0.1, 0.9, 0.8, 0.3], [0, 1, 0, 1], n_bins=10)
    # one item per bin: |0.1-0|, |0.9-1|, |0.8-0|, |0.3-1| -> (0.1+0.1+0.8+0.7)/4
    assert out["ece"] == pytest.approx(0.425)
    assert out["brier"] == pytest.approx((0.01 + 0.01 + 0.64 + 0.49) / 4)
    assert sum(b["count"] for b in out["bins"]) == 4 and len(out["bins"]) == 10
    with pytest.raises(ValueError):
        calibration([1.5], [1])


def test_pair_calibration_is_symmetric() -> None:
    out = pair_calibration([0.0, 0.0], [0.0, 0.0])  # p = 0.5 everywhere, half of the (symmetrised) outcomes are 1
    assert out["ece"] == pytest.approx(0.0) and out["brier"] == pytest.approx(0.25)
    p = 1 / (1 + math.exp(-2.0))
    out = pair_calibration([2.0], [0.0])
    assert out["brier"] == pytest.approx((1 - p) ** 2)  # both symmetrised rows have error 1 - p


def test_histograms_and_margins() -> None:
    h = score_histograms([1.0, 2.0, 3.0], [0.0, 1.0], bins=3)
    assert h["edges"][0] == 0.0 and h["edges"][-1] == 3.0
    assert sum(h["chosen"]) == 3 and sum(h["rejected"]) == 2
    m = margin_distribution([1.0, 2.0, 0.0, 5.0], [0.0, 3.0, 0.0, 1.0])  # margins 1, -1, 0, 4
    assert m["mean"] == pytest.approx(1.0) and m["median"] == pytest.approx(0.5)
    assert m["share_negative"] == pytest.approx(0.25) and sum(m["counts"]) == 4


def test_split_metrics_bundle() -> None:
    out = split_metrics([1, 2, 3, 0], [0, 2, 1, 1], sources=["a", "a", "b", "b"], annotators=["x"] * 4, categories=[None] * 4)
    assert out["accuracy"] == 0.5 and out["band"]["band"] == "random"
    assert set(out["per_source"]) == {"a", "b"} and out["per_annotator"]["x"]["n"] == 4
    assert 0.0 <= out["ece"] <= 1.0 and "score_hist" in out and "margins" in out
    assert "length_bias" not in out
    with_len = split_metrics([1, 2, 3, 0], [0, 2, 1, 1], lengths=([5, 1, 9, 2], [3, 4, 2, 2]))
    assert with_len["length_bias"] == length_bias([1, 2, 3, 0], [0, 2, 1, 1], [5, 1, 9, 2], [3, 4, 2, 2])


# Four pairs (chosen score, rejected score, chosen words, rejected words):
#   (1, 0, 10, 5): chosen longer, model right, prefers the longer
#   (0, 1, 3, 8):  chosen shorter, model wrong, prefers the longer
#   (5, 5, 4, 4):  same length: left out
#   (2, 1, 2, 6):  chosen shorter, model right, prefers the shorter
HAND = ([1, 0, 5, 2], [0, 1, 5, 1], [10, 3, 4, 2], [5, 8, 4, 6])


def test_length_bias_hand_computed() -> None:
    out = length_bias(*HAND, min_pairs=3)
    assert (out["n"], out["n_chosen_longer"], out["n_chosen_shorter"]) == (3, 1, 2)
    assert out["labels_prefer_longer"] == pytest.approx(1 / 3) and out["model_prefers_longer"] == pytest.approx(2 / 3)
    assert out["accuracy_chosen_longer"] == 1.0 and out["accuracy_chosen_shorter"] == 0.5
    assert out["excess"] == pytest.approx(1 / 3) and out["flag"] is True
    assert out["message"] == ("the model prefers the longer response in 67% of pairs, the labels in 33%; accuracy 100% "
                              "when the chosen response is the longer one, 50% when the chosen response is the shorter "
                              "one: a policy optimised against it can gain reward by padding its answers")


@pytest.mark.parametrize("kw,flag,says", [
    ({}, None, "only 3 pairs"),                                        # under min_pairs: no verdict
    ({"min_pairs": 3, "threshold": 0.5}, True, "by padding"),          # excess 0.33, but accuracy gap 0.5 > 0.3
    ({"min_pairs": 3, "threshold": 0.5, "gap_threshold": 0.6}, False, "in 67% of pairs, the labels in 33%"),
])
def test_length_bias_verdicts(kw: dict, flag: bool | None, says: str) -> None:
    out = length_bias(*HAND, **kw)
    assert out["flag"] is flag and says in out["message"]
    assert ("a policy" in out["message"]) is bool(flag)


def test_length_bias_towards_shorter_and_degenerate_inputs() -> None:
    out = length_bias([0, 0], [1, 1], [9, 9], [2, 2], min_pairs=2)  # chosen always longer, model picks the shorter
    assert out["model_prefers_longer"] == 0.0 and out["excess"] == -1.0 and out["accuracy_chosen_shorter"] is None
    assert out["message"] == ("the model prefers the shorter response in 100% of pairs, the labels in 0%; accuracy 0% "
                              "when the chosen response is the longer one: a policy optimised against it can gain "
                              "reward by shortening its answers")
    same = length_bias([1], [0], [3], [3])
    assert same["n"] == 0 and same["flag"] is None and same["labels_prefer_longer"] is None
    with pytest.raises(ValueError, match="lengths"):
        length_bias([1, 2], [0, 1], [3], [2, 4])
    assert word_count("  two\nwords ") == 2


def test_temperature_hand_computed() -> None:
    # margins 1, -1, 1, 1: the loss 3 softplus(-1/T) + softplus(1/T) is least where sigmoid(1/T) = 3/4, T = 1/ln 3
    assert fit_temperature([1, 0, 1, 1], [0, 1, 0, 0]) == pytest.approx(1 / math.log(3), rel=1e-5)
    # scaling every score scales T: the calibrated probabilities stay the same
    assert fit_temperature([4, 0, 4, 4], [0, 4, 0, 0]) == pytest.approx(4 / math.log(3), rel=1e-5)
    assert fit_temperature([], []) is None and fit_temperature([1, 2], [1, 2]) is None
    assert fit_temperature([2, 3], [0, 1]) == pytest.approx(0.05, rel=1e-3)  # all agree: the lower bound


def test_bradley_terry_slope_weighted_hand_computed() -> None:
    # one pair at +1 with weight 3, one at -1 with weight 1: sigmoid(b) = 3/4, b = ln 3
    assert bradley_terry_slope([1.0, -1.0], [3.0, 1.0]) == pytest.approx(math.log(3), rel=1e-6)
    assert bradley_terry_slope([-2.0, -2.0]) == pytest.approx(-20.0, rel=1e-3)  # all against: the lower bound
    assert bradley_terry_slope([0.0, 0.0]) is None and bradley_terry_slope([1.0], [0.0]) is None


def test_temperature_calibration_improves_overconfident_scores() -> None:
    rng = __import__("random").Random(0)
    margins = [rng.gauss(0.5, 1.0) for _ in range(400)]  # true P(chosen wins | margin m) = sigmoid(m)
    won = [rng.random() < 1 / (1 + math.exp(-m)) for m in margins]
    # the model's margins are 5x too large (over-confident); chosen = the side that won
    rc = [5 * m if w else -5 * m for m, w in zip(margins, won)]
    out = temperature_calibration(rc, [0.0] * len(rc))
    assert out["temperature"] == pytest.approx(5.0, rel=0.25) and out["n"] == 400
    assert out["ece_after"] < out["ece_before"] and out["brier_after"] < out["brier_before"]
    few = temperature_calibration(rc[:10], [0.0] * 10)
    assert few["temperature"] is None and few["ece_after"] is None and few["ece_before"] is not None


@pytest.mark.parametrize("stored,want_t", [({"temperature": {"temperature": 2.0}}, 2.0),
                                           ({"temperature": {"temperature": None}}, 1.0), ({}, 1.0)])
def test_reward_model_preference_probability_uses_the_stored_temperature(stored: dict, want_t: float) -> None:
    from rm_engine.serving.scoring import RewardModel

    model = RewardModel(1, "head", {"mean": 0.0, "std": 1.0}, {}, lambda rows, cache: None, metrics=stored)
    assert model.temperature == want_t
    assert model.preference_probability(3.0, 1.0) == pytest.approx(1 / (1 + math.exp(-2.0 / want_t)))
    assert model.preference_probability(1.0, 3.0) == pytest.approx(1 - model.preference_probability(3.0, 1.0))


def test_paired_difference_counts_only_disagreements() -> None:
    # 6 pairs: both right twice, both wrong once, only B right twice, only A right once -> B - A = (2 - 1) / 6
    a = [1, 1, 0, 0, 0, 1]
    b = [1, 1, 0, 1, 1, 0]
    out = paired_difference(a, b)
    d = [0, 0, 0, 1, 1, -1]
    mean = sum(d) / 6
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 5)
    assert out["difference"] == pytest.approx(1 / 6) and (out["a_only"], out["b_only"], out["n"]) == (1, 2, 6)
    assert out["std_error"] == pytest.approx(sd / math.sqrt(6)) and out["z"] == pytest.approx(mean / (sd / math.sqrt(6)))
    same = paired_difference(a, a)
    assert same["difference"] == 0 and same["std_error"] == 0 and same["z"] is None
    assert paired_difference([], [])["difference"] is None
    with pytest.raises(ValueError, match="differ in length"):
        paired_difference([1], [1, 0])
