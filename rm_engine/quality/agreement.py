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
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

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
    rows = [list(r) for r in counts]
    width = len(rows[0]) if rows else 0
    if any(len(r) != width for r in rows):
        raise ValueError("fleiss_kappa: every row must have one count per category")
    arr = np.asarray(rows, dtype=np.float64).reshape(len(rows), width)
    if (arr < 0).any():
        raise ValueError("fleiss_kappa: counts must be non-negative")
    arr = arr[arr.sum(axis=1) >= 2]
    if not len(arr):
        return math.nan
    n_i = arr.sum(axis=1)
    p_j = arr.sum(axis=0) / n_i.sum()
    p_bar = float(np.mean((arr * (arr - 1)).sum(axis=1) / (n_i * (n_i - 1))))
    p_e = float((p_j * p_j).sum())
    if p_e >= 1.0:
        return math.nan
    return (p_bar - p_e) / (1.0 - p_e)


def krippendorff_alpha_counts(counts: Sequence[Sequence[int]] | np.ndarray) -> float:
    """Krippendorff's nominal alpha from an items x values matrix of counts (vectorised).

    Coincidences ``o_ck = sum_u n_uc (n_uk - [c = k]) / (m_u - 1)`` over units with ``m_u >= 2`` values;
    ``alpha = 1 - (n - 1) sum_{c != k} o_ck / sum_{c != k} n_c n_k``.
    """
    arr = np.asarray(counts, dtype=np.float64)
    if arr.ndim != 2 or not arr.size:
        return math.nan
    m = arr.sum(axis=1)
    arr, m = arr[m >= 2], m[m >= 2]
    if not len(arr):
        return math.nan
    w = arr / (m - 1)[:, None]
    o = arr.T @ w - np.diag(w.sum(axis=0))
    n_c = o.sum(axis=1)
    n = n_c.sum()
    if n < 2 or (n_c > 0).sum() < 2:
        return math.nan
    d_o = (o.sum() - np.trace(o)) / n
    d_e = (n_c.sum() ** 2 - (n_c ** 2).sum()) / (n * (n - 1))
    if d_e == 0:
        return math.nan
    return float(1.0 - d_o / d_e)


def krippendorff_alpha_nominal(units: Iterable[Sequence[Hashable | None]]) -> float:
    """Krippendorff's alpha for nominal data.

    ``units`` holds, for each unit (item), the values its coders gave; ``None`` marks a missing value.
    Units with fewer than two values are not pairable and are ignored. ``alpha = 1 - D_o / D_e`` from the
    coincidence matrix; ``nan`` when fewer than two pairable values exist or only one value was ever used.
    """
    rows = [[v for v in unit if v is not None] for unit in units]
    values = sorted({v for r in rows for v in r}, key=repr)
    index = {v: i for i, v in enumerate(values)}
    counts = np.zeros((len(rows), len(values)))
    for u, r in enumerate(rows):
        for v in r:
            counts[u, index[v]] += 1
    return krippendorff_alpha_counts(counts)


class Rating(NamedTuple):
    """One nominal judgment of one item by one rater (an annotator) with the rater's source."""

    item: Hashable
    rater: str
    value: str
    source: str = ""


def ratings_from_outcomes(records: Iterable[Mapping[str, object]], *, ties: bool) -> list[Rating]:
    """Turn label records (``item``, ``rater``, ``outcome``, optional ``source``) into ratings.

    A rater who judged an item twice counts once: their latest judgment (the last record). With
    ``ties=False`` that judgment is then dropped when it is a no-preference one.
    """
    latest: dict[tuple[Hashable, str], Rating] = {}
    for r in records:
        cat = outcome_category(str(r["outcome"]), ties=True)
        key = (r["item"], str(r["rater"]))
        latest[key] = Rating(item=r["item"], rater=str(r["rater"]), value=cat, source=str(r.get("source", "")))  # type: ignore[arg-type]
    return [r for r in latest.values() if ties or r.value != "tie"]


def item_counts(ratings: Iterable[Rating]) -> tuple[np.ndarray, list[str]]:
    """Items with at least two ratings as an items x categories count matrix, and the category names."""
    by_item: dict[Hashable, Counter[str]] = defaultdict(Counter)
    for r in ratings:
        by_item[r.item][r.value] += 1
    rows = [c for c in by_item.values() if sum(c.values()) >= 2]
    cats = sorted({v for c in rows for v in c})
    index = {c: i for i, c in enumerate(cats)}
    counts = np.zeros((len(rows), len(cats)))
    for u, c in enumerate(rows):
        for v, k in c.items():
            counts[u, index[v]] = k
    return counts, cats


