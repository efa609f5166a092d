"""Loaded reward models: scores with normalization and ensemble std, fallback on damaged files, an RL reward
function, and cached scores of stored responses.

``RewardModel.load(db, settings, "latest" | id).score(prompt, responses)`` returns one :class:`Score` per
response: the raw score (for an ensemble, the mean of the members' centred scores), its z-score / sigmoid /
percentile against the statistics stored with the version (see ``rm_engine/normalize.py``) and the std of the
centred members (0 for a single model). Batches are grouped by length (the feature extractor sorts by tokens;
fine-tuned models use token-budget batches).
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from db.config import Settings
from db.session import Database
from db.versions import (
    VersionNotFound,
    count_responses,
    get_version,
    parse_version_ref,
    responses_for_scoring,
    store_response_scores,
    versions_before,
)
from rm_engine import metrics as M
from rm_engine.backbone import BackboneError, History, resolve_backbone
from rm_engine.config import Cancelled
from rm_engine.finetune.model import FinetunedModel
from rm_engine.head.features import FeatureExtractor
from rm_engine.head.train import EnsembleHead
from rm_engine.metrics import sigmoid
from rm_engine.normalize import combine_members, normalize
from rm_engine.serving.reward_requests import completion_rows
from rm_engine.versions.model_store import with_files
from rm_engine.versions.registry import ModelFilesError, load_head_files, load_version_config

log = logging.getLogger(__name__)
Progress = Callable[[dict[str, Any]], None] | None


@dataclass(frozen=True)
class Score:
    """One response's score: ``raw`` (ensemble: mean of the centred members), ``z``, ``sigmoid``, ``percentile``
    (0..100), ``std``."""

    raw: float
    z: float
    sigmoid: float
    percentile: float
    std: float

    def to_dict(self) -> dict[str, float]:
        return {"raw": self.raw, "z": self.z, "sigmoid": self.sigmoid, "percentile": self.percentile, "std": self.std}


class RewardModel:
    """A loaded model version. Thread-safe for scoring (one lock around the forward passes)."""

    def __init__(self, version_id: int, mode: str, norm_stats: dict[str, Any], file_config: dict[str, Any],
                 scorer: Callable[[Sequence[tuple[str, History, str]], bool], np.ndarray], *, path: str = "",
                 metrics: dict[str, Any] | None = None) -> None:
        self.version_id = version_id
        self.mode = mode
        self.norm_stats = norm_stats
        self.file_config = file_config
        self.path = path
        self.metrics = metrics or {}
        self._scorer = scorer
        self._lock = threading.Lock()
        self.fallback_message: str | None = None

    @classmethod
    def load(cls, db: Database, settings: Settings, version: str | int | None = "latest", *, device: str = "cpu") -> RewardModel:
        """Load a version's files (verified against their manifest; safetensors only). Raises
        :class:`VersionNotFound` or :class:`ModelFilesError` naming the version."""
        with db.read() as s:
            v = get_version(s, version)
            vid, mode, path, norm, metrics = v.id, v.mode, v.path, dict(v.norm_stats or {}), dict(v.metrics or {})
        return cls._from_files(db, settings, vid, mode, path, norm, metrics, device)

    @classmethod
    def _from_files(cls, db: Database, settings: Settings, vid: int, mode: str, path: str, norm: dict[str, Any],
                    metrics: dict[str, Any], device: str) -> RewardModel:
        """Load from the version's folder, restored from the database copy where it is missing or damaged."""
        return with_files(db, settings, vid, path,
                          lambda: cls._from_folder(settings, vid, mode, path, norm, metrics, device))

    @classmethod
    def _from_folder(cls, settings: Settings, vid: int, mode: str, path: str, norm: dict[str, Any],
                     metrics: dict[str, Any], device: str) -> RewardModel:
        if mode == "head":
            tensors, fcfg = load_head_files(settings, path, vid)
            scorer = _head_scorer(settings, vid, tensors, fcfg, device)
        elif mode == "finetune":
            d, fcfg = load_version_config(settings, path, vid)
            scorer = _finetune_scorer(vid, d, fcfg, device)
        else:
            raise ModelFilesError(f"model version {vid}: unknown mode {mode!r}")
        return cls(vid, mode, norm, fcfg, scorer, path=path, metrics=metrics)

    @property
    def members(self) -> int:
        fc = self.file_config
        return int(fc.get("head", {}).get("members", fc.get("members", 1)))

    @property
    def temperature(self) -> float:
        """``T`` of the version's calibrated preference probability (fitted on validation pairs; 1.0 without)."""
        t = (self.metrics.get("temperature") or {}).get("temperature")
        return float(t) if t else 1.0

    def preference_probability(self, raw_a: float, raw_b: float) -> float:
        """Calibrated probability that a labeler prefers the response scored ``raw_a`` over the one scored
        ``raw_b``: ``sigmoid((raw_a - raw_b) / T)``."""

        return float(sigmoid([(raw_a - raw_b) / self.temperature])[0])

    def score_matrix(self, rows: Sequence[tuple[str, History, str]], *, cache: bool = False) -> np.ndarray:
        """``(n, K)`` raw member scores of (prompt, history, response) rows."""
        if not rows:
            return np.zeros((0, self.members), dtype=np.float32)
        with self._lock:
            return np.asarray(self._scorer(rows, cache), dtype=np.float64)

    def combine(self, S: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(raw, std)`` per row of :meth:`score_matrix`: the members' mean and std, each member centred by the
        centre stored with the version (versions saved before centring: the plain mean)."""
        return combine_members(S, self.file_config.get("member_centers"))

    def rewards(self, rows: Sequence[tuple[str, History, str]]) -> np.ndarray:
        """The raw score of each (prompt, history, response) row (for an ensemble, the centred members' mean)."""
        return self.combine(self.score_matrix(rows))[0] if rows else np.zeros(0)

    def _scores(self, S: np.ndarray) -> list[Score]:
        raw, std = self.combine(S)
        n = normalize(raw, self.norm_stats)
        return [Score(float(raw[i]), n["z"][i], n["sigmoid"][i], n["percentile"][i], float(std[i])) for i in range(len(raw))]

    def score(self, prompt: str, responses: Sequence[str], history: History = None) -> list[Score]:
        """Scores of several responses to one prompt (with optional earlier chat turns)."""
        return self._scores(self.score_matrix([(prompt, history, r) for r in responses]))

    def score_rows(self, rows: Sequence[tuple[str, History, str]], *, cache: bool = False) -> list[Score]:
        """Scores of (prompt, history, response) rows with different prompts."""
        return self._scores(self.score_matrix(rows, cache=cache))


def check_backbone(settings: Settings, vid: int, recorded: dict[str, Any]) -> Any:
    """Re-resolve the recorded backbone (paths stay confined) and check it is the one trained with."""
    spec = recorded.get("name") or "minilm"
    if spec != "minilm":
        spec = recorded.get("path") or spec
    try:
        ref = resolve_backbone(spec, settings)
    except BackboneError as exc:
        raise ModelFilesError(f"model version {vid}: its backbone is unusable ({exc}); a machine scoring it needs "
                              "the backbone at the path it was trained from (inside RMSTUDIO_HOME or "
                              "RMSTUDIO_MODEL_DIRS)") from None
    if recorded.get("fingerprint") and ref.fingerprint != recorded["fingerprint"]:
        raise ModelFilesError(f"model version {vid}: backbone {ref.path} changed since training (fingerprint differs)")
    return ref


def _head_scorer(settings: Settings, vid: int, tensors: dict[str, Any], fcfg: dict[str, Any], device: str) -> Callable:
    try:
        head = EnsembleHead.from_state(fcfg["head"], tensors)
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        raise ModelFilesError(f"model version {vid}: head weights do not match its config ({exc})") from None
    ref = check_backbone(settings, vid, fcfg.get("backbone", {}))
    fx = FeatureExtractor(settings, ref, max_length=int(fcfg.get("max_length", 256)), pooling=fcfg.get("pooling", "mean"),
                          quantize=bool(fcfg.get("quantize", False)), device=device)
    features = fcfg.get("features", "rich")

    def scorer(rows: Sequence[tuple[str, History, str]], cache: bool) -> np.ndarray:
        X = fx.features_for(rows, features, use_cache=cache)
        return head.score(X)

    return scorer


def _finetune_scorer(vid: int, d: Path, fcfg: dict[str, Any], device: str) -> Callable:
    models = []
    for k in range(int(fcfg.get("members", 1))):
        try:
            models.append(FinetunedModel.load(d / f"member-{k}", device=device))
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelFilesError(f"model version {vid}: member {k} cannot be loaded ({exc})") from None

    def scorer(rows: Sequence[tuple[str, History, str]], cache: bool) -> np.ndarray:
        ps, hs, rs = [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]
        return np.stack([m.score(ps, hs, rs) for m in models], axis=1)

    return scorer


def load_usable(db: Database, settings: Settings, version: str | int | None = "latest", *, device: str = "cpu") -> RewardModel:
    """Like :meth:`RewardModel.load`, but when the version's files are missing or damaged, fall back to the
    newest older version that loads; ``model.fallback_message`` then says which version failed and why.
    Raises the original :class:`ModelFilesError` when no older version loads either."""
    with db.read() as s:
        v = get_version(s, version)
        first = (v.id, v.mode, v.path, dict(v.norm_stats or {}), dict(v.metrics or {}))
        older = [(o.id, o.mode, o.path, dict(o.norm_stats or {}), dict(o.metrics or {})) for o in versions_before(s, v.id)]
    try:
        return RewardModel._from_files(db, settings, *first, device)
    except ModelFilesError as exc:
        original = exc
    log.warning("%s", original)
    for cand in older:
        try:
            m = RewardModel._from_files(db, settings, *cand, device)
        except ModelFilesError as exc:
            log.warning("%s", exc)
            continue
        m.fallback_message = f"{original}; using model version {m.version_id} instead"
        return m
    raise original


def reward_function(model: RewardModel, *, kind: str = "raw") -> Callable[..., list[float]]:
    """A reward function as TRL's GRPO ``reward_funcs`` expects: ``f(prompts, completions, **kwargs) -> list[float]``;
    prompts and completions are strings or chat-message lists. ``kind``: ``"raw"``, ``"z"`` or ``"sigmoid"``."""
    if kind not in ("raw", "z", "sigmoid"):
        raise ValueError(f"reward kind must be raw, z or sigmoid, got {kind!r}")

    def reward(prompts: Sequence[Any], completions: Sequence[Any], **_: Any) -> list[float]:
        return [float(getattr(s, kind)) for s in model.score_rows(completion_rows(prompts, completions))]

    reward.__name__ = f"rmstudio_v{model.version_id}_{kind}"
    return reward


def rescore_stored(db: Database, settings: Settings, version_id: int | str, *, progress: Progress = None,
                   should_stop: Callable[[], bool] | None = None, chunk: int = 512) -> int:
    """Score every stored response with one version and cache the scores (``response_scores``); returns the
    number of rows written. Each chunk is written in its own short transaction; :class:`Cancelled` stops it."""

    model = RewardModel.load(db, settings, parse_version_ref(version_id))
    with db.read() as s:
        total = count_responses(s)
    done = written = 0
    after = 0
    while True:
        if should_stop is not None and should_stop():
            raise Cancelled(f"rescoring of model version {model.version_id} cancelled")
        with db.read() as s:
            batch = responses_for_scoring(s, after_id=after, limit=chunk)
        if not batch:
            break
        after = batch[-1][0]
        S = model.score_matrix([(p, h, t) for _, p, h, t in batch], cache=True)
        raw, std = model.combine(S)
        rows = {rid: (float(raw[i]), float(std[i])) for i, (rid, _, _, _) in enumerate(batch)}
        written += db.run_write(lambda s, rows=rows: store_response_scores(s, model.version_id, rows))
        done += len(batch)
        if progress is not None:
            progress({"phase": "rescore", "step": done, "total": total, "loss": None, "val_accuracy": None, "eta_s": None})
    return written


def _file_temperature(model: Any, rc: Sequence[float], rr: Sequence[float]) -> dict[str, Any]:
    """Calibration of preference probabilities on an evaluated file: the temperature that fits it
    (:func:`rm_engine.metrics.temperature_calibration`, in-sample) and, for one version with a fitted temperature,
    the expected calibration error under that stored temperature, which the file did not choose (does it
    transfer?)."""

    out = M.temperature_calibration(rc, rr)
    stored = (getattr(model, "metrics", None) or {}).get("temperature") or {}
    t = stored.get("temperature")
    out["version_temperature"] = t
    out["ece_version_temperature"] = (M.pair_calibration(np.asarray(rc) / t, np.asarray(rr) / t)["ece"]
                                      if t and len(rc) else None)
    return out


def evaluate_records(model: Any, records: Sequence[Any]) -> dict[str, Any]:
    """Metrics of a model on labelled records (``db.formats.ImportRecord``: comparisons and rankings), without
    storing anything: ``accuracy`` (strict >), ``n``, ``tie_rate`` (equal scores), ``per_source``, ``tie_pairs``,
    ``both_bad``, calibration (``temperature``: :func:`_file_temperature`), ``length_bias``, and ``spearman``
    when rankings are present. ``model`` is a
    :class:`RewardModel` (``model_version`` in the result) or a ``rm_engine.serving.ensemble.VersionEnsemble``
    (``model_versions``, ``combine``): anything with ``rewards(rows)``."""

    rows: list[tuple[str, Any, str]] = []
    index: dict[tuple[str, str, str], int] = {}

    def row(rec: Any, text: str) -> int:
        import json as _json

        key = (rec.prompt, _json.dumps(rec.history or [], sort_keys=True), text)
        if key not in index:
            index[key] = len(rows)
            rows.append((rec.prompt, rec.history or None, text))
        return index[key]

    decided: list[tuple[int, int, str]] = []
    ties: list[tuple[int, int]] = []
    ranked: list[tuple[int, list[int], list[int]]] = []
    both_bad = unlabeled = 0
    for n, rec in enumerate(records):
        if rec.kind == "comparison":
            a, b = row(rec, rec.responses[0]), row(rec, rec.responses[1])
            if rec.winner == "a":
                decided.append((a, b, rec.source))
            elif rec.winner == "b":
                decided.append((b, a, rec.source))
            elif rec.winner == "tie":
                ties.append((a, b))
            else:
                both_bad += 1
        elif rec.kind == "ranking" and rec.ranks:
            idx = [row(rec, t) for t in rec.responses]
            ranked.append((n, idx, list(rec.ranks)))
            for i in range(len(idx)):
                for j in range(i + 1, len(idx)):
                    if rec.ranks[i] < rec.ranks[j]:
                        decided.append((idx[i], idx[j], rec.source))
                    elif rec.ranks[i] > rec.ranks[j]:
                        decided.append((idx[j], idx[i], rec.source))
                    else:
                        ties.append((idx[i], idx[j]))
        else:
            unlabeled += 1
    raw = model.rewards(rows)
    rc = [raw[c] for c, _, _ in decided]
    rr = [raw[r] for _, r, _ in decided]
    words = [M.word_count(text) for _, _, text in rows]
    out = M.split_metrics(rc, rr, sources=[src for _, _, src in decided], with_distributions=False,
                          lengths=([words[c] for c, _, _ in decided], [words[r] for _, r, _ in decided]))
    out.update({"tie_pairs": len(ties), "both_bad": both_bad, "unlabeled": unlabeled, "n_responses": len(rows)})
    ids = getattr(model, "version_ids", None)
    out.update({"model_versions": ids, "combine": model.how} if ids is not None else {"model_version": model.version_id})
    if ties:
        out["tie_abs_diff"] = float(np.mean([abs(raw[a] - raw[b]) for a, b in ties]))
    out["temperature"] = _file_temperature(model, rc, rr)
    if ranked:
        out["spearman"] = M.spearman_per_prompt((k, [raw[i] for i in idx], rk) for k, idx, rk in ranked)
    return out


__all__ = ["Score", "completion_rows", "evaluate_records", "RewardModel", "load_usable", "reward_function", "rescore_stored", "ModelFilesError", "VersionNotFound"]
