"""Labels and rankings turned into training pairs for the engine."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TrainingPair:
    """One preference between two stored responses to one prompt.

    For a tie (``tie=True``) the order of chosen/rejected carries no meaning.
    ``weight`` is 1.0 here; the engine multiplies in its per-source weights.
    """

    prompt_id: int
    prompt: str
    history: tuple[tuple[str, str], ...]  # earlier turns as (role, content); empty for single-turn prompts
    category: str | None
    chosen_id: int  # response ids
    rejected_id: int
    chosen: str
    rejected: str
    source: str  # expert | crowd | ai
    annotator: str
    tie: bool = False
    strength: int | None = None  # 1 slightly, 2 clearly better; None when not given
    split: str = "train"  # train | test (test pairs are never trained on)
    weight: float = 1.0
    label_id: int | None = None
    ranking_id: int | None = None


@dataclass
class PairSet:
    """Pairs plus what was left out and why."""

    pairs: list[TrainingPair] = field(default_factory=list)
    excluded: dict[str, int] = field(default_factory=dict)  # e.g. {"both_bad": 3, "source_filtered": 10}
    n_labels: int = 0
    n_rankings: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


# training_pairs(session, *, sources=None, split=None, include_ties=True) -> PairSet  -- implemented by the data-layer work