def multi_rated_fleiss(ratings: Iterable[Rating]) -> tuple[float, int]:
    """Fleiss' kappa over items with at least two ratings; returns ``(kappa, n_items)``."""
    counts, _ = item_counts(ratings)
    return (fleiss_kappa(counts) if len(counts) else math.nan), len(counts)


def multi_rated_alpha(ratings: Iterable[Rating]) -> tuple[float, int]:
    """Krippendorff's nominal alpha over items with at least two ratings; returns ``(alpha, n_items)``."""
    counts, _ = item_counts(ratings)
    return krippendorff_alpha_counts(counts), len(counts)


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


def _kappa_from_confusion(conf: Mapping[tuple[str, str], int]) -> tuple[int, float, float]:
    """``(n, percent agreement, Cohen's kappa)`` from a confusion table ``{(value1, value2): count}``."""
    n = sum(conf.values())
    if n == 0:
        return 0, math.nan, math.nan
    m1: Counter[str] = Counter()
    m2: Counter[str] = Counter()
    agree = 0
    for (x, y), c in conf.items():
        m1[x] += c
        m2[y] += c
        if x == y:
            agree += c
    p_o = agree / n
    p_e = sum(m1[k] * m2.get(k, 0) for k in m1) / (n * n)
    return n, p_o, (math.nan if p_e >= 1.0 else (p_o - p_e) / (1.0 - p_e))


def annotator_pair_kappas(ratings: Iterable[Rating], *, min_common: int = 2) -> list[PairAgreement]:
    """Cohen's kappa for every pair of raters who judged at least ``min_common`` items in common.

    Built from the items' co-ratings (cost grows with the ratings per item, not with the number of rater
    pairs), so hundreds of annotators over 100k labels stay fast.
    """
    by_item: dict[Hashable, list[tuple[str, str]]] = defaultdict(list)
    for r in ratings:
        by_item[r.item].append((r.rater, r.value))
    conf: dict[tuple[str, str], Counter[tuple[str, str]]] = defaultdict(Counter)
    for votes in by_item.values():
        if len(votes) < 2:
            continue
        votes.sort()
        for i in range(len(votes) - 1):
            ra, va = votes[i]
            for rb, vb in votes[i + 1:]:
                conf[(ra, rb)][(va, vb)] += 1
    out = []
    for (a, b) in sorted(conf):
        n, pct, kappa = _kappa_from_confusion(conf[(a, b)])
        if n >= min_common:
            out.append(PairAgreement(a, b, n, pct, kappa))
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
    counts, _ = item_counts(ratings)
    n_items = len(counts)
    fk = fleiss_kappa(counts) if n_items else math.nan
    alpha = krippendorff_alpha_counts(counts)
    return AgreementSummary(
        ties=ties,
        n_ratings=len(ratings),
        n_multi_rated=n_items,
        fleiss_kappa=fk,
        krippendorff_alpha=alpha,
        annotator_pairs=tuple(annotator_pair_kappas(ratings, min_common=min_common)),
        sources=tuple(source_agreement(ratings)),
    )


def summary_tables(summaries: Sequence[AgreementSummary]) -> dict[str, pd.DataFrame]:
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


def by_guidelines(records: Sequence[Mapping[str, object]]) -> pd.DataFrame:
    """Krippendorff's alpha (with and without ties) among the labels made under each guidelines revision
    (``guidelines`` of the records; None: before any, or imported): did new guidelines make labels agree more?
    Columns ``guidelines``, ``ties``, ``krippendorff_alpha``, ``items`` (pairs with 2+ labels under it)."""
    import pandas as pd

    groups: dict[object, list[Mapping[str, object]]] = {}
    for r in records:
        groups.setdefault(r.get("guidelines"), []).append(r)
    rows = []
    for rev in sorted(groups, key=lambda g: (g is not None, g or 0)):
        for ties in (True, False):
            alpha, items = multi_rated_alpha(ratings_from_outcomes(groups[rev], ties=ties))
            if items:
                rows.append(("none" if rev is None else f"revision {rev}", "with ties" if ties else "without ties",
                             alpha, items))
    return pd.DataFrame(rows, columns=["guidelines", "ties", "krippendorff_alpha", "items"])
