"""Inter-annotator agreement: Cohen's kappa, Fleiss' kappa and Krippendorff's alpha (nominal).

Pure functions on plain Python data; no database, no torch. The dashboard feeds them the labels of
multi-rated comparisons (``db.analytics.agreement_records``).

Preference outcomes are mapped to nominal categories by :func:`outcome_category`: ``a`` and ``b`` stay as they
are, ``tie`` and ``both_bad`` both mean "no preference" and become ``tie``. *With ties* keeps the ``tie``
category; *without ties* drops every no-preference label first (the MT-Bench convention: agreement figures
change a lot with ties, so both are reported).

Degenerate inputs are explicit: a statistic that is undefined (no items, fewer than two raters, or only one
category ever used so that chance agreement is 1) is ``nan``, never a made-up 0 or 1.
"""
from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from itertools import combinations
from typing import TYPE_CHECKING, Hashable, Iterable, Mapping, Sequence

if TYPE_CHECKING:
    import pandas as pd

NO_PREFERENCE = ("tie", "both_bad")


def outcome_category(outcome: str, *, ties: bool) -> str | None:
    """The nominal category of an outcome: ``a``/``b``/``tie``; ``None`` when ties are dropped and it is one."""
    o = getattr(outcome, "value", outcome)
    if o in NO_PREFERENCE:
        return "tie" if ties else None
    if o not in ("a", "b"):
        raise ValueError(f"unknown outcome {o!r}: expected one of a, b, tie, both_bad")
    return str(o)


def cohen_kappa(rater1: Sequence[Hashable], rater2: Sequence[Hashable]) -> float:
    """Cohen's kappa of two raters who judged the same items (``rater1[i]`` and ``rater2[i]`` are item ``i``).

    ``kappa = (p_o - p_e) / (1 - p_e)``; ``nan`` for no items or when ``p_e == 1`` (one category only).
    """
    if len(rater1) != len(rater2):
        raise ValueError(f"cohen_kappa: the raters judged {len(rater1)} and {len(rater2)} items; they must match")
    n = len(rater1)
    if n == 0:
        return math.nan
    p_o = sum(1 for x, y in zip(rater1, rater2) if x == y) / n
    c1, c2 = Counter(rater1), Counter(rater2)
    p_e = sum(c1[k] * c2.get(k, 0) for k in c1) / (n * n)
    if p_e >= 1.0:
        return math.nan
    return (p_o - p_e) / (1.0 - p_e)


def fleiss_kappa(counts: Sequence[Sequence[int]]) -> float:
    """Fleiss' kappa from an items x categories matrix of rating counts.

    Items may have different numbers of raters (the usual generalisation: each item's agreement is
    ``sum n_ij (n_ij - 1) / (n_i (n_i - 1))`` and category shares are pooled over all ratings); items with
    fewer than two ratings are ignored. ``nan`` when nothing is left or chance agreement is 1.
    """
    rows = [list(map(int, r)) for r in counts if sum(r) >= 2]
    if not rows:
        return math.nan
    width = len(rows[0])
    if any(len(r) != width for r in rows):
        raise ValueError("fleiss_kappa: every row must have one count per category")
    if any(x < 0 for r in rows for x in r):
        raise ValueError("fleiss_kappa: counts must be non-negative")
    total = sum(sum(r) for r in rows)
    p_j = [sum(r[j] for r in rows) / total for j in range(width)]
    p_bar = sum(sum(x * (x - 1) for x in r) / (sum(r) * (sum(r) - 1)) for r in rows) / len(rows)
    p_e = sum(p * p for p in p_j)
    if p_e >= 1.0:
        return math.nan
    return (p_bar - p_e) / (1.0 - p_e)


