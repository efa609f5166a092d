"""``train_and_publish``: stored pairs -> split -> train -> metrics -> registry files -> version row.

* Pairs come from ``db.pairs.training_pairs`` (``cfg.sources`` filters; ``both_bad`` excluded and counted; ties
  kept for the tie model or excluded, by ``cfg.ties``).
* Labels stored as ``split="test"`` are never trained on; they are reported as the ``test`` split.
* The rest is split by prompt (no prompt on both sides): a prompt is in validation when
  ``sha256(seed:prompt_id)`` falls below ``val_fraction``, so the split is deterministic for a seed and a prompt
  never moves from validation into training as labels accumulate.
* What each mode minimises (pair weights, margins, ties, centring, ensemble members' bootstrap weights, the length
  covariate) is :mod:`rm_engine.objective`.
* Metrics (train / val / test; overall, per source, annotator and category), the overfitting flag, Spearman over
  rankings, calibration and score histograms are stored with the version, together with the normalization
  statistics: the scores of every response in the pair set at training time (mean, std, quantiles).
* A run whose training loss ends non-finite (or whose head never improved on its initial weights) raises
  :class:`NotConverged` before any file is written (:func:`check_converged`): it is never published.
* ``should_stop()`` is checked between steps: :class:`Cancelled` is raised and nothing is published.
  ``publish_guard(session)`` runs inside the publishing transaction; False -> no row, files removed.
"""
from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from sqlalchemy.orm import Session

from db.analytics import agreement_records, multi_rated_labels
from db.config import Settings
from db.models import ModelVersion
from db.pairs import PairSet, TrainingPair, training_pairs
from db.session import Database
from db.versions import insert_version, store_response_scores
from rm_engine import metrics as M
from rm_engine.backbone import TRUNCATION_POLICY, resolve_backbone
from rm_engine.config import Cancelled, TrainConfig
from rm_engine.device import device_label, resolve_device
from rm_engine.evaluation import evaluate_pairs
from rm_engine.faults import fault_point
from rm_engine.finetune import ddp, distributed
from rm_engine.finetune.train import train_finetune
from rm_engine.head.features import FeatureExtractor
from rm_engine.head.train import PairArrays, train_heads
from rm_engine.normalize import combine_members, compute_norm_stats, member_centers
from rm_engine.objective import PairTerms, member_weights, pair_terms, pair_weight
from rm_engine.progress import eta_s
from rm_engine.quality.annotators import weigh_annotators
from rm_engine.versions.model_store import copy_for_db, store_copy
from rm_engine.versions.registry import commit_dir, remove_version_files, stage_dir, write_head_version, write_json

__all__ = ["Cancelled", "NotConverged", "train_and_publish", "fit_pairs", "split_pairs", "Fitted", "resolve_device"]

Progress = Callable[[dict[str, Any]], None] | None
StopCheck = Callable[[], bool] | None


