"""How reliable each annotator is, estimated from the pairs several annotators labelled, and loss weights from it.

Pure functions on plain data (label records as ``rm_engine.quality.agreement`` takes them: ``item``, ``rater``,
``outcome``, ``source``; ``db.analytics.agreement_records`` reads them); no database access, no torch.

Source weights (expert > crowd > ai) treat every annotator of a source alike; inside a crowd, one careless or
adversarial labeller can be worth less than nothing. On multi-rated pairs the labels of the others say how often
someone is right:

* ``accuracy``: the one-coin Dawid-Skene estimate (Dawid & Skene 1979, through crowd-kit): each annotator reports
  the true preference with their own probability ``p``; EM alternates the posterior of each pair's true preference
  and each ``p``. Only decided labels (``a``/``b``) count; ties and "both bad" say nothing about which side is
  right. It needs pairs labelled by three or more annotators to tell who is right when two disagree.
* ``agrees_with_others``: the share of an annotator's decided labels that match the strict majority of the other
  annotators' decided labels on the same pair (a check that needs no model); ``agrees_with_experts``: the same
  against the expert-sourced labels only, the closest thing to a gold standard (expert > crowd > ai).
* ``weight``: ``2p - 1`` (0 at chance, 1 when always right), divided by the same figure for the typical accuracy
  (the label-weighted median of everyone measured), so the typical annotator keeps weight 1, better ones get more
  (at most 3), and chance-level ones none. Annotators with fewer than ``min_labels`` decided labels on
  multi-rated pairs are not measured: weight 1. Nobody is weighed when the typical annotator agrees with the
  others' majority barely more than chance (``MIN_AGREEMENT``): there is no signal to weigh by.
"""
from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

    from db.pairs import PairSet

MIN_LABELS = 10  # decided labels on multi-rated pairs before an annotator is measured
MAX_WEIGHT = 3.0
MIN_AGREEMENT = 0.55  # typical agreement with the others' majority below which nobody is weighed


@dataclass(frozen=True)
class AnnotatorQuality:
    """One annotator's estimated reliability (see the module docstring)."""

    annotator: str
    source: str
    labels: int  # decided labels on pairs that other annotators labelled too
    accuracy: float
    agrees_with_others: float  # nan when no pair of theirs had a strict majority among the others
    agrees_with_experts: float  # the same against the expert labels only (a gold standard); nan without any
    weight: float
    measured: bool  # the weight applies: labels >= min_labels, and the labels agree enough to weigh anyone


def decided_votes(records: Sequence[Mapping[str, object]]) -> list[tuple[Hashable, str, int]]:
    """``(item, rater, 1 if "a" else 0)`` of the decided labels on items with two or more decided labels; a rater's
    latest label on an item counts once."""
    latest: dict[tuple[Hashable, str], int] = {}
    for r in records:
        outcome = str(getattr(r["outcome"], "value", r["outcome"]))
        key = (r["item"], str(r["rater"]))
        if outcome in ("a", "b"):
            latest[key] = 1 if outcome == "a" else 0
        else:
            latest.pop(key, None)
    per_item = Counter(item for item, _ in latest)
    return [(item, rater, v) for (item, rater), v in latest.items() if per_item[item] >= 2]


def dawid_skene(votes: Sequence[tuple[Hashable, str, int]], *,
                iters: int = 100) -> tuple[dict[str, float], dict[Hashable, float]]:
    """One-coin Dawid-Skene (crowd-kit's ``OneCoinDawidSkene``) on binary votes: ``(accuracy per rater,
    P(true side is "a") per item)``. Identifiable from pairs labelled by three or more raters; where pairs have two,
    it can tell that two raters disagree but hardly which of them is right (``agrees_with_others`` shows it)."""
    if not votes:
        return {}, {}
    import pandas as pd
    from crowdkit.aggregation import OneCoinDawidSkene

    data = pd.DataFrame(list(votes), columns=["task", "worker", "label"])
    model = OneCoinDawidSkene(n_iter=iters).fit(data)
    probas = model.probas_
    p_a = probas[1] if 1 in probas else 1.0 - probas[0]
    return ({str(r): float(v) for r, v in model.skills_.items()},
            {item: float(v) for item, v in p_a.items()})


