"""Per-member loss weights of ensembles (``rm_engine.objective.member_weights``) on a hand-made pair set."""
from __future__ import annotations

import numpy as np
import pytest

from db.pairs import TrainingPair
from rm_engine.config import TrainConfig
from rm_engine.objective import member_weights, pair_weight


def _pair(i: int, source: str) -> TrainingPair:
    return TrainingPair(prompt_id=i, prompt=f"p{i}", history=(), category=None, chosen_id=2 * i, rejected_id=2 * i + 1,
                        chosen="a", rejected="b", source=source, annotator="x", weight=0.5 if i % 2 else 1.0)


def test_member_weights_bootstrap_each_member_and_keep_pair_weights() -> None:
    """Ensemble members (both modes' and the GPU bench's): one member trains on the pair weights as they are;
    several get seeded bootstrap counts (summing to n) times those weights."""
    train = [_pair(i, "crowd" if i % 3 else "expert") for i in range(12)]
    cfg = TrainConfig(mode="finetune", source_weights={"expert": 1.0, "crowd": 0.8, "ai": 0.5})
    base = np.array([pair_weight(cfg, p) for p in train])
    [one] = member_weights(cfg, base)
    assert one.tolist() == pytest.approx(base.tolist()) and base[1] == pytest.approx(0.5 * 0.8)
    three = member_weights(cfg.replace(ensemble=3), base)
    counts = [w / base for w in three]
    assert len(three) == 3 and all(np.allclose(c, np.round(c)) and round(c.sum()) == 12 for c in counts)
    assert not np.allclose(counts[0], counts[1])  # each member its own resample
    again = member_weights(cfg.replace(ensemble=3), base)
    assert all(np.array_equal(a, b) for a, b in zip(three, again))  # seeded
