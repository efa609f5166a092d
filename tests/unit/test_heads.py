"""Ensemble heads on features: learning, ensembles, ties, early stopping, speed, round trip."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rm_engine.config import Cancelled, TrainConfig
from rm_engine.head.train import EnsembleHead, PairArrays, train_heads
from rm_engine.objective import LengthScale, member_weights


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matrices: one thread avoids oversubscribing the shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def synthetic(n_pairs: int, dim: int = 32, noise: float = 0.0, seed: int = 0):
    """Responses with features X; the chosen one has the larger hidden linear score (label noise optional)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(2 * n_pairs, dim)).astype(np.float32)
    s = X @ rng.normal(size=dim)
    a, b = np.arange(0, 2 * n_pairs, 2), np.arange(1, 2 * n_pairs, 2)
    better_a = s[a] > s[b]
    flip = rng.random(n_pairs) < noise
    better_a = better_a ^ flip
    ci, ri = np.where(better_a, a, b), np.where(better_a, b, a)
    cut = int(0.8 * n_pairs)
    return X, PairArrays.build(ci[:cut], ri[:cut]), PairArrays.build(ci[cut:], ri[cut:])


def val_acc(head: EnsembleHead, X: np.ndarray, p: PairArrays) -> float:
    s = head.score(X).mean(1)
    return float(np.mean(s[p.ci] > s[p.ri]))


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_heads_learn_a_linear_preference(kind: str) -> None:
    X, tr, va = synthetic(600)
    res = train_heads(X, tr, TrainConfig(head=kind, epochs=200 if kind == "linear" else 60, weight_decay=1e-3,
                                         lr=3e-3 if kind == "linear" else 1e-2))
    assert val_acc(res.head, X, va) > 0.85
    s = res.head.score(X).mean(1)
    assert np.mean(s[tr.ci] != s[tr.ri]) == 1.0  # chosen and rejected never get the same score


def test_ensemble_members_differ_and_bootstrap() -> None:
    X, tr, va = synthetic(300, noise=0.2)
    w = member_weights(TrainConfig(ensemble=3), tr.weight)
    assert w.shape == (3, len(tr)) and np.allclose(w.sum(1), len(tr))  # multinomial counts of n draws
    assert not np.allclose(w[0], w[1])
    assert np.allclose(member_weights(TrainConfig(), tr.weight), tr.weight[None, :])  # K = 1: no bootstrap
    res = train_heads(X, tr, TrainConfig(ensemble=3, epochs=100), val=va)
    S = res.head.score(X)
    assert S.shape == (len(X), 3)
    assert float(S.std(axis=1).mean()) > 1e-3


def test_early_stopping_on_noisy_labels() -> None:
    X, tr, va = synthetic(200, dim=64, noise=0.45)
    res = train_heads(X, tr, TrainConfig(epochs=2000, lr=1e-2, weight_decay=0.0, patience=10), val=va)
    assert res.epochs_run < 2000 and res.best_epoch <= res.epochs_run
    assert res.history and "val_accuracy" in res.history[-1]


def test_tie_parameter_learned_with_ties() -> None:
    X, tr, va = synthetic(200)
    tie = np.zeros(len(tr), bool)
    tie[::4] = True
    tr2 = PairArrays.build(tr.ci, tr.ri, tie=tie)
    res = train_heads(X, tr2, TrainConfig(ensemble=2, epochs=50, tie_model="davidson"))
    assert res.tie_param is not None and res.tie_param.shape == (2,) and res.tie_model == "davidson"
    plain = train_heads(X, tr, TrainConfig(epochs=5))
    assert plain.tie_param is None and plain.tie_model is None
    va_ties = PairArrays.build(va.ci, va.ri, tie=np.arange(len(va)) % 3 == 0)  # ties in validation only
    assert train_heads(X, tr, TrainConfig(epochs=5), val=va_ties).tie_model == "davidson"
    with pytest.raises(ValueError, match="tie pairs need a tie model"):  # excluded ties are left out before
        train_heads(X, tr2, TrainConfig(epochs=5, ties="exclude"))


