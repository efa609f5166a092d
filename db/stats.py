"""Dataset statistics: what has been labelled, by whom, and whether it is enough to train a reward model.

Counted with SQL aggregates (no texts are loaded), so it stays fast on large databases.
"""
from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import Annotator, Comparison, Label, Outcome, Prompt, Ranking, RankingItem, Response, Side, Source, Split

TIERS = ((100_000, "100,000+"), (10_000, "10,000+"), (1_000, "1,000+"), (0, "under 1,000"))
QUALITY = (
    "Label quality beats quantity: a few thousand consistent expert judgments train a better reward model than "
    "many noisy ones, so check agreement between annotators and write clear guidelines (Data page, Guidelines tab)."
)
ADVICE = {
    "under 1,000": (
        "Under 1,000 preference pairs is too few to train a reward model that generalizes: expect held-out "
        "accuracy near chance (50%). Keep labeling, or use these preferences directly with DPO, which needs "
        "no separate reward model."
    ),
    "1,000+": (
        "Enough for a first reward model: a head on a frozen backbone trains in minutes, but expect modest "
        "held-out accuracy. Aim for 10,000 pairs before trusting it to steer a policy."
    ),
    "10,000+": (
        "A good size: fine-tuning a small backbone is worthwhile and held-out accuracy becomes a reliable guide."
    ),
    "100,000+": (
        "An excellent size: enough for full fine-tuning of larger backbones and for ensembles that estimate "
        "their own uncertainty."
    ),
}


def size_tier(pairs: int) -> str:
    """``under 1,000``, ``1,000+``, ``10,000+`` or ``100,000+``."""
    for floor, name in TIERS:
        if pairs >= floor:
            return name
    return TIERS[-1][1]


def advice_for(tier: str) -> str:
    """What to do at this dataset size, always with the reminder that label quality beats quantity."""
    return f"{ADVICE[tier]} {QUALITY}"