def _in_val(prompt_id: int, seed: int, val_fraction: float) -> bool:
    h = hashlib.sha256(f"{seed}:{prompt_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 < val_fraction


def split_pairs(pairs: Sequence[TrainingPair], val_fraction: float, seed: int) -> dict[str, list[TrainingPair]]:
    """``{"train", "val", "test"}``: test = stored test labels; val = whole prompts chosen by a seeded hash.
    With at least two training prompts and ``val_fraction > 0`` validation gets at least one prompt."""
    out: dict[str, list[TrainingPair]] = {"train": [], "val": [], "test": []}
    rest = []
    for p in pairs:
        (out["test"] if p.split == "test" else rest).append(p)
    prompts = sorted({p.prompt_id for p in rest})
    val_ids = {pid for pid in prompts if _in_val(pid, seed, val_fraction)} if val_fraction > 0 else set()
    if val_fraction > 0 and len(prompts) >= 2:
        if not val_ids:  # tiny data: the prompt with the smallest hash
            val_ids = {min(prompts, key=lambda pid: hashlib.sha256(f"{seed}:{pid}".encode()).digest())}
        if len(val_ids) == len(prompts):
            val_ids.discard(max(prompts, key=lambda pid: hashlib.sha256(f"{seed}:{pid}".encode()).digest()))
    for p in rest:
        (out["val"] if p.prompt_id in val_ids else out["train"]).append(p)
    return out


INNER_SPLIT_MIN_PAIRS = 200  # below this, early stopping watches the validation split itself


@dataclass
class Fitted:
    """A trained model before publishing: ``write(settings) -> relative path`` writes its files; ``scores`` maps
    response id -> (mean, std) over ensemble members."""

    mode: str
    backbone: dict[str, Any]
    write: Callable[[Settings], str]
    scores: dict[int, tuple[float, float]]
    info: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"


def _ensemble_scores(ids: Sequence[int], S: np.ndarray) -> tuple[list[float] | None, dict[int, tuple[float, float]]]:
    """The members' centres (None for one member) and response id -> (raw, std) of their centred scores
    (``rm_engine.normalize.combine_members``), from the ``(n, K)`` member scores of the responses ``ids``."""
    centers = member_centers(S) if S.shape[1] > 1 else None
    raw, std = combine_members(S, centers)
    return centers, {rid: (float(raw[i]), float(std[i])) for i, rid in enumerate(ids)}


def _response_table(pairs: Sequence[TrainingPair]) -> tuple[list[int], list[tuple[str, Any, str]]]:
    """Unique responses of the pairs: ids and (prompt, history, text) rows."""
    ids: list[int] = []
    rows: list[tuple[str, Any, str]] = []
    seen: set[int] = set()
    for p in pairs:
        for rid, text in ((p.chosen_id, p.chosen), (p.rejected_id, p.rejected)):
            if rid not in seen:
                seen.add(rid)
                ids.append(rid)
                rows.append((p.prompt, p.history, text))
    return ids, rows


def _fit_head(settings: Settings, cfg: TrainConfig, splits: dict[str, list[TrainingPair]], device: str,
              progress: Progress, should_stop: StopCheck) -> Fitted:

    ref = resolve_backbone(cfg.backbone, settings)
    quantize = bool(cfg.quantize and device == "cpu")
    fx = FeatureExtractor(settings, ref, max_length=cfg.max_length, quantize=quantize, device=device)
    everything = splits["train"] + splits["val"] + splits["test"]
    ids, rows = _response_table(everything)
    t0 = time.time()
    X = fx.features_for(rows, cfg.features, progress=progress, should_stop=should_stop)
    t_feat = time.time() - t0
    row_of = {rid: i for i, rid in enumerate(ids)}

    def arrays(ps: list[TrainingPair], terms: PairTerms) -> PairArrays:
        return PairArrays.of([row_of[p.chosen_id] for p in ps], [row_of[p.rejected_id] for p in ps], terms)

    # Early stopping must not look at the validation pairs it is reported on: with enough data it uses an inner
    # split of the training prompts (15%); with little data it falls back to the validation split (then the
    # reported validation accuracy is slightly optimistic, and the metrics say so).
    fit_train, stop_on, es = splits["train"], splits["val"], "val" if splits["val"] else "none"
    if len(splits["train"]) >= INNER_SPLIT_MIN_PAIRS:
        inner = split_pairs(splits["train"], 0.15, cfg.seed + 1000)
        if inner["val"] and inner["train"]:
            fit_train, stop_on, es = inner["train"], inner["val"], "inner-train-split"
    terms = pair_terms(cfg, fit_train)  # lengths standardised over the training responses, validation's too
    val = arrays(stop_on, pair_terms(cfg, stop_on, scale=terms.scale)) if stop_on else None
    res = train_heads(X, arrays(fit_train, terms), cfg, val=val, progress=progress, should_stop=should_stop)
    S = res.head.score(X)
    centers, scores = _ensemble_scores(ids, S)
    tie_param = None if res.tie_param is None else [float(t) for t in res.tie_param]
    file_config = {
        "kind": "head",
        "head": res.head.meta(),
        "backbone": ref.to_dict(),
        "features": cfg.features,
        "pooling": "mean",
        "max_length": cfg.max_length,
        "quantize": quantize,
        "truncation": TRUNCATION_POLICY,
        "tie_model": res.tie_model,
        "tie_param": tie_param,
        "train_config": cfg.to_dict(),
        "member_centers": centers,
    }
    tensors = dict(res.head.state_dict())

    def write(s: Settings) -> str:
        return write_head_version(s, tensors, file_config)

    info = {"early_stopping": es, "n_fit_pairs": len(fit_train), "best_epoch": res.best_epoch, "epochs_run": res.epochs_run, "seconds_features": round(t_feat, 3),
            "seconds_train": round(res.seconds, 3), "tie_param": tie_param, "tie_model": res.tie_model,
            "history": res.history[-50:], "feature_dim": int(X.shape[1]), "n_responses": len(ids),
            "member_centers": centers,
            "length_coef": None if res.length_coef is None else [float(b) for b in res.length_coef],
            "final_train_loss": res.train_loss, "best_val_loss": res.val_loss}
    return Fitted(mode="head", backbone=ref.to_dict(), write=write, scores=scores, info=info, device=device)


def _fit_finetune(settings: Settings, cfg: TrainConfig, splits: dict[str, list[TrainingPair]], device: str,
                  progress: Progress, should_stop: StopCheck) -> Fitted:
    ref = resolve_backbone(cfg.backbone, settings)
    train = splits["train"]
    models, histories = [], []
    for k, w in enumerate(member_weights(cfg, [pair_weight(cfg, p) for p in train])):
        member_cfg = cfg.replace(seed=cfg.seed + k)
        if distributed.is_distributed():  # rank 0 of a torchrun launch: the other ranks follow
            res = ddp.lead(member_cfg, train, splits["val"], weights=w.tolist(), device=device, progress=progress,
                           should_stop=should_stop, settings=settings)
        elif cfg.gpus > 1:
            # CPU ranks (gloo) share this machine's cores: split the threads between them
            threads = max(1, torch.get_num_threads() // cfg.gpus) if device == "cpu" else None
            res = ddp.train_finetune_ddp(member_cfg, train, splits["val"], gpus=cfg.gpus, weights=w.tolist(), device=device,
                                     progress=progress, should_stop=should_stop, settings=settings,
                                     threads_per_rank=threads)
        else:
            res = train_finetune(member_cfg, train, splits["val"], weights=w.tolist(), device=device,
                                 progress=progress, should_stop=should_stop, settings=settings)
        models.append(res.model)
        histories.append(res.history)
    ids, rows = _response_table(train + splits["val"] + splits["test"])
    if should_stop is not None and should_stop():
        raise Cancelled("cancelled before scoring")
    S = np.stack([m.score([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]) for m in models], axis=1) \
        if rows else np.zeros((0, len(models)))
    centers, scores = _ensemble_scores(ids, S)
    meta = models[0].meta
    file_config = {"kind": "finetune", "members": len(models), "member_centers": centers, "backbone": ref.to_dict(),
                   "max_length": cfg.max_length,
                   "truncation": TRUNCATION_POLICY, "train_config": cfg.to_dict(),
                   "tie_model": getattr(meta, "tie_model", None), "tie_param": getattr(meta, "tie_param", None)}

    def write(s: Settings) -> str:
        import shutil

        tmp = stage_dir(s)
        try:
            for k, m in enumerate(models):
                m.save(tmp / f"member-{k}")
            write_json(tmp / "config.json", file_config)
            return commit_dir(s, tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    last = histories[0][-1] if histories and histories[0] else {}
    info = {"history": histories, "pairs_per_s": last.get("pairs_per_s"), "tokens_per_s": last.get("tokens_per_s"),
            "n_responses": len(ids), "tie_param": file_config["tie_param"], "tie_model": file_config["tie_model"],
            "member_centers": centers}
    info["gpus"] = cfg.gpus
    info["final_train_loss"] = [h[-1].get("train_loss") if h else None for h in histories]
    if cfg.length_covariate:
        info["length_coef"] = [h[-1].get("length_coef") if h else None for h in histories]
    return Fitted(mode="finetune", backbone=ref.to_dict(), write=write, scores=scores, info=info,
                  device=device_label(device, cfg.gpus))


def _snapshot(ps: PairSet, splits: dict[str, list[TrainingPair]], cfg: TrainConfig) -> dict[str, Any]:
    label_ids = sorted({p.label_id for p in ps.pairs if p.label_id is not None})
    ranking_ids = sorted({p.ranking_id for p in ps.pairs if p.ranking_id is not None})
    return {
        "n_pairs": len(ps.pairs),
        "n_train": len(splits["train"]),
        "n_val": len(splits["val"]),
        "n_test": len(splits["test"]),
        "n_labels": ps.n_labels,
        "n_rankings": ps.n_rankings,
        "excluded": dict(ps.excluded),
        "label_ids_sha256": hashlib.sha256(",".join(map(str, label_ids)).encode()).hexdigest(),
        "max_label_id": label_ids[-1] if label_ids else None,
        "ranking_ids_sha256": hashlib.sha256(",".join(map(str, ranking_ids)).encode()).hexdigest(),
        "val_prompts": len({p.prompt_id for p in splits["val"]}),
        "train_prompts": len({p.prompt_id for p in splits["train"]}),
        "split": {"method": "prompt-hash", "seed": cfg.seed, "val_fraction": cfg.val_fraction},
        "sources": sorted({p.source for p in ps.pairs}),
        **({"annotator_weights": ps.extra["annotator_weights"]} if "annotator_weights" in ps.extra else {}),
    }


def usable_pairs(cfg: TrainConfig, ps: PairSet) -> list[TrainingPair]:
    """The pairs ``cfg`` trains and measures on: ties only when they train through the tie model, ``cfg.sources``
    only when given."""
    pairs = [p for p in ps.pairs if cfg.ties == "model" or not p.tie]
    return pairs if cfg.sources is None else [p for p in pairs if p.source in cfg.sources]


def fit_splits(settings: Settings, cfg: TrainConfig, splits: dict[str, list[TrainingPair]], *,
               progress: Progress = None, should_stop: StopCheck = None) -> Fitted:
    """Train ``cfg.mode`` on ``splits["train"]`` (``"val"`` for early stopping and per-epoch validation; every
    split's responses get scores in ``Fitted.scores``) on ``cfg.device``; nothing is written."""
    fit = _fit_head if cfg.mode == "head" else _fit_finetune
    fitted = fit(settings, cfg, splits, resolve_device(cfg.device), progress, should_stop)
    check_converged(fitted.info, cfg)
    return fitted


class NotConverged(ValueError):
    """Training ended with a loss that is not finite (or a head never improved on its starting weights): such a
    model is never published or measured."""


def check_converged(info: dict[str, Any], cfg: TrainConfig) -> None:
    """Raise :class:`NotConverged` unless every member's final training loss (``info["final_train_loss"]``) is
    finite and, in head mode with a validation split, every member improved its validation loss at least once
    (``info["best_val_loss"]``: a member that never did keeps its random initial weights, which score at chance)."""
    hint = f"nothing was published; try a lower learning rate (it was {cfg.lr})"
    for k, loss in enumerate(info.get("final_train_loss") or []):
        if loss is not None and not math.isfinite(loss):
            raise NotConverged(f"training diverged: member {k + 1} of {cfg.ensemble} ended with training loss "
                               f"{loss}; {hint}")
    for k, loss in enumerate(info.get("best_val_loss") or []):
        if not math.isfinite(loss):
            raise NotConverged(f"training never improved on its initial weights: member {k + 1} of {cfg.ensemble} "
                               f"had no finite validation loss; {hint}")


def load_pair_set(db: Database, cfg: TrainConfig) -> PairSet:
    """The stored pairs ``cfg`` asks for, weighted by annotator reliability when ``cfg.annotator_weights``."""
    with db.read() as s:
        ps = training_pairs(s, sources=cfg.sources, include_ties=cfg.ties == "model")
        if cfg.annotator_weights:
            weigh_annotators(ps, agreement_records(multi_rated_labels(s)))
    return ps


def fit_pairs(settings: Settings, cfg: TrainConfig, ps: PairSet, *, progress: Progress = None,
              should_stop: StopCheck = None) -> tuple[Fitted, dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Train on a :class:`PairSet` without touching the database: ``(fitted, metrics, norm_stats, snapshot)``."""
    cfg = cfg.resolved()
    splits = split_pairs(usable_pairs(cfg, ps), cfg.val_fraction, cfg.seed)
    if not [p for p in splits["train"] if not p.tie]:
        raise ValueError(
            f"nothing to train on: {len(ps.pairs)} pairs, {len(splits['test'])} of them test-only, "
            f"excluded {dict(ps.excluded) or 'none'}; label some comparisons first"
        )
    fitted = fit_splits(settings, cfg, splits, progress=progress, should_stop=should_stop)
    if progress is not None:
        progress({"phase": "evaluate", "step": 0, "total": 1, "loss": None, "val_accuracy": None, "eta_s": None})

    def score_of(rid: int) -> float:
        return fitted.scores[rid][0]

    metrics: dict[str, Any] = {name: evaluate_pairs(splits[name], score_of) for name in ("train", "val", "test")}
    metrics["overfitting"] = M.overfitting_flag(metrics["train"].get("accuracy"), metrics["val"].get("accuracy"))
    held = [p for p in splits["val"] if not p.tie]  # the temperature is fitted on held-out pairs only
    metrics["temperature"] = {"fitted_on": "val", **M.temperature_calibration([score_of(p.chosen_id) for p in held],
                                                                              [score_of(p.rejected_id) for p in held])}
    metrics["ensemble_std_mean"] = float(np.mean([s[1] for s in fitted.scores.values()])) if fitted.scores else None
    metrics["excluded"] = dict(ps.excluded)
    metrics["training"] = fitted.info
    metrics["truncation"] = TRUNCATION_POLICY
    norm = compute_norm_stats([s[0] for s in fitted.scores.values()])
    norm["reference"] = "responses of the training pair set (all splits)"
    snap = _snapshot(ps, splits, cfg)
    return fitted, metrics, norm, snap


PROGRESS_KEYS = ("step", "total", "loss", "val_accuracy", "eta_s", "phase")


def progress_adapter(progress: Progress) -> Progress:
    """Wrap a progress callback so every event carries the contract's keys (``step, total, loss, val_accuracy,
    eta_s, phase``; missing ones are None) and an ``eta_s`` estimated from the phase's own rate."""
    if progress is None:
        return None
    started: dict[str, tuple[float, int]] = {}

    def emit(ev: dict[str, Any]) -> None:
        out = {k: ev.get(k) for k in PROGRESS_KEYS}
        out.update({k: v for k, v in ev.items() if k not in out})
        phase, step, total = out["phase"], out["step"] or 0, out["total"] or 0
        now = time.monotonic()
        t0, s0 = started.setdefault(str(phase), (now, int(step)))
        if out["eta_s"] is None and total and now > t0:
            out["eta_s"] = eta_s(now - t0, step - s0, total - s0)
        progress(out)

    return emit


def train_and_publish(
    db: Database,
    settings: Settings,
    cfg: TrainConfig,
    *,
    progress: Progress = None,
    should_stop: StopCheck = None,
    publish_guard: Callable[[Session], bool] | None = None,
    job_id: int | None = None,
) -> ModelVersion | None:
    """Train on the stored pairs and publish a version (files first, then the row); see the module docstring.

    Returns the new :class:`ModelVersion`, or None when ``publish_guard`` refused (files removed). Raises
    :class:`Cancelled` when ``should_stop()`` turned true (nothing published)."""

    cfg = cfg.resolved()
    progress = progress_adapter(progress)
    if progress is not None:
        progress({"phase": "load", "step": 0, "total": 1, "loss": None, "val_accuracy": None, "eta_s": None})
    ps = load_pair_set(db, cfg)
    fitted, metrics, norm, snap = fit_pairs(settings, cfg, ps, progress=progress, should_stop=should_stop)
    if should_stop is not None and should_stop():
        raise Cancelled("cancelled before publishing")
    if progress is not None:
        progress({"phase": "publish", "step": 0, "total": 1, "loss": None, "val_accuracy": metrics["val"].get("accuracy"), "eta_s": None})
    rel = fitted.write(settings)
    fault_point("publish:files-moved")
    accepted = True
    try:
        copy = copy_for_db(settings, rel)  # other machines restore the files from it (rm_engine/versions/model_store.py)
        with db.write() as s:
            if publish_guard is not None and not publish_guard(s):
                accepted = False
                version = None
            else:
                version = insert_version(
                    s, mode=fitted.mode, backbone=cfg.backbone, path=rel, config={**cfg.to_dict(), "truncation": TRUNCATION_POLICY},
                    metrics=metrics,
                    norm_stats=norm, data_snapshot={**snap, "backbone": fitted.backbone}, n_pairs=snap["n_pairs"],
                    n_labels=snap["n_labels"], ensemble_size=cfg.ensemble, job_id=job_id, device=fitted.device,
                )
                store_response_scores(s, version.id, fitted.scores)
                store_copy(s, version.id, copy)
    except BaseException:
        remove_version_files(settings, rel)
        raise
    if not accepted:
        remove_version_files(settings, rel)
        return None
    return version