def agreement_with_others(votes: Sequence[tuple[Hashable, str, int]],
                          judges: set[str] | None = None) -> dict[str, tuple[int, int]]:
    """Per rater, ``(agreeing, compared)``: their votes that match the strict majority of the other raters' votes
    on the same item (only the votes of ``judges`` when given, e.g. the experts), over the votes where those had
    one."""
    by_item: dict[Hashable, list[tuple[str, int]]] = defaultdict(list)
    for item, rater, v in votes:
        by_item[item].append((rater, v))
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for item_votes in by_item.values():
        counted = [(r, v) for r, v in item_votes if judges is None or r in judges]
        ones, n = sum(v for _, v in counted), len(counted)
        for rater, v in item_votes:
            own = judges is None or rater in judges  # their own vote is among the counted ones: leave it out
            others_a, others = ones - (v if own else 0), n - (1 if own else 0)
            if 2 * others_a == others:
                continue  # no strict majority among the others (or none of them)
            out[rater][1] += 1
            out[rater][0] += int((2 * others_a > others) == bool(v))
    return {r: (a, c) for r, (a, c) in out.items()}


def typical_accuracy(accuracy: Mapping[str, float], labels: Mapping[str, int]) -> float:
    """The label-weighted median accuracy: the annotator whose labels are the typical label (a few spammers do not
    drag it down, as they would a mean)."""
    order = sorted(accuracy, key=lambda r: accuracy[r])
    half, seen = sum(labels[r] for r in order) / 2.0, 0
    for r in order:
        seen += labels[r]
        if seen >= half:
            return accuracy[r]
    return math.nan


def annotator_quality(records: Sequence[Mapping[str, object]], *, min_labels: int = MIN_LABELS) -> list[AnnotatorQuality]:
    """Every annotator with decided labels on multi-rated pairs, most reliable first (see the module docstring)."""
    votes = decided_votes(records)
    accuracy, _ = dawid_skene(votes)
    agree = agreement_with_others(votes)
    n = Counter(rater for _, rater, _ in votes)
    source = {str(r["rater"]): str(getattr(r.get("source", ""), "value", r.get("source", ""))) for r in records}
    experts = agreement_with_others(votes, judges={r for r, src in source.items() if src == "expert"})
    measured = [r for r in accuracy if n[r] >= min_labels]
    scale = 2.0 * typical_accuracy({r: accuracy[r] for r in measured}, n) - 1.0 if measured else math.nan
    agreeing = {r: agree[r][0] / agree[r][1] for r in measured if agree.get(r, (0, 0))[1]}
    # Labels that agree barely above chance carry no signal to weigh by (and there EM's estimates are noise)
    signal = scale > 0.1 and typical_accuracy(agreeing, n) > MIN_AGREEMENT if agreeing else False
    out = []
    for r, p in accuracy.items():
        ok = r in measured and signal
        a, c = agree.get(r, (0, 0))
        ea, ec = experts.get(r, (0, 0))
        weight = min(max(2.0 * p - 1.0, 0.0) / scale, MAX_WEIGHT) if ok else 1.0
        out.append(AnnotatorQuality(annotator=r, source=source.get(r, ""), labels=n[r], accuracy=p,
                                    agrees_with_others=a / c if c else math.nan,
                                    agrees_with_experts=ea / ec if ec else math.nan, weight=weight, measured=ok))
    return sorted(out, key=lambda q: (-q.accuracy, q.annotator))


def quality_frame(qualities: Sequence[AnnotatorQuality]) -> pd.DataFrame:
    """The dashboard's table: ``annotator``, ``source``, ``labels``, ``accuracy``, ``agrees_with_others``,
    ``agrees_with_experts`` (left out when no expert label overlaps), ``weight`` (None where not measured)."""
    import pandas as pd

    cols = ["annotator", "source", "labels", "accuracy", "agrees_with_others", "agrees_with_experts", "weight"]
    frame = pd.DataFrame([[q.annotator, q.source, q.labels, q.accuracy, q.agrees_with_others, q.agrees_with_experts,
                           q.weight if q.measured else None] for q in qualities], columns=cols)
    return frame.drop(columns=["agrees_with_experts"]) if frame["agrees_with_experts"].isna().all() else frame


def quality_weights(qualities: Sequence[AnnotatorQuality]) -> dict[str, float]:
    """The loss weight of each measured annotator (others are absent: weight 1)."""
    return {q.annotator: q.weight for q in qualities if q.measured}


def weigh_annotators(ps: PairSet, records: Sequence[Mapping[str, object]]) -> dict[str, float]:
    """Multiply the weight of each pair in ``ps`` by its annotator's :func:`quality_weights` (from the label
    ``records`` of multi-rated pairs) and note the weights in ``ps.extra["annotator_weights"]``; returns them."""
    weights = quality_weights(annotator_quality(records))
    ps.pairs = [replace(p, weight=p.weight * weights[p.annotator]) if p.annotator in weights else p for p in ps.pairs]
    ps.extra["annotator_weights"] = {a: round(w, 4) for a, w in sorted(weights.items())}
    return weights
