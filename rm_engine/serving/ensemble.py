"""Several model versions scored as one reward: each version's z-score, then combined.

Raw scores of two versions live on unrelated scales (Bradley-Terry fixes neither offset nor scale across
trainings), so versions are combined through their z-scores, each against the statistics stored with its own
version (``rm_engine/normalize.py``). Combinations, after Coste et al. 2023 ("Reward Model Ensembles Help
Mitigate Overoptimization"):

* ``mean``: the mean z over versions (the default);
* ``min``: worst case, the lowest z any version gives;
* ``uwo``: uncertainty-weighted, mean z minus ``penalty`` x the std of z over versions.

``min`` and ``uwo`` lower the reward where the versions disagree, which is where a policy can exploit one
model's mistakes. The price is one forward pass per version: K versions cost K times one model's inference.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from db.config import Settings
from db.session import Database
from rm_engine.backbone import History
from rm_engine.config import COMBINE
from rm_engine.serving.reward_requests import completion_rows
from rm_engine.serving.scoring import RewardModel


def combine_z(Z: np.ndarray, how: str = "mean", penalty: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """``(reward, std)`` per row of an ``(n, K)`` matrix of z-scores (one column per version); ``std`` is the
    population std over versions. Raises ``ValueError`` for an unknown ``how`` or a negative ``penalty``."""
    if how not in COMBINE:
        raise ValueError(f"combine must be one of {', '.join(COMBINE)}, got {how!r}")
    if penalty < 0:
        raise ValueError(f"penalty must be >= 0, got {penalty}")
    M = np.asarray(Z, dtype=np.float64)
    if M.ndim != 2 or M.shape[1] < 1:
        raise ValueError(f"combine_z: expected an (n, K) matrix of z-scores, got shape {M.shape}")
    std = M.std(axis=1)
    if how == "min":
        return M.min(axis=1), std
    mean = M.mean(axis=1)
    return (mean - penalty * std if how == "uwo" else mean), std


@dataclass(frozen=True)
class EnsembleScore:
    """One response: the combined ``reward``, the ``std`` of z over versions and each version's ``z``."""

    reward: float
    std: float
    z: dict[int, float]

    def to_dict(self) -> dict[str, Any]:
        return {"reward": self.reward, "std": self.std, "z_by_version": {str(k): v for k, v in self.z.items()}}


class VersionEnsemble:
    """Loaded versions scored together (see the module docstring). Thread-safe as :class:`RewardModel` is."""

    def __init__(self, models: Sequence[RewardModel], *, how: str = "mean", penalty: float = 1.0) -> None:
        if not models:
            raise ValueError("a version ensemble needs at least one model version")
        ids = [m.version_id for m in models]
        if len(set(ids)) != len(ids):
            raise ValueError(f"model versions {ids}: each version may appear once")
        combine_z(np.zeros((0, len(ids))), how, penalty)  # validates how and penalty now, not at first use
        self.models, self.how, self.penalty = list(models), how, float(penalty)

    @classmethod
    def load(cls, db: Database, settings: Settings, versions: Sequence[str | int], *, device: str = "cpu",
             how: str = "mean", penalty: float = 1.0) -> VersionEnsemble:
        """Load every version strictly (no fallback to an older one: it could duplicate a member). Raises
        ``VersionNotFound`` / ``ModelFilesError`` naming the version, ``ValueError`` for a repeated one."""
        return cls([RewardModel.load(db, settings, v, device=device) for v in versions], how=how, penalty=penalty)

    @property
    def version_ids(self) -> list[int]:
        return [m.version_id for m in self.models]

    def score_rows(self, rows: Sequence[tuple[str, History, str]]) -> list[EnsembleScore]:
        """Combined scores of (prompt, history, response) rows."""
        if not rows:
            return []
        Z = np.stack([[s.z for s in m.score_rows(rows)] for m in self.models], axis=1)
        reward, std = combine_z(Z, self.how, self.penalty)
        ids = self.version_ids
        return [EnsembleScore(float(reward[i]), float(std[i]), {ids[k]: float(Z[i, k]) for k in range(len(ids))})
                for i in range(len(rows))]

    def by_combination(self, scores: Sequence[EnsembleScore]) -> dict[str, list[float]]:
        """The reward of already computed ``scores`` under every combination of :data:`COMBINE` (with this
        ensemble's ``penalty``), from their per-version z: no second forward pass."""
        Z = np.array([[s.z[v] for v in self.version_ids] for s in scores], dtype=np.float64)
        Z = Z.reshape(len(scores), len(self.models))
        return {how: [float(x) for x in combine_z(Z, how, self.penalty)[0]] for how in COMBINE}

    def rewards(self, rows: Sequence[tuple[str, History, str]]) -> np.ndarray:
        """The combined reward of each row (what :func:`rm_engine.serving.scoring.evaluate_records` measures)."""
        return np.array([s.reward for s in self.score_rows(rows)], dtype=np.float64)

    def score(self, prompt: str, responses: Sequence[str], history: History = None) -> list[EnsembleScore]:
        """Combined scores of several responses to one prompt."""
        return self.score_rows([(prompt, history, r) for r in responses])

    def reward_function(self) -> Callable[..., list[float]]:
        """The combined reward as TRL's GRPO ``reward_funcs`` expects: ``f(prompts, completions, **kw)``."""
        def reward(prompts: Sequence[Any], completions: Sequence[Any], **_: Any) -> list[float]:
            return [s.reward for s in self.score_rows(completion_rows(prompts, completions))]

        reward.__name__ = "rmstudio_" + "_".join(f"v{i}" for i in self.version_ids) + f"_{self.how}"
        return reward


__all__ = ["COMBINE", "EnsembleScore", "VersionEnsemble", "combine_z"]