def krippendorff_alpha_nominal(units: Iterable[Sequence[Hashable | None]]) -> float:
    """Krippendorff's alpha for nominal data.

    ``units`` holds, for each unit (item), the values its coders gave; ``None`` marks a missing value.
    Units with fewer than two values are not pairable and are ignored. ``alpha = 1 - D_o / D_e`` from the
    coincidence matrix; ``nan`` when fewer than two pairable values exist or only one value was ever used.
    """
    coincid: dict[tuple[Hashable, Hashable], float] = defaultdict(float)
    for unit in units:
        vals = [v for v in unit if v is not None]
        m = len(vals)
        if m < 2:
            continue
        for i, c in enumerate(vals):
            for j, k in enumerate(vals):
                if i != j:
                    coincid[(c, k)] += 1.0 / (m - 1)
    n_c: dict[Hashable, float] = defaultdict(float)
    for (c, _k), w in coincid.items():
        n_c[c] += w
    n = sum(n_c.values())
    if n < 2 or len(n_c) < 2:
        return math.nan
    d_o = sum(w for (c, k), w in coincid.items() if c != k) / n
    d_e = sum(n_c[c] * n_c[k] for c in n_c for k in n_c if c != k) / (n * (n - 1))
    if d_e == 0:
        return math.nan
    return 1.0 - d_o / d_e


@dataclass(frozen=True)
class Rating:
    """One nominal judgment of one item by one rater (an annotator) with the rater's source."""

    item: Hashable
    rater: str
    value: str
    source: str = ""


def ratings_from_outcomes(records: Iterable[Mapping[str, object]], *, ties: bool) -> list[Rating]:
    """Turn label records (``item``, ``rater``, ``outcome``, optional ``source``) into ratings.

    With ``ties=False`` no-preference labels are dropped. A rater who judged an item twice counts once
    (their latest judgment, i.e. the last record).
    """
    latest: dict[tuple[Hashable, str], Rating] = {}
    for r in records:
        cat = outcome_category(str(r["outcome"]), ties=ties)
        if cat is None:
            continue
        key = (r["item"], str(r["rater"]))
        latest[key] = Rating(item=r["item"], rater=str(r["rater"]), value=cat, source=str(r.get("source", "")))  # type: ignore[arg-type]
    return list(latest.values())


def _by_item(ratings: Iterable[Rating]) -> dict[Hashable, list[Rating]]:
    out: dict[Hashable, list[Rating]] = defaultdict(list)
    for r in ratings:
        out[r.item].append(r)
    return out


def multi_rated_fleiss(ratings: Iterable[Rating]) -> tuple[float, int]:
    """Fleiss' kappa over items with at least two ratings; returns ``(kappa, n_items)``."""
    items = {k: v for k, v in _by_item(ratings).items() if len(v) >= 2}
    cats = sorted({r.value for v in items.values() for r in v})
    counts = [[sum(1 for r in v if r.value == c) for c in cats] for v in items.values()]
    return fleiss_kappa(counts), len(counts)


def multi_rated_alpha(ratings: Iterable[Rating]) -> tuple[float, int]:
    """Krippendorff's nominal alpha over items with at least two ratings; returns ``(alpha, n_items)``."""
    units = [[r.value for r in v] for v in _by_item(ratings).values() if len(v) >= 2]
    return krippendorff_alpha_nominal(units), len(units)


@dataclass(frozen=True)
class PairAgreement:
    """Agreement between two raters (annotators or sources) on the items both judged."""

    first: str
    second: str
    n_items: int
    percent_agreement: float
    kappa: float


def _pair_stats(first: str, second: str, x: list[str], y: list[str]) -> PairAgreement:
    n = len(x)
    pct = sum(1 for a, b in zip(x, y) if a == b) / n if n else math.nan
    return PairAgreement(first, second, n, pct, cohen_kappa(x, y))


def annotator_pair_kappas(ratings: Iterable[Rating], *, min_common: int = 2) -> list[PairAgreement]:
    """Cohen's kappa for every pair of raters who judged at least ``min_common`` items in common."""
    per_rater: dict[str, dict[Hashable, str]] = defaultdict(dict)
    for r in ratings:
        per_rater[r.rater][r.item] = r.value
    out = []
    for a, b in combinations(sorted(per_rater), 2):
        common = [i for i in per_rater[a] if i in per_rater[b]]
        if len(common) >= min_common:
            out.append(_pair_stats(a, b, [per_rater[a][i] for i in common], [per_rater[b][i] for i in common]))
    return out


