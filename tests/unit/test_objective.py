"""The training objective (``rm_engine.objective``): both modes minimise the same loss on the same scores, and that
loss is the one written down in the module docstring (checked against a plain numpy transcription)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from db.pairs import TrainingPair
from rm_engine.config import TrainConfig
from rm_engine.finetune.train import batch_loss, host_rows
from rm_engine.head.train import PairArrays, member_losses
from rm_engine.objective import (
    LengthScale,
    active_tie_model,
    length_start,
    member_weights,
    pair_terms,
    pair_weight,
    preference_loss,
)

T = torch.tensor
WORDS = "the cat sat on a mat while it rained outside and nobody came to look".split()


def _pairs() -> list[TrainingPair]:
    """Pairs of every kind: three sources, own weights, strengths, ties, and responses shared between pairs (so
    that a response counted once differs from one counted per pair)."""
    rng = np.random.default_rng(3)
    texts = [" ".join(WORDS[: int(k)]) for k in rng.integers(1, len(WORDS), size=9)]
    out = []
    for i in range(14):
        c, r = (int(x) for x in rng.choice(9, size=2, replace=False))
        out.append(TrainingPair(
            prompt_id=i % 5, prompt=f"prompt {i % 5}", history=(), category=None, chosen_id=c, rejected_id=r,
            chosen=texts[c], rejected=texts[r], source=("expert", "crowd", "ai")[i % 3], annotator=f"a{i % 4}",
            tie=i % 4 == 1, strength=(None, 1, 2)[i % 3], weight=(1.0, 0.5, 2.0)[i % 3]))
    return out


# --- a plain numpy transcription of the objective --------------------------------------------------------------

def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


def _log_probs(model: str, d: np.ndarray, param: float) -> tuple[np.ndarray, np.ndarray]:
    if model == "davidson":
        log_z = np.logaddexp(np.logaddexp(d / 2, -d / 2), param)
        return d / 2 - log_z, param - log_z
    eta = _softplus(np.array(param)) + 1e-6
    log_tie = 2 * eta + np.log(-np.expm1(-2 * eta)) - _softplus(eta - d) - _softplus(eta + d)
    return -_softplus(eta - d), log_tie


def _reference(cfg: TrainConfig, pairs: list[TrainingPair], r: dict[int, float], w: np.ndarray, tie_param: float,
               beta: float) -> float:
    """``sum w nll / sum w + coef * mean((r_c + r_r)^2)``, the likelihood on ``score + beta * length`` with lengths
    standardised over the distinct training responses."""
    distinct = {p.chosen_id: p.chosen for p in pairs} | {p.rejected_id: p.rejected for p in pairs}
    logs = np.log1p([len(t.split()) for t in distinct.values()])
    mean, std = logs.mean(), logs.std()

    def x(rid: int, text: str) -> float:
        return r[rid] + (beta * (math.log1p(len(text.split())) - mean) / std if cfg.length_covariate else 0.0)

    d = np.array([x(p.chosen_id, p.chosen) - x(p.rejected_id, p.rejected) for p in pairs])
    tie = np.array([p.tie for p in pairs])
    margin = np.array([0.0 if p.tie or not p.strength else cfg.margin_from_strength * p.strength for p in pairs])
    if tie.any():
        log_win, _ = _log_probs(cfg.tie_model, d - margin, tie_param)
        _, log_tie = _log_probs(cfg.tie_model, d, tie_param)
        nll = -np.where(tie, log_tie, log_win)
    else:
        nll = _softplus(-(d - margin))
    sums = np.array([r[p.chosen_id] + r[p.rejected_id] for p in pairs])
    return float((w * nll).sum() / w.sum() + cfg.center_coef * np.mean(sums ** 2))


SCENARIOS = {
    "davidson": dict(tie_model="davidson"),
    "rao_kupper": dict(tie_model="rao_kupper"),
    "bradley_terry": dict(ties="exclude"),
    "ensemble": dict(tie_model="davidson", ensemble=3, seed=4),
}


@pytest.mark.parametrize("length_covariate", [False, True], ids=["scores", "length_covariate"])
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_head_and_finetune_modes_minimise_the_same_loss_on_the_same_scores(scenario: str,
                                                                           length_covariate: bool) -> None:
    """The same pairs (sources, own weights, strengths, ties), the same scores, tie parameter and length
    coefficient: head mode's per-member loss and fine-tune mode's batch loss are the same number, and the
    objective's number."""
    cfg = TrainConfig(source_weights={"expert": 1.0, "crowd": 0.7, "ai": 0.3}, margin_from_strength=0.4,
                      center_coef=0.05, length_covariate=length_covariate, **SCENARIOS[scenario])
    pairs = [p for p in _pairs() if cfg.ties == "model" or not p.tie]  # as rm_engine.training.usable_pairs
    n, members = len(pairs), cfg.ensemble
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(9, members))  # response id -> one score per member
    tie_param, beta = rng.normal(size=members), rng.normal(size=members)
    tie_model = active_tie_model(cfg, [p.tie for p in pairs])
    assert (tie_model is None) == (scenario == "bradley_terry")

    # head mode: pairs as rows of a feature matrix (rm_engine.training._fit_head), members trained together
    arrays = PairArrays.of([p.chosen_id for p in pairs], [p.rejected_id for p in pairs], pair_terms(cfg, pairs))
    w_head = member_weights(cfg, arrays.weight)
    r = torch.as_tensor(scores, dtype=torch.float32)
    batch = {"tie": torch.as_tensor(arrays.tie), "margin": torch.as_tensor(arrays.margin),
             "len_c": None if arrays.length_c is None else torch.as_tensor(arrays.length_c),
             "len_r": None if arrays.length_r is None else torch.as_tensor(arrays.length_r)}
    head = member_losses(r[arrays.ci], r[arrays.ri], batch, torch.as_tensor(w_head, dtype=torch.float32), tie_model,
                         cfg.center_coef, None if tie_model is None else T(tie_param, dtype=torch.float32),
                         T(beta, dtype=torch.float32) if length_covariate else None)

    # fine-tune mode: each member trained on its own weights (rm_engine.training._fit_finetune), rows [c..., r...]
    w_ft = member_weights(cfg, [pair_weight(cfg, p) for p in pairs])
    np.testing.assert_allclose(w_head, w_ft, rtol=1e-6)
    for k in range(members):
        terms = pair_terms(cfg, pairs, weights=w_ft[k])
        rows = T(np.concatenate([scores[[p.chosen_id for p in pairs], k], scores[[p.rejected_id for p in pairs], k]]),
                 dtype=torch.float32)
        finetune = batch_loss(rows, host_rows(terms, range(n)), tie_model=tie_model,
                              tie_param=None if tie_model is None else T(tie_param[k], dtype=torch.float32),
                              beta=T(beta[k], dtype=torch.float32) if length_covariate else None,
                              center_coef=cfg.center_coef, weight_total=float(w_ft[k].sum()), count_total=n)
        want = _reference(cfg, pairs, dict(enumerate(scores[:, k])), w_ft[k], tie_param[k], beta[k])
        assert float(head[k]) == pytest.approx(float(finetune), rel=1e-5, abs=1e-6)
        assert float(finetune) == pytest.approx(want, rel=1e-5, abs=1e-6)
        if length_covariate:  # both modes start beta at the same length-only fit
            assert length_start(arrays.length_c, arrays.length_r, arrays.tie, w_head[k]) == pytest.approx(
                length_start(terms.length_c, terms.length_r, terms.tie, terms.weight), rel=1e-5, abs=1e-7)


