"""Reward-model metrics as small pure functions (numpy / scipy); every result is JSON-safe.

Accuracy uses strict ``>``: a pair whose two scores are exactly equal is not correct, and the share of such pairs
is reported apart as ``tie_rate`` (counting equal scores as correct hides the "stuck at 0.693" bug).
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Hashable, Iterable, Sequence
from typing import Any

import numpy as np

ArrayLike = Sequence[float] | np.ndarray

# (lower bound, band, message), highest first
BANDS: tuple[tuple[float, str, str], ...] = (
    (0.90, "suspicious", "90%+ on human preferences is suspicious: check for leakage (same prompts in train and "
     "validation, duplicated pairs) or a too-easy validation set"),
    (0.80, "good", "good: well above typical human agreement on hard data"),
    (0.70, "decent", "decent: a usable reward model"),
    (0.60, "weak", "weak but above chance: more labels or a stronger backbone should help"),
    (0.0, "random", "about chance (50%): the model has not learned the preference yet"),
)


def _arr(x: ArrayLike) -> np.ndarray:
    return np.asarray(x, dtype=np.float64).reshape(-1)


def _clean(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def pairwise_accuracy(r_c: ArrayLike, r_r: ArrayLike) -> dict[str, Any]:
    """Share of pairs with ``r_c > r_r`` (strict), the share with exactly equal scores (``tie_rate``), and ``n``."""
    c, r = _arr(r_c), _arr(r_r)
    if c.shape != r.shape:
        raise ValueError(f"chosen and rejected scores differ in length ({c.size} vs {r.size})")
    n = int(c.size)
    if n == 0:
        return {"accuracy": None, "tie_rate": None, "n": 0}
    return {"accuracy": float(np.mean(c > r)), "tie_rate": float(np.mean(c == r)), "n": n}


def grouped_accuracy(r_c: ArrayLike, r_r: ArrayLike, groups: Sequence[Hashable]) -> dict[str, dict[str, Any]]:
    """:func:`pairwise_accuracy` per group (source, annotator, category...); ``None`` groups become ``"(none)"``."""
    c, r = _arr(r_c), _arr(r_r)
    if len(groups) != c.size:
        raise ValueError(f"{len(groups)} group labels for {c.size} pairs")
    idx: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        idx["(none)" if g is None else str(g)].append(i)
    return {g: pairwise_accuracy(c[ix], r[ix]) for g, ix in sorted(idx.items())}


def accuracy_std_error(accuracy: float | None, n: int | None) -> float | None:
    """Binomial standard error ``sqrt(p (1 - p) / n)`` of an accuracy measured on ``n`` pairs (None without pairs):
    about 3 points at 260 pairs, so one validation split cannot tell 0.60 from 0.63."""
    if accuracy is None or not n or not math.isfinite(accuracy):
        return None
    return math.sqrt(accuracy * (1 - accuracy) / n)


def paired_difference(a_correct: ArrayLike, b_correct: ArrayLike) -> dict[str, Any]:
    """Accuracy of B minus accuracy of A on the same pairs (per pair: 1 when the model ranked it right), with the
    paired standard error ``stdev(b - a) / sqrt(n)``: pairs both get right or both miss add nothing, so it is much
    smaller than two independent errors. ``a_only`` / ``b_only``: pairs only one got right (McNemar's counts);
    ``z``: the difference over its standard error (None when the two never disagree)."""
    a, b = _arr(a_correct).astype(float), _arr(b_correct).astype(float)
    if a.shape != b.shape:
        raise ValueError(f"paired outcomes differ in length ({a.size} vs {b.size})")
    n = int(a.size)
    if n == 0:
        return {"difference": None, "std_error": None, "z": None, "a_only": 0, "b_only": 0, "n": 0}
    d = b - a
    se = float(np.std(d, ddof=1) / math.sqrt(n)) if n > 1 else None
    diff = float(d.mean())
    return {"difference": diff, "std_error": se, "z": diff / se if se else None,
            "a_only": int(np.sum((a == 1) & (b == 0))), "b_only": int(np.sum((a == 0) & (b == 1))), "n": n}


def z_above_chance(accuracy: float, n: int) -> float | None:
    """How far ``accuracy`` on ``n`` pairs lies above 50%, in standard errors of a coin's accuracy
    (``sqrt(0.25 / n)``, the binomial test's z); None without pairs."""
    return (accuracy - 0.5) / math.sqrt(0.25 / n) if n else None


#: Standard errors above 50% from which an accuracy under 60% is called "above chance" rather than "about chance".
ABOVE_CHANCE_Z = 3.0


def accuracy_band(accuracy: float | None, n: int | None = None) -> dict[str, Any]:
    """The band of a pairwise accuracy: random (<60%), weak, decent (70%), good (80%), suspicious (90%+). With
    ``n`` (pairs measured), an accuracy under 60% that is at least :data:`ABOVE_CHANCE_Z` binomial standard errors
    above 50% keeps its band but says that the model did learn something (0.58 on 1,300 pairs is not chance)."""
    if accuracy is None or not math.isfinite(accuracy):
        return {"band": "unknown", "message": "no pairs to measure"}
    band, msg = next(((b, m) for lo, b, m in BANDS if accuracy >= lo), ("random", BANDS[-1][2]))
    z = z_above_chance(accuracy, n) if band == "random" and n else None
    if z is not None and z >= ABOVE_CHANCE_Z:
        msg = (f"above chance but barely ({z:.1f} standard errors over 50% on "
               f"{n} pairs): the model learned a little; more or cleaner labels, or a stronger backbone, should help")
    return {"band": band, "message": msg}


def overfitting_flag(train_accuracy: float | None, val_accuracy: float | None, threshold: float = 0.10) -> dict[str, Any]:
    """``overfitting`` is True when validation accuracy lags training accuracy by more than ``threshold``."""
    if train_accuracy is None or val_accuracy is None:
        return {"overfitting": False, "gap": None, "message": "no validation pairs"}
    gap = float(train_accuracy - val_accuracy)
    over = gap > threshold
    msg = (f"validation lags training by {gap * 100:.1f} points: the model memorises its training pairs "
           "(more labels, fewer epochs or more weight decay)") if over else "no sign of overfitting"
    return {"overfitting": over, "gap": gap, "message": msg}


def spearman_per_prompt(rankings: Iterable[tuple[Hashable, Sequence[float], Sequence[float]]]) -> dict[str, Any]:
    """Spearman correlation between model scores and human ranks, per prompt with >= 3 ranked responses.

    ``rankings`` yields ``(prompt_key, scores, ranks)`` with rank 1 = best. Prompts where the ranks or the scores
    are all equal (undefined correlation) are skipped and counted.
    """
    from scipy.stats import spearmanr

    per: dict[str, float] = {}
    skipped = 0
    for key, scores, ranks in rankings:
        s, k = _arr(scores), _arr(ranks)
        if s.size != k.size:
            raise ValueError(f"prompt {key}: {s.size} scores for {k.size} ranks")
        if s.size < 3:
            continue
        if np.all(k == k[0]) or np.all(s == s[0]):
            skipped += 1
            continue
        rho = spearmanr(s, -k).statistic
        if not math.isfinite(rho):
            skipped += 1
            continue
        per[str(key)] = float(rho)
    mean = float(np.mean(list(per.values()))) if per else None
    return {"mean": mean, "n_prompts": len(per), "skipped": skipped, "per_prompt": per}


def calibration(probs: ArrayLike, outcomes: ArrayLike, n_bins: int = 10) -> dict[str, Any]:
    """Expected calibration error, Brier score and reliability bins of predicted probabilities vs 0/1 outcomes.

    ECE = sum over equal-width bins of (bin share) * |mean prediction - observed frequency|.
    """
    p, y = _arr(probs), _arr(outcomes)
    if p.size != y.size:
        raise ValueError(f"{p.size} probabilities for {y.size} outcomes")
    if p.size == 0:
        return {"ece": None, "brier": None, "bins": [], "n": 0}
    if np.any((p < 0) | (p > 1)):
        raise ValueError("probabilities must lie in [0, 1]")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1], right=False), 0, n_bins - 1)
    bins = []
    ece = 0.0
    for b in range(n_bins):
        m = which == b
        cnt = int(m.sum())
        mp = float(p[m].mean()) if cnt else None
        fp = float(y[m].mean()) if cnt else None
        if cnt:
            ece += cnt / p.size * abs(mp - fp)
        bins.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "count": cnt, "mean_pred": mp, "frac_pos": fp})
    return {"ece": float(ece), "brier": float(np.mean((p - y) ** 2)), "bins": bins, "n": int(p.size)}