def majority(values: Sequence[str]) -> str | None:
    """The most frequent value, or ``None`` when the top count is shared (no majority)."""
    top = Counter(values).most_common(2)
    if not top or (len(top) == 2 and top[0][1] == top[1][1]):
        return None
    return top[0][0]


def source_agreement(ratings: Iterable[Rating], *, min_common: int = 1) -> list[PairAgreement]:
    """Agreement between sources (expert, crowd, ai): each source's majority verdict per item, then Cohen's kappa.

    Items where a source has no majority (a split vote) are left out of that source's comparisons.
    """
    votes: dict[str, dict[Hashable, list[str]]] = defaultdict(lambda: defaultdict(list))
    for r in ratings:
        votes[r.source][r.item].append(r.value)
    verdict = {s: {i: m for i, vs in items.items() if (m := majority(vs)) is not None} for s, items in votes.items()}
    out = []
    for a, b in combinations(sorted(verdict), 2):
        common = [i for i in verdict[a] if i in verdict[b]]
        if len(common) >= min_common:
            out.append(_pair_stats(a, b, [verdict[a][i] for i in common], [verdict[b][i] for i in common]))
    return out


@dataclass(frozen=True)
class AgreementSummary:
    """Every agreement figure for one setting of ``ties``."""

    ties: bool
    n_ratings: int
    n_multi_rated: int
    fleiss_kappa: float
    krippendorff_alpha: float
    annotator_pairs: tuple[PairAgreement, ...]
    sources: tuple[PairAgreement, ...]


def summarize(records: Sequence[Mapping[str, object]], *, ties: bool, min_common: int = 2) -> AgreementSummary:
    """All agreement statistics of label records (``item``, ``rater``, ``outcome``, ``source``)."""
    ratings = ratings_from_outcomes(records, ties=ties)
    fk, n_items = multi_rated_fleiss(ratings)
    alpha, _ = multi_rated_alpha(ratings)
    return AgreementSummary(
        ties=ties,
        n_ratings=len(ratings),
        n_multi_rated=n_items,
        fleiss_kappa=fk,
        krippendorff_alpha=alpha,
        annotator_pairs=tuple(annotator_pair_kappas(ratings, min_common=min_common)),
        sources=tuple(source_agreement(ratings)),
    )


def summary_tables(summaries: Sequence[AgreementSummary]) -> dict[str, "pd.DataFrame"]:
    """Dashboard tables of several summaries (typically with and without ties):

    * ``overall``: ``statistic`` (Fleiss' kappa / Krippendorff's alpha), ``ties`` ("with ties"/"without ties"),
      ``value``, ``items``;
    * ``annotators``: Cohen's kappa per annotator pair; ``sources``: agreement between sources.
    """
    import pandas as pd

    overall, ann, src = [], [], []
    for sm in summaries:
        tag = "with ties" if sm.ties else "without ties"
        overall.append(("Fleiss' kappa", tag, sm.fleiss_kappa, sm.n_multi_rated))
        overall.append(("Krippendorff's alpha", tag, sm.krippendorff_alpha, sm.n_multi_rated))
        for rows, pairs in ((ann, sm.annotator_pairs), (src, sm.sources)):
            rows.extend((p.first, p.second, tag, p.n_items, p.percent_agreement, p.kappa) for p in pairs)
    cols = ["first", "second", "ties", "items", "percent_agreement", "kappa"]
    return {
        "overall": pd.DataFrame(overall, columns=["statistic", "ties", "value", "items"]),
        "annotators": pd.DataFrame(ann, columns=cols),
        "sources": pd.DataFrame(src, columns=cols),
    }