def test_a_data_parallel_batch_adds_up_to_the_whole_batch() -> None:
    """Fine-tune ranks normalise by the global batch: the shards' losses sum to the whole batch's loss (DDP then
    averages the ranks' gradients of ``loss x world``)."""
    cfg = TrainConfig(mode="finetune", margin_from_strength=0.3, center_coef=0.1, length_covariate=True)
    pairs = _pairs()
    terms = pair_terms(cfg, pairs)
    n = len(pairs)
    rows = torch.randn(2 * n, generator=torch.Generator().manual_seed(1))
    kw = dict(tie_model="davidson", tie_param=T(0.2), beta=T(0.7), center_coef=cfg.center_coef,
              weight_total=float(terms.weight.sum()), count_total=n)
    whole = batch_loss(rows, host_rows(terms, range(n)), **kw)
    shards = [list(range(n))[rank::2] for rank in range(2)]
    parts = [batch_loss(torch.cat([rows[:n][s], rows[n:][s]]), host_rows(terms, s), **kw) for s in shards]
    assert float(sum(parts)) == pytest.approx(float(whole), rel=1e-6)


def test_preference_loss_hand_computed_with_length_and_centring() -> None:
    # d = (1 + 0.5 * 1) - (0 + 0.5 * -1) - margin 1 = 1: nll log(1 + e^-1) = 0.3132617, weight 1;
    # d = 0 - 0 = 0: nll log 2, weight 3. Centring on the scores alone: 0.1 * mean((1 + 0)^2, (0 + 0)^2) = 0.05.
    loss = preference_loss(T([1.0, 0.0]), T([0.0, 0.0]), weight=T([1.0, 3.0]), margin=T([1.0, 0.0]), beta=T(0.5),
                           length_c=T([1.0, 0.0]), length_r=T([-1.0, 0.0]), center_coef=0.1)
    assert float(loss) == pytest.approx((0.3132617 + 3 * math.log(2)) / 4 + 0.05, abs=1e-6)
    with pytest.raises(ValueError, match="lengths of both responses"):
        preference_loss(T([1.0]), T([0.0]), beta=T(0.5))
    # a batch without weight (a bootstrap member that drew none of its pairs) keeps only its centring
    assert float(preference_loss(T([1.0]), T([1.0]), weight=T([0.0]), center_coef=0.1)) == pytest.approx(0.4)


def test_lengths_are_standardised_over_the_distinct_training_responses() -> None:
    pairs = _pairs()
    scale = LengthScale.fit(pairs)
    distinct = {p.chosen_id: p.chosen for p in pairs} | {p.rejected_id: p.rejected for p in pairs}
    logs = np.log1p([len(t.split()) for t in distinct.values()])
    assert (scale.mean, scale.std) == pytest.approx((logs.mean(), logs.std()))
    terms = pair_terms(TrainConfig(length_covariate=True), pairs)
    assert terms.scale == scale and terms.length_c[0] == pytest.approx((math.log1p(len(pairs[0].chosen.split()))
                                                                         - scale.mean) / scale.std)
    held_out = pair_terms(TrainConfig(length_covariate=True), pairs[:2], scale=scale)  # validation: the same scale
    np.testing.assert_allclose(held_out.length_r, terms.length_r[:2])
    assert pair_terms(TrainConfig(), pairs).length_c is None


@pytest.mark.parametrize("weights,message", [([1.0], "1 loss weights for 14 training pairs"),
                                             ([1.0] * 13 + [float("nan")], "pair 13 is nan"),
                                             ([-1.0] + [1.0] * 13, "pair 0 is -1.0")])
def test_given_weights_are_checked(weights: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pair_terms(TrainConfig(), _pairs(), weights=weights)