def sigmoid(x: ArrayLike) -> np.ndarray:
    """Numerically stable logistic function."""
    a = _arr(x)
    out = np.empty_like(a)
    pos = a >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-a[pos]))
    e = np.exp(a[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def pair_calibration(r_c: ArrayLike, r_r: ArrayLike, n_bins: int = 10) -> dict[str, Any]:
    """Calibration of ``sigmoid(r_a - r_b)`` on decided pairs, symmetrised: each pair counts once as
    (p, chosen wins = 1) and once as (1 - p, 0), so the result does not depend on which side is called "a"."""
    p = sigmoid(_arr(r_c) - _arr(r_r))
    return calibration(np.concatenate([p, 1 - p]), np.concatenate([np.ones_like(p), np.zeros_like(p)]), n_bins)



def bradley_terry_slope(x: ArrayLike, weight: ArrayLike | None = None, *,
                        bounds: tuple[float, float] = (-20.0, 20.0)) -> float | None:
    """The ``b`` within ``bounds`` that minimises the Bradley-Terry loss ``mean w softplus(-b x)`` of pairs whose
    chosen-minus-rejected difference is ``x`` (a margin, a length difference); None without a nonzero ``x``."""
    from scipy.optimize import minimize_scalar

    d = _arr(x)
    w = np.ones_like(d) if weight is None else _arr(weight)
    if d.size == 0 or not np.any(d) or w.sum() <= 0:
        return None
    res = minimize_scalar(lambda b: float(np.sum(w * np.logaddexp(0.0, -b * d)) / w.sum()), bounds=bounds,
                          method="bounded", options={"xatol": 1e-9})
    return float(res.x)


TEMPERATURE_BOUNDS = (0.05, 100.0)  # T at the upper bound: the margins predict nothing (or the wrong way)


def fit_temperature(r_c: ArrayLike, r_r: ArrayLike, *,
                    bounds: tuple[float, float] = TEMPERATURE_BOUNDS) -> float | None:
    """The temperature ``T`` within ``bounds`` that calibrates ``sigmoid((r_a - r_b) / T)`` on decided pairs: ``1 /
    b`` for the :func:`bradley_terry_slope` ``b`` of the margins. None without pairs or when every margin is 0.
    Pairs that all agree push ``T`` to the lower bound (the margins could be scaled up without limit)."""
    b = bradley_terry_slope(_arr(r_c) - _arr(r_r), bounds=(1.0 / bounds[1], 1.0 / bounds[0]))
    return None if b is None else 1.0 / b


def temperature_calibration(r_c: ArrayLike, r_r: ArrayLike, *, min_pairs: int = 20) -> dict[str, Any]:
    """:func:`fit_temperature` on these pairs with the expected calibration error and Brier score of
    ``sigmoid(margin)`` before and ``sigmoid(margin / T)`` after (in-sample: fit it on held-out pairs).
    ``temperature`` is None under ``min_pairs`` pairs."""
    c, r = _arr(r_c), _arr(r_r)
    n = int(c.size)
    t = fit_temperature(c, r) if n >= min_pairs else None
    before = pair_calibration(c, r) if n else {"ece": None, "brier": None}
    after = pair_calibration(c / t, r / t) if t is not None else {"ece": None, "brier": None}
    return {"temperature": t, "n": n, "ece_before": before["ece"], "ece_after": after["ece"],
            "brier_before": before["brier"], "brier_after": after["brier"]}

def histogram(values: ArrayLike, edges: np.ndarray) -> list[int]:
    """Counts of ``values`` in the bins ``edges`` (the last bin includes its right edge)."""
    return [int(c) for c in np.histogram(_arr(values), bins=edges)[0]]


def score_histograms(chosen: ArrayLike, rejected: ArrayLike, bins: int = 20) -> dict[str, Any]:
    """Histograms of chosen and rejected scores on shared edges (for overlaid plots)."""
    c, r = _arr(chosen), _arr(rejected)
    both = np.concatenate([c, r])
    if both.size == 0:
        return {"edges": [], "chosen": [], "rejected": []}
    lo, hi = float(both.min()), float(both.max())
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    return {"edges": [float(e) for e in edges], "chosen": histogram(c, edges), "rejected": histogram(r, edges)}


def margin_distribution(r_c: ArrayLike, r_r: ArrayLike, bins: int = 20) -> dict[str, Any]:
    """Distribution of ``r_c - r_r``: histogram, mean, median and share of wrong-way (negative) margins."""
    m = _arr(r_c) - _arr(r_r)
    if m.size == 0:
        return {"edges": [], "counts": [], "mean": None, "median": None, "share_negative": None}
    lo, hi = float(m.min()), float(m.max())
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    return {
        "edges": [float(e) for e in edges],
        "counts": histogram(m, edges),
        "mean": float(m.mean()),
        "median": float(np.median(m)),
        "share_negative": float(np.mean(m < 0)),
    }


def word_count(text: str) -> int:
    """Whitespace-separated words of a response (the length measure of :func:`length_bias`)."""
    return len(text.split())


def length_bias(r_c: ArrayLike, r_r: ArrayLike, len_c: ArrayLike, len_r: ArrayLike, *, threshold: float = 0.15,
                gap_threshold: float = 0.30, min_pairs: int = 20) -> dict[str, Any]:
    """How far a model's preferences follow response length, the best-known way to game a reward model (a policy
    pads, or cuts, its answers). Over decided pairs whose two responses differ in length:

    * ``labels_prefer_longer``: share where the chosen response is the longer one (what length alone would score);
    * ``model_prefers_longer``: share where the model scores the longer one strictly higher;
    * ``accuracy_chosen_longer`` / ``accuracy_chosen_shorter``: the model's accuracy on each kind of pair, with their
      counts (a model that ignores length is about as accurate on both);
    * ``excess``: ``model_prefers_longer - labels_prefer_longer``;
    * ``flag``: the model leans on length, when ``|excess|`` passes ``threshold`` (it prefers one length more than
      the labels do) or the two accuracies differ by more than ``gap_threshold``; None under ``min_pairs`` pairs;
      and a ``message`` saying so.
    """
    c, r, lc, lr = _arr(r_c), _arr(r_r), _arr(len_c), _arr(len_r)
    if not (c.size == r.size == lc.size == lr.size):
        raise ValueError(f"length_bias: {c.size} chosen and {r.size} rejected scores, {lc.size} and {lr.size} lengths")
    differ = lc != lr
    c, r, lc, lr = c[differ], r[differ], lc[differ], lr[differ]
    n = int(c.size)
    longer = lc > lr  # the chosen response is the longer one
    mean = lambda x: float(np.mean(x)) if np.size(x) else None  # noqa: E731
    out: dict[str, Any] = {
        "n": n, "n_chosen_longer": int(longer.sum()), "n_chosen_shorter": int((~longer).sum()),
        "labels_prefer_longer": mean(longer),
        "model_prefers_longer": mean(np.where(longer, c > r, r > c)),
        "accuracy_chosen_longer": mean((c > r)[longer]), "accuracy_chosen_shorter": mean((c > r)[~longer]),
    }
    if n == 0:
        return {**out, "excess": None, "flag": None, "message": "no pair with responses of different lengths"}
    pm, pl = out["model_prefers_longer"], out["labels_prefer_longer"]
    acc_l, acc_s = out["accuracy_chosen_longer"], out["accuracy_chosen_shorter"]
    out["excess"] = pm - pl
    side = "longer" if pm >= 0.5 else "shorter"
    share = (lambda x: x) if side == "longer" else (lambda x: 1 - x)
    accs = ", ".join(f"{a:.0%} when the chosen response is the {k} one"
                     for a, k in ((acc_l, "longer"), (acc_s, "shorter")) if a is not None)
    message = (f"the model prefers the {side} response in {share(pm):.0%} of pairs, the labels in {share(pl):.0%}; "
               f"accuracy {accs}")
    if n < min_pairs:
        return {**out, "flag": None,
                "message": f"only {n} pairs with responses of different lengths, too few to judge: {message}"}
    gap = abs(acc_l - acc_s) if acc_l is not None and acc_s is not None else 0.0
    flag = abs(out["excess"]) > threshold or gap > gap_threshold
    if flag:
        how = "padding" if side == "longer" else "shortening"
        message += f": a policy optimised against it can gain reward by {how} its answers"
    return {**out, "flag": flag, "message": message}

def split_metrics(
    r_c: ArrayLike,
    r_r: ArrayLike,
    *,
    sources: Sequence[Hashable] | None = None,
    annotators: Sequence[Hashable] | None = None,
    categories: Sequence[Hashable] | None = None,
    lengths: tuple[ArrayLike, ArrayLike] | None = None,
    with_distributions: bool = True,
) -> dict[str, Any]:
    """Everything measured on one split's decided pairs: accuracy, tie rate, band, groups, calibration,
    histograms, and with ``lengths`` (chosen's, rejected's: :func:`word_count`) the :func:`length_bias`."""
    out = pairwise_accuracy(r_c, r_r)
    out["band"] = accuracy_band(out["accuracy"], out["n"])
    if sources is not None:
        out["per_source"] = grouped_accuracy(r_c, r_r, sources)
    if annotators is not None:
        out["per_annotator"] = grouped_accuracy(r_c, r_r, annotators)
    if categories is not None:
        out["per_category"] = grouped_accuracy(r_c, r_r, categories)
    if out["n"]:
        if lengths is not None:
            out["length_bias"] = length_bias(r_c, r_r, *lengths)
        cal = pair_calibration(r_c, r_r)
        out["ece"], out["brier"], out["reliability"] = cal["ece"], cal["brier"], cal["bins"]
        if with_distributions:
            out["score_hist"] = score_histograms(r_c, r_r)
            out["margins"] = margin_distribution(r_c, r_r)
    return out
