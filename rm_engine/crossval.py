"""K-fold cross-validation by prompt: how well a model trained on all the stored pairs generalises.

One validation split of a few hundred pairs moves by about 3 points with the seed; with little data that is the
whole difference between bands. Cross-validation trains K models, each on the pairs of K-1 prompt folds, and
scores the held-out fold with its own model, so every (non-test) pair is held out exactly once and the pooled
accuracy has a standard error of ``sqrt(p(1-p)/n)`` over all of them. Nothing is published: the K models are
measured and dropped (head mode reuses the cached features, so K folds cost K head fits; finetune mode trains
K times). Labels imported as ``--split test`` stay out of every fold.
"""
from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

from db.pairs import PairSet, TrainingPair
from db.stats import advice_for, size_tier
from rm_engine import metrics as M
from rm_engine.config import MAX_FOLDS, MIN_FOLDS, Cancelled, TrainConfig
from rm_engine.training import Progress, StopCheck, fit_splits, usable_pairs

_PER_PAIR = ("chosen", "rejected", "sources", "keys")  # a fold's per-pair lists: pooled, not reported


def check_folds(k: int) -> None:
    """``ValueError`` naming the range unless ``MIN_FOLDS <= k <= MAX_FOLDS``."""
    if not MIN_FOLDS <= k <= MAX_FOLDS:
        raise ValueError(f"cross-validation: folds must be between {MIN_FOLDS} and {MAX_FOLDS}, got {k}")


def fold_line(f: dict[str, Any]) -> str:
    """One fold's summary (an ``on_fold`` event) as a line, for the CLI and the job log."""
    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.1f}%"

    return (f"fold {f['fold'] + 1}/{f['k']}: held-out accuracy {pct(f['accuracy'])} on {f['n_held_out']} pairs "
            f"(train {pct(f['train_accuracy'])}, {f['n_train']} pairs, {f['seconds']:.1f} s)")


def assign_folds(prompt_ids: list[int], k: int, seed: int) -> dict[int, int]:
    """Prompt id -> fold in ``0..k-1``: prompts in the order of a seeded hash, dealt round-robin, so fold sizes
    (in prompts) differ by at most one and the assignment does not depend on the order ids arrive in."""
    order = sorted(set(prompt_ids), key=lambda pid: hashlib.sha256(f"cv:{seed}:{pid}".encode()).digest())
    return {pid: i % k for i, pid in enumerate(order)}


def pool_folds(folds: list[dict[str, Any]]) -> dict[str, Any]:
    """Pooled metrics of the folds' held-out decided pairs (``chosen``, ``rejected`` scores from each fold's own
    model, ``sources``): accuracy, tie rate, standard error, band, per source, and the per-fold spread."""
    chosen = [x for f in folds for x in f["chosen"]]
    rejected = [x for f in folds for x in f["rejected"]]
    out = M.pairwise_accuracy(chosen, rejected)
    acc, n = out["accuracy"], out["n"]
    out["std_error"] = M.accuracy_std_error(acc, n)
    out["sigma_above_chance"] = M.z_above_chance(acc, n)  # the band names a level; this, whether it is real at all
    out["band"] = M.accuracy_band(acc, n)
    out["per_source"] = M.grouped_accuracy(chosen, rejected, [s for f in folds for s in f["sources"]])
    accs = [f["accuracy"] for f in folds if f["accuracy"] is not None]
    out["fold_min"], out["fold_max"] = (min(accs), max(accs)) if accs else (None, None)
    return out