def dataset_stats(session: Session) -> dict[str, Any]:
    """Counts of labels (by source, outcome, annotator, category, split), rankings, training pairs and the tier.

    ``by_outcome`` counts ``a`` / ``b`` as "the response shown first / second won" (so that a position bias
    shows, and the numbers do not depend on storage order), ``tie`` and ``both_bad``.

    Every count is of current verdicts: a label whose annotator changed it is kept, superseded, and counted apart
    (``changed_labels``), as training leaves it out.

    ``pairs`` counts the training pairs available for training (``train`` split): every label except
    ``both_bad`` (ties included, for tie-aware losses) plus K(K-1)/2 per K-way ranking. ``test_pairs`` counts
    the held-out ones. The tier and advice follow ``pairs``.
    """
    def grouped(*cols: Any, where: Any = None, model: Any = Label) -> list[tuple[Any, ...]]:
        q = select(*cols, func.count(model.id))
        if model is Label and any(getattr(c, "class_", None) is Prompt for c in cols):
            q = q.join(Comparison, Label.comparison_id == Comparison.id).join(Prompt, Comparison.prompt_id == Prompt.id)
        if model is Label and any(getattr(c, "class_", None) is Annotator for c in cols):
            q = q.join(Annotator, Label.annotator_id == Annotator.id)
        if model is Label:  # current verdicts only: a verdict its annotator changed is kept, superseded
            q = q.where(Label.superseded_by_id.is_(None))
        if where is not None:
            q = q.where(where)
        return list(session.execute(q.select_from(model).group_by(*cols)).all())

    labels = session.scalar(select(func.count(Label.id)).where(Label.superseded_by_id.is_(None))) or 0
    changed = session.scalar(select(func.count(Label.id)).where(Label.superseded_by_id.is_not(None))) or 0
    by_source = {s.value: 0 for s in Source}
    for src, n in grouped(Label.source):
        by_source[Source(src).value] = n
    # a / b: the response shown first / second won (position bias shows here); stored order when unknown
    by_outcome = {o.value: 0 for o in Outcome}
    for o, left, n in grouped(Label.outcome, Label.left):
        o = Outcome(o).value
        if left is not None and Side(left) is Side.b and o in ("a", "b"):
            o = "b" if o == "a" else "a"
        by_outcome[o] += n
    by_split = {s.value: 0 for s in Split}
    for sp, n in grouped(Label.split):
        by_split[Split(sp).value] = n
    by_annotator = {name: n for name, n in sorted(grouped(Annotator.name), key=lambda x: (-x[1], x[0]))}
    by_category = {(c or "(none)"): n for c, n in sorted(grouped(Prompt.category), key=lambda x: (-x[1], str(x[0])))}

    label_pairs = {sp: 0 for sp in (Split.train, Split.test)}
    for sp, n in grouped(Label.split, where=Label.outcome != Outcome.both_bad):
        label_pairs[Split(sp)] = n
    sizes = (
        select(Ranking.id.label("rid"), Ranking.split.label("split"), Ranking.source.label("source"), func.count(RankingItem.id).label("k"))
        .join(RankingItem, RankingItem.ranking_id == Ranking.id)
        .group_by(Ranking.id, Ranking.split, Ranking.source)
        .subquery()
    )
    ranking_pairs = {Split.train: 0, Split.test: 0}
    rankings_by_source = {s.value: 0 for s in Source}
    n_rankings = 0
    for sp, src, k in session.execute(select(sizes.c.split, sizes.c.source, sizes.c.k)):
        ranking_pairs[Split(sp)] += k * (k - 1) // 2
        rankings_by_source[Source(src).value] += 1
        n_rankings += 1
    pairs = label_pairs[Split.train] + ranking_pairs[Split.train]
    tier = size_tier(pairs)
    comparisons = session.scalar(select(func.count(Comparison.id))) or 0
    unlabeled = session.scalar(select(func.count(Comparison.id)).where(Comparison.label_count == 0)) or 0
    return {
        "labels": labels,
        "changed_labels": changed,
        "pairs": pairs,
        "test_pairs": label_pairs[Split.test] + ranking_pairs[Split.test],
        "rankings": n_rankings,
        "ranking_pairs": ranking_pairs[Split.train] + ranking_pairs[Split.test],
        "ties": by_outcome["tie"],
        "by_source": by_source,
        "by_outcome": by_outcome,
        "by_split": by_split,
        "by_annotator": by_annotator,
        "by_category": by_category,
        "rankings_by_source": rankings_by_source,
        "prompts": session.scalar(select(func.count(Prompt.id))) or 0,
        "responses": session.scalar(select(func.count(Response.id))) or 0,
        "comparisons": comparisons,
        "unlabeled_comparisons": unlabeled,
        "annotators": len(by_annotator),
        "tier": tier,
        "advice": advice_for(tier),
    }


def format_stats(stats: dict[str, Any]) -> str:
    """The statistics as a short plain-text report."""
    def counts(d: dict[str, int], limit: int = 10) -> str:
        items = list(d.items())
        text = ", ".join(f"{k} {v:,}" for k, v in items[:limit])
        return text + (f", ... ({len(items) - limit} more)" if len(items) > limit else "") if items else "none"

    lines = [
        f"labels        {stats['labels']:,}  ({counts(stats['by_split'])})",
        f"rankings      {stats['rankings']:,}  ({stats['ranking_pairs']:,} pairs)",
        f"pairs         {stats['pairs']:,} for training, {stats['test_pairs']:,} held out (test)",
        f"by source     {counts(stats['by_source'])}",
        f"by outcome    {counts(stats['by_outcome'])}",
        f"by annotator  {counts(stats['by_annotator'])}",
        f"by category   {counts(stats['by_category'])}",
        f"prompts {stats['prompts']:,}, responses {stats['responses']:,}, comparisons {stats['comparisons']:,} "
        f"({stats['unlabeled_comparisons']:,} not yet labelled)",
        f"size tier     {stats['tier']}",
        f"advice        {stats['advice']}",
    ]
    return "\n".join(lines)
