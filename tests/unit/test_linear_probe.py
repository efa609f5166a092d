"""The linear probe that can start a fine-tune's score head (LP-FT), on hand-computed numbers."""
from __future__ import annotations

import math

import pytest
import torch
from scipy.optimize import brentq

from rm_engine.config import TrainConfig
from rm_engine.finetune.linear_probe import fit_probe


@pytest.mark.parametrize("l2", [0.05, 0.25, 1.0])
def test_one_feature_matches_the_hand_derived_optimum(l2: float) -> None:
    # rows x = [1, 1, -1, -1]: mean 0, sample std sqrt(4/3); standardised difference d = 2 / sqrt(4/3)
    fc, fr = torch.tensor([[1.0], [1.0]]), torch.tensor([[-1.0], [-1.0]])
    sd = math.sqrt(4 / 3)
    d = 2 / sd
    # minimise softplus(-d v) + l2 v^2: -d sigmoid(-d v) + 2 l2 v = 0
    v = brentq(lambda v: -d / (1 + math.exp(d * v)) + 2 * l2 * v, 0.0, 50.0)
    w, b = fit_probe(fc, fr, torch.ones(2), l2=l2)
    assert w.shape == (1,)
    assert w.item() == pytest.approx(v / sd, rel=1e-5)
    assert b == pytest.approx(0.0, abs=1e-9)  # rows centred at 0 already


def test_bias_centres_the_rewards_and_direction_is_recovered() -> None:
    g = torch.Generator().manual_seed(0)
    true = torch.tensor([2.0, -1.0, 0.0])
    x = torch.randn(400, 3, generator=g) * torch.tensor([1.0, 3.0, 0.5]) + torch.tensor([5.0, -2.0, 1.0])
    a, c = x[:200], x[200:]
    better = (a @ true) > (c @ true)
    fc, fr = torch.where(better[:, None], a, c), torch.where(better[:, None], c, a)
    w, b = fit_probe(fc, fr, torch.ones(200), l2=1e-3)
    assert float(((fc - fr) @ w > 0).float().mean()) > 0.97
    cos = float(w @ true / (w.norm() * true.norm()))
    assert cos > 0.95
    rewards = torch.cat([fc, fr]) @ w + b
    assert abs(float(rewards.mean())) < 1e-4


def test_weights_decide_how_much_a_pair_counts() -> None:
    fc = torch.tensor([[1.0, 0.0], [0.5, 1.0], [0.0, 0.0]])
    fr = torch.tensor([[0.0, 1.0], [0.0, 0.0], [5.0, 5.0]])
    flipped_c, flipped_r = fc.clone(), fr.clone()
    flipped_c[2], flipped_r[2] = fr[2], fc[2]
    # at weight 0 the third pair's preference is ignored (its rows still enter the standardisation)
    w0, _ = fit_probe(fc, fr, torch.tensor([1.0, 1.0, 0.0]), l2=0.1)
    w0_flipped, _ = fit_probe(flipped_c, flipped_r, torch.tensor([1.0, 1.0, 0.0]), l2=0.1)
    torch.testing.assert_close(w0, w0_flipped, atol=1e-6, rtol=1e-5)
    # weighted, it pulls the probe towards preferring (0, 0) over (5, 5)
    w5, _ = fit_probe(fc, fr, torch.tensor([1.0, 1.0, 5.0]), l2=0.1)
    assert float(torch.tensor([5.0, 5.0]) @ w5) < float(torch.tensor([5.0, 5.0]) @ w0)
    # only relative weights matter
    w_scaled, _ = fit_probe(fc, fr, torch.tensor([3.0, 3.0, 0.0]), l2=0.1)
    torch.testing.assert_close(w0, w_scaled, atol=1e-6, rtol=1e-5)


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="shapes"):
        fit_probe(torch.zeros(3, 2), torch.zeros(2, 2), torch.ones(3))
    with pytest.raises(ValueError, match="sum to 0"):
        fit_probe(torch.zeros(2, 2), torch.ones(2, 2), torch.zeros(2))


def test_config_field() -> None:
    assert TrainConfig().head_init == "auto" and TrainConfig().resolved().head_init == "random"
    assert TrainConfig(pooling="rich").resolved().head_init == "probe"
    assert TrainConfig(pooling="rich", head_init="random").resolved().head_init == "random"
    assert TrainConfig.from_env({"RMSTUDIO_TRAIN_HEAD_INIT": "probe"}).head_init == "probe"
    with pytest.raises(ValueError, match="TrainConfig.head_init"):
        TrainConfig(head_init="zeros")