def test_weights_change_the_fit() -> None:
    X, tr, _ = synthetic(100)
    w = np.ones(len(tr), np.float32)
    w[: len(tr) // 2] = 0.0
    a = train_heads(X, tr, TrainConfig(epochs=30))
    b = train_heads(X, PairArrays.build(tr.ci, tr.ri, weight=w), TrainConfig(epochs=30))
    assert not np.allclose(a.head.score(X), b.head.score(X))


def test_state_round_trip_gives_identical_scores() -> None:
    X, tr, _ = synthetic(100)
    res = train_heads(X, tr, TrainConfig(head="mlp", ensemble=2, epochs=20))
    state = {k: v.clone() for k, v in res.head.state_dict().items()}
    again = EnsembleHead.from_state(res.head.meta(), state)
    assert np.array_equal(again.score(X), res.head.score(X))


def test_cancel_between_epochs() -> None:
    X, tr, _ = synthetic(50)
    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    with pytest.raises(Cancelled):
        train_heads(X, tr, TrainConfig(epochs=100), should_stop=stop)


def test_ten_thousand_cached_pairs_retrain_to_accuracy() -> None:
    """A 10k-pair retrain on cached features; its time is measured by ``bench/cpu.py`` (BENCHMARKS.md), not here."""
    X, tr, va = synthetic(10_000, dim=384)
    res = train_heads(X, tr, TrainConfig(epochs=150, weight_decay=1e-3), val=va)
    assert val_acc(res.head, X, va) > 0.9


def _length_and_quality(n_pairs: int, seed: int = 0):
    """Responses whose features show their length (column 0) and quality (column 1) plus noise; the labels follow
    both (P(chosen) = sigmoid(3 dlen + 3 dquality))."""
    rng = np.random.default_rng(seed)
    length = rng.normal(size=2 * n_pairs)
    quality = rng.normal(size=2 * n_pairs)
    X = np.column_stack([length, quality, rng.normal(size=(2 * n_pairs, 6))]).astype(np.float32)
    a, b = np.arange(0, 2 * n_pairs, 2), np.arange(1, 2 * n_pairs, 2)
    logit = 3 * (length[a] - length[b]) + 3 * (quality[a] - quality[b])
    a_wins = rng.random(n_pairs) < 1 / (1 + np.exp(-logit))
    ci, ri = np.where(a_wins, a, b), np.where(a_wins, b, a)
    cut = int(0.8 * n_pairs)
    return X, length, quality, PairArrays.build(ci[:cut], ri[:cut]), PairArrays.build(ci[cut:], ri[cut:])


@pytest.mark.parametrize("members", [1, 2])
def test_length_covariate_takes_the_length_preference_out_of_the_score(members: int) -> None:
    X, length, quality, tr, va = _length_and_quality(1500)
    cfg = TrainConfig(ensemble=members, epochs=300, lr=0.05, weight_decay=0.1, patience=30)
    plain = train_heads(X, tr, cfg, val=va)
    z = LengthScale.of(length[np.unique(np.concatenate([tr.ci, tr.ri]))])  # over the training responses

    def with_lengths(p: PairArrays) -> PairArrays:
        return PairArrays.build(p.ci, p.ri, length_c=(length[p.ci] - z.mean) / z.std,
                                length_r=(length[p.ri] - z.mean) / z.std)

    covar = train_heads(X, with_lengths(tr), cfg.replace(length_covariate=True), val=with_lengths(va))
    assert plain.length_coef is None and covar.length_coef.shape == (members,) and (covar.length_coef > 0).all()

    def corr(res, x) -> float:  # how much of the score follows x
        return float(np.corrcoef(res.head.score(X).mean(1), x)[0, 1])

    assert corr(plain, length) > 0.5 and corr(plain, quality) > 0.5  # the plain score rewards length as much
    assert abs(corr(covar, length)) < 0.5 * corr(plain, length)     # with the covariate it mostly does not
    assert corr(covar, quality) > 0.8                                # and it still ranks by quality
    with pytest.raises(ValueError, match="carry no response lengths"):
        train_heads(X, tr, cfg.replace(length_covariate=True), val=va)
