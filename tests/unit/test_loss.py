"""Losses against hand-computed numbers (``rm_engine.loss`` and the objective built on it)."""
from __future__ import annotations

import math

import pytest
import torch

from rm_engine.loss import (
    bt_loss,
    davidson_log_probs,
    davidson_tie_loss,
    init_tie_param,
    rao_kupper_log_probs,
    rao_kupper_loss,
)
from rm_engine.objective import centering_penalty, preference_loss

T = torch.tensor


def test_bt_loss_hand_computed() -> None:
    # -log sigmoid(1) = log(1 + e^-1)
    assert float(bt_loss(T([1.0]), T([0.0]))) == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)
    assert float(bt_loss(T([0.0]), T([0.0]))) == pytest.approx(math.log(2), abs=1e-6)  # the "stuck" 0.693
    # diffs +1 and -1 with weights 1 and 3: (0.313262 + 3 * 1.313262) / 4
    got = float(bt_loss(T([1.0, 0.0]), T([0.0, 1.0]), weight=T([1.0, 3.0])))
    assert got == pytest.approx((0.3132617 + 3 * 1.3132617) / 4, abs=1e-5)


def test_bt_margin_shifts_the_difference() -> None:
    assert float(bt_loss(T([3.0]), T([0.0]), margin=T([2.0]))) == pytest.approx(float(bt_loss(T([1.0]), T([0.0]))), abs=1e-6)


def test_bt_is_fp32_and_stable_for_huge_margins() -> None:
    r_c = torch.tensor([200.0, -200.0], dtype=torch.bfloat16)
    out = bt_loss(r_c, torch.zeros(2, dtype=torch.bfloat16))
    assert out.dtype == torch.float32
    assert float(out) == pytest.approx(100.0, rel=1e-3)  # (0 + 200) / 2, no inf/nan


def test_zero_weights_are_an_error() -> None:
    with pytest.raises(ValueError, match="sum to zero"):
        bt_loss(T([1.0]), T([0.0]), weight=T([0.0]))


def test_davidson_hand_computed() -> None:
    # nu = 1 (log_nu = 0), d = 0: win = tie = lose = 1/3
    lw, lt = davidson_log_probs(T([0.0]), T(0.0))
    assert math.exp(float(lw)) == pytest.approx(1 / 3, abs=1e-6)
    assert math.exp(float(lt)) == pytest.approx(1 / 3, abs=1e-6)
    # d = 2: win = e / (e + 1/e + 1) = 0.665241, tie = 1 / 4.086161 = 0.244728
    loss = davidson_tie_loss(T([2.0, 2.0]), T([0.0, 0.0]), T([False, True]), T(0.0))
    assert float(loss) == pytest.approx((-math.log(0.665241) - math.log(0.244728)) / 2, abs=1e-5)


def test_rao_kupper_hand_computed() -> None:
    # theta = 2 (eta = log 2 = softplus(0)); pi_i = 2, pi_j = 1: win 0.5, tie 0.3, lose 0.2
    d = T([math.log(2.0)])
    lw, lt = rao_kupper_log_probs(d, T(0.0))
    assert math.exp(float(lw)) == pytest.approx(0.5, abs=1e-5)
    assert math.exp(float(lt)) == pytest.approx(0.3, abs=1e-5)
    lw_rev, _ = rao_kupper_log_probs(-d, T(0.0))
    assert math.exp(float(lw_rev)) == pytest.approx(0.2, abs=1e-5)
    loss = rao_kupper_loss(T([math.log(2.0)] * 2), T([0.0, 0.0]), T([False, True]), T(0.0))
    assert float(loss) == pytest.approx((-math.log(0.5) - math.log(0.3)) / 2, abs=1e-5)


def test_tie_models_reduce_to_bradley_terry() -> None:
    r_c, r_r = T([1.5, -0.3, 0.2]), T([0.0, 0.4, 0.1])
    no_ties = T([False, False, False])
    bt = float(bt_loss(r_c, r_r))
    assert float(davidson_tie_loss(r_c, r_r, no_ties, T(-30.0))) == pytest.approx(bt, abs=1e-5)
    assert float(rao_kupper_loss(r_c, r_r, no_ties, T(-30.0))) == pytest.approx(bt, abs=1e-4)


@pytest.mark.parametrize("tie_model", ["davidson", "rao_kupper"])
def test_tie_parameter_is_learned(tie_model: str) -> None:
    # equal scores, half the pairs tied: the ML tie probability at d = 0 is 0.5
    n = 40
    tie = torch.arange(n) % 2 == 0
    p = torch.nn.Parameter(T(init_tie_param(tie_model, 0.05)))
    opt = torch.optim.Adam([p], lr=0.1)
    for _ in range(400):
        loss = preference_loss(torch.zeros(n), torch.zeros(n), tie=tie, tie_model=tie_model, tie_param=p)
        opt.zero_grad()
        loss.backward()
        opt.step()
    logp = davidson_log_probs if tie_model == "davidson" else rao_kupper_log_probs
    _, lt = logp(T([0.0]), p.detach())
    assert math.exp(float(lt)) == pytest.approx(0.5, abs=0.02)


def test_init_tie_param_matches_share() -> None:
    _, lt = davidson_log_probs(T([0.0]), T(init_tie_param("davidson", 0.2)))
    assert math.exp(float(lt)) == pytest.approx(0.2, abs=1e-4)
    _, lt = rao_kupper_log_probs(T([0.0]), T(init_tie_param("rao_kupper", 0.2)))
    assert math.exp(float(lt)) == pytest.approx(0.2, abs=1e-3)


def test_centering_penalty_hand_computed() -> None:
    # 0.01 * mean((1+3)^2, (2-1)^2) = 0.01 * 8.5
    assert float(centering_penalty(T([1.0, 2.0]), T([3.0, -1.0]), 0.01)) == pytest.approx(0.085, abs=1e-7)
    assert float(centering_penalty(T([1.0]), T([3.0]), 0.0)) == 0.0


def test_preference_loss_needs_a_tie_model_for_ties() -> None:
    with pytest.raises(ValueError, match="tie"):
        preference_loss(T([1.0, 0.0]), T([0.0, 0.0]), tie=T([False, True]))
    total = preference_loss(T([1.0]), T([0.0]), center_coef=0.01)
    assert float(total) == pytest.approx(math.log(1 + math.exp(-1)) + 0.01, abs=1e-6)
