"""Metrics of one split of training pairs under a model's scores: the pure metrics of ``rm_engine.metrics``
applied to :class:`~db.pairs.TrainingPair` s (decided pairs, ties apart, Spearman for rankings)."""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from db.pairs import TrainingPair
from rm_engine import metrics as M


def ranking_spearman(pairs: Sequence[TrainingPair], score_of: Callable[[int], float]) -> dict[str, Any]:
    """Spearman per ranking (>= 3 responses): human rank = 1 + number of responses that beat it in the ranking's
    pairs (ties beat no one)."""
    by_rank: dict[int, list[TrainingPair]] = defaultdict(list)
    for p in pairs:
        if p.ranking_id is not None:
            by_rank[p.ranking_id].append(p)
    items = []
    for rid, ps in sorted(by_rank.items()):
        beaten: dict[int, int] = defaultdict(int)
        for p in ps:
            beaten.setdefault(p.chosen_id, 0)
            beaten.setdefault(p.rejected_id, 0)
            if not p.tie:
                beaten[p.rejected_id] += 1
        resp = sorted(beaten)
        items.append((rid, [score_of(r) for r in resp], [1 + beaten[r] for r in resp]))
    return M.spearman_per_prompt(items)


def evaluate_pairs(pairs: Sequence[TrainingPair], score_of: Callable[[int], float]) -> dict[str, Any]:
    """Metrics of one split: decided pairs through :func:`metrics.split_metrics` (length bias included), tie
    pairs counted apart (``tie_pairs`` and their mean absolute score difference), Spearman when rankings are
    present."""
    decided = [p for p in pairs if not p.tie]
    rc = [score_of(p.chosen_id) for p in decided]
    rr = [score_of(p.rejected_id) for p in decided]
    out = M.split_metrics(rc, rr, sources=[p.source for p in decided], annotators=[p.annotator for p in decided],
                          categories=[p.category for p in decided],
                          lengths=([M.word_count(p.chosen) for p in decided], [M.word_count(p.rejected) for p in decided]))
    ties = [p for p in pairs if p.tie]
    out["tie_pairs"] = len(ties)
    if ties:
        out["tie_abs_diff"] = float(np.mean([abs(score_of(p.chosen_id) - score_of(p.rejected_id)) for p in ties]))
    if any(p.ranking_id is not None for p in pairs):
        out["spearman"] = ranking_spearman(pairs, score_of)
    return out