def cross_validate(settings: Any, cfg: TrainConfig, ps: PairSet, k: int = 5, *,
                   progress: Progress = None, should_stop: StopCheck = None,
                   on_fold: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train ``cfg`` K times on K-1 prompt folds of ``ps`` (its non-test pairs) and measure each model on the fold
    it did not see. ``progress`` gets each fit's events; ``on_fold`` each fold's summary as it finishes. Returns
    the pooled metrics (:func:`pool_folds`), ``folds`` (per fold: pairs trained on, held out, accuracy, train
    accuracy, seconds), ``k``, ``n_pairs``, the data-size advice and the config. ``ValueError`` when K is out of
    range or there are fewer prompts than folds."""
    return _run_folds(settings, cfg, ps, k, cfg.seed, progress, should_stop, on_fold)[0]


def compare_configs(settings: Any, cfg_a: TrainConfig, cfg_b: TrainConfig, ps: PairSet, k: int = 5, *,
                    progress: Progress = None, should_stop: StopCheck = None,
                    on_fold: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Cross-validate two configurations on the same folds (``cfg_a``'s seed deals them) and compare them pair by
    pair: ``{"a": ..., "b": ...}`` as :func:`cross_validate` returns them, and ``paired``, B's accuracy minus A's
    with its paired standard error (:func:`rm_engine.metrics.paired_difference`). Both must measure the same pairs
    (same sources and tie handling); ``on_fold`` summaries carry ``config`` ``"a"`` or ``"b"``."""
    runs = []
    for name, cfg in (("a", cfg_a), ("b", cfg_b)):
        tagged = None if on_fold is None else (lambda f, name=name: on_fold({**f, "config": name}))
        runs.append(_run_folds(settings, cfg, ps, k, cfg_a.seed, progress, should_stop, tagged))
    (res_a, out_a), (res_b, out_b) = runs
    if out_a.keys() != out_b.keys():
        raise ValueError("compare: the two configurations measure different pairs (sources or tie handling differ); "
                         "compare settings that train on the same labels")
    keys = sorted(out_a)
    return {"a": res_a, "b": res_b, "k": k,
            "paired": M.paired_difference([out_a[x] for x in keys], [out_b[x] for x in keys])}


PairKey = tuple[Any, Any, int, int]


def _run_folds(settings: Any, cfg: TrainConfig, ps: PairSet, k: int, fold_seed: int, progress: Progress,
               should_stop: StopCheck, on_fold: Callable[[dict[str, Any]], None] | None,
               ) -> tuple[dict[str, Any], dict[PairKey, bool]]:
    """:func:`cross_validate`'s work, with the folds dealt by ``fold_seed``; also returns whether each held-out
    decided pair was ranked right, keyed by (label id, ranking id, chosen id, rejected id)."""
    check_folds(k)
    cfg = cfg.resolved()
    pairs = [p for p in usable_pairs(cfg, ps) if p.split != "test"]
    prompts = sorted({p.prompt_id for p in pairs})
    if len(prompts) < k:
        raise ValueError(f"cross-validation: {k} folds need at least {k} prompts with labelled pairs, "
                         f"found {len(prompts)}")
    fold_of = assign_folds(prompts, k, fold_seed)
    folds: list[dict[str, Any]] = []
    outcomes: dict[PairKey, bool] = {}
    for f in range(k):
        if should_stop is not None and should_stop():
            raise Cancelled(f"cancelled before fold {f + 1} of {k}")
        held = [p for p in pairs if fold_of[p.prompt_id] == f]
        train = [p for p in pairs if fold_of[p.prompt_id] != f]
        if not [p for p in train if not p.tie]:
            raise ValueError(f"cross-validation: fold {f + 1} leaves no decided pairs to train on")
        t0 = time.perf_counter()
        # the held-out fold goes in as "test": scored, but never seen by early stopping or epoch selection
        fold_progress = None if progress is None else \
            (lambda ev, f=f: progress({**ev, "fold": f + 1, "folds": k}))
        fitted = fit_splits(settings, cfg, {"train": train, "val": [], "test": held}, progress=fold_progress,
                            should_stop=should_stop)
        fold = _fold_result(f, train, held, lambda rid, fitted=fitted: fitted.scores[rid][0])
        outcomes.update({key: c > r for key, c, r in zip(fold["keys"], fold["chosen"], fold["rejected"])})
        fold["seconds"] = round(time.perf_counter() - t0, 2)
        folds.append(fold)
        if on_fold is not None:
            on_fold({key: v for key, v in fold.items() if key not in _PER_PAIR} | {"k": k})
    pooled = pool_folds(folds)
    return {"k": k, "n_pairs": len(pairs), "n_prompts": len(prompts), **pooled,
            "folds": [{key: v for key, v in f.items() if key not in _PER_PAIR} for f in folds],
            "size_tier": size_tier(len(pairs)), "advice": advice_for(size_tier(len(pairs))),
            "config": cfg.to_dict()}, outcomes


def _fold_result(f: int, train: list[TrainingPair], held: list[TrainingPair],
                 score_of: Callable[[int], float]) -> dict[str, Any]:
    decided = [p for p in held if not p.tie]
    chosen, rejected = [score_of(p.chosen_id) for p in decided], [score_of(p.rejected_id) for p in decided]
    tr = [p for p in train if not p.tie]
    train_acc = M.pairwise_accuracy([score_of(p.chosen_id) for p in tr], [score_of(p.rejected_id) for p in tr])
    return {"fold": f, "n_train": len(train), "n_held_out": len(decided), "chosen": chosen, "rejected": rejected,
            "sources": [p.source for p in decided],
            "keys": [(p.label_id, p.ranking_id, p.chosen_id, p.rejected_id) for p in decided], "accuracy": M.pairwise_accuracy(chosen, rejected)["accuracy"],
            "train_accuracy": train_acc["accuracy"]}
