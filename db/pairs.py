"""Labels and rankings turned into training pairs for the engine."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, aliased

from db.models import Annotator, Comparison, Label, Outcome, Prompt, Ranking, RankingItem, Response, Source, Split


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


def _history_tuple(history: Any) -> tuple[tuple[str, str], ...]:
    """``[{"role", "content"}, ...]`` as ``((role, content), ...)``; anything else becomes empty."""
    out: list[tuple[str, str]] = []
    for turn in history or []:
        if isinstance(turn, dict):
            out.append((str(turn.get("role", "")), str(turn.get("content", ""))))
    return tuple(out)


def _normalize_sources(sources: Iterable[Source | str] | None) -> set[Source] | None:
    if sources is None:
        return None
    out: set[Source] = set()
    for s in sources:
        try:
            out.add(Source(s))
        except ValueError:
            raise ValueError(f"unknown source {s!r}: expected one of expert, crowd, ai") from None
    return out


def training_pairs(
    session: Session,
    *,
    sources: Iterable[Source | str] | None = None,
    split: Split | str | None = None,
    include_ties: bool = True,
) -> PairSet:
    """All labels and rankings as training pairs, in a stable order (labels by id, then rankings by id).

    * A label with outcome ``a``/``b`` gives one pair, the preferred response as ``chosen``; ``tie`` gives one
      pair with ``tie=True`` (chosen/rejected in the comparison's stored order); ``both_bad`` gives none.
    * A K-way ranking gives its K(K-1)/2 pairs (items taken in their given order; equal ranks are ties).
    * ``sources`` keeps only those sources (``expert``/``crowd``/``ai``); ``split`` keeps only ``train`` or
      ``test``; ``include_ties=False`` leaves ties out.

    * Labels a researcher excluded in review (``labels.excluded``, :mod:`db.review`) give none, nor labels whose
      annotator changed the verdict (``labels.superseded_by_id``, :mod:`db.label_history`): only the new label counts.

    ``excluded`` counts what was left out, in pairs: ``superseded``, ``review_excluded``, ``both_bad``, ``tie``,
    ``source_filtered``, ``split_filtered``. ``n_labels`` / ``n_rankings`` count the labels and rankings that produced pairs or
    were excluded for their outcome (i.e. those that passed the source and split filters).
    """
    wanted_sources = _normalize_sources(sources)
    wanted_split = Split(split) if split is not None else None
    result = PairSet()
    excluded: dict[str, int] = {}

    def exclude(reason: str, n: int = 1) -> None:
        excluded[reason] = excluded.get(reason, 0) + n

    ra, rb = aliased(Response), aliased(Response)
    label_rows = session.execute(
        select(
            Label.id, Label.outcome, Label.strength, Label.source, Label.split, Label.excluded, Label.superseded_by_id,
            Annotator.name, Prompt.id, Prompt.text, Prompt.history, Prompt.category,
            ra.id, ra.text, rb.id, rb.text,
        )
        .join(Comparison, Label.comparison_id == Comparison.id)
        .join(Prompt, Comparison.prompt_id == Prompt.id)
        .join(ra, Comparison.response_a_id == ra.id)
        .join(rb, Comparison.response_b_id == rb.id)
        .join(Annotator, Label.annotator_id == Annotator.id)
        .order_by(Label.id)
    )
    histories: dict[int, tuple[tuple[str, str], ...]] = {}
    for (lid, outcome, strength, source, lsplit, dropped, replaced, ann, pid, ptext, phist, pcat, aid, atext, bid,
         btext) in label_rows:
        if replaced is not None:
            exclude("superseded")
            continue
        if dropped:
            exclude("review_excluded")
            continue
        source, lsplit, outcome = Source(source), Split(lsplit), Outcome(outcome)
        if wanted_sources is not None and source not in wanted_sources:
            exclude("source_filtered")
            continue
        if wanted_split is not None and lsplit is not wanted_split:
            exclude("split_filtered")
            continue
        result.n_labels += 1
        if outcome is Outcome.both_bad:
            exclude("both_bad")
            continue
        if outcome is Outcome.tie and not include_ties:
            exclude("tie")
            continue
        if outcome is Outcome.b:
            cid, ctext, rid, rtext = bid, btext, aid, atext
        else:
            cid, ctext, rid, rtext = aid, atext, bid, btext
        hist = histories.get(pid)
        if hist is None:
            hist = histories[pid] = _history_tuple(phist)
        result.pairs.append(
            TrainingPair(
                prompt_id=pid, prompt=ptext, history=hist, category=pcat,
                chosen_id=cid, rejected_id=rid, chosen=ctext, rejected=rtext,
                source=source.value, annotator=ann, tie=outcome is Outcome.tie,
                strength=strength if outcome in (Outcome.a, Outcome.b) else None,
                split=lsplit.value, label_id=lid,
            )
        )

    rankings = session.execute(
        select(Ranking.id, Ranking.source, Ranking.split, Annotator.name, Prompt.id, Prompt.text, Prompt.history, Prompt.category)
        .join(Prompt, Ranking.prompt_id == Prompt.id)
        .join(Annotator, Ranking.annotator_id == Annotator.id)
        .order_by(Ranking.id)
    ).all()
    items_by_ranking: dict[int, list[tuple[int, int, str]]] = {}
    if rankings:
        item_rows = session.execute(
            select(RankingItem.ranking_id, RankingItem.response_id, RankingItem.rank, Response.text)
            .join(Response, RankingItem.response_id == Response.id)
            .order_by(RankingItem.ranking_id, RankingItem.position, RankingItem.id)
        )
        for rid_, resp_id, rank, text in item_rows:
            items_by_ranking.setdefault(rid_, []).append((resp_id, rank, text))
    for (rkid, source, rsplit, ann, pid, ptext, phist, pcat) in rankings:
        source, rsplit = Source(source), Split(rsplit)
        items = items_by_ranking.get(rkid, [])
        n_pairs = len(items) * (len(items) - 1) // 2
        if wanted_sources is not None and source not in wanted_sources:
            exclude("source_filtered", n_pairs)
            continue
        if wanted_split is not None and rsplit is not wanted_split:
            exclude("split_filtered", n_pairs)
            continue
        result.n_rankings += 1
        hist = histories.get(pid)
        if hist is None:
            hist = histories[pid] = _history_tuple(phist)
        for i in range(len(items)):
            for j in range(i + 1, len(items)):
                (id_i, rank_i, text_i), (id_j, rank_j, text_j) = items[i], items[j]
                tie = rank_i == rank_j
                if tie and not include_ties:
                    exclude("tie")
                    continue
                if rank_j < rank_i:
                    (id_i, text_i), (id_j, text_j) = (id_j, text_j), (id_i, text_i)
                result.pairs.append(
                    TrainingPair(
                        prompt_id=pid, prompt=ptext, history=hist, category=pcat,
                        chosen_id=id_i, rejected_id=id_j, chosen=text_i, rejected=text_j,
                        source=source.value, annotator=ann, tie=tie,
                        split=rsplit.value, ranking_id=rkid,
                    )
                )
    result.excluded = excluded
    result.extra = {"n_ties": sum(1 for p in result.pairs if p.tie)}
    return result
