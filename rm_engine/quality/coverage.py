"""Prompt coverage: are the prompts a reward model will judge close to prompts it was trained on?

For each downstream prompt (uploaded by a researcher) we find the nearest labelled prompt and report the
cosine similarity and distance (``1 - similarity``). Two ways to measure it:

* ``embedding``: mean-pooled backbone embeddings from the engine's on-disk feature cache
  (``rm_engine.head.features``); texts not cached yet are embedded once and then cached. Needs the backbone.
* ``tfidf``: TF-IDF cosine over word unigrams and bigrams (pure numpy/scipy, instant); the fallback when no
  features exist or the backbone cannot be loaded, and the default for a quick check in the app.

A prompt counts as *covered* when its similarity reaches the threshold of the method
(:data:`DEFAULT_THRESHOLDS`): MiniLM embeddings of paraphrases typically score above 0.5; TF-IDF needs
shared words, so its threshold is lower.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import sparse

from rm_engine.backbone import resolve_backbone

if TYPE_CHECKING:
    import pandas as pd

    from db.config import Settings
    from rm_engine.head.features import TextItem

DEFAULT_THRESHOLDS = {"embedding": 0.5, "tfidf": 0.3}
_TOKEN = re.compile(r"[^\W_]+", re.UNICODE)
MAX_UPLOAD_PROMPTS = 5000


@dataclass(frozen=True)
class CoverageResult:
    """Nearest labelled prompt for each downstream prompt (lists are aligned with the input prompts)."""

    method: str
    threshold: float
    prompts: tuple[str, ...]
    nearest_index: tuple[int, ...]  # index into the labelled prompts; -1 when there are none
    similarity: tuple[float, ...]

    @property
    def distance(self) -> tuple[float, ...]:
        """``1 - similarity`` per downstream prompt."""
        return tuple(1.0 - s for s in self.similarity)

    @property
    def covered(self) -> tuple[bool, ...]:
        return tuple(s >= self.threshold for s in self.similarity)

    @property
    def share_covered(self) -> float:
        """Share of downstream prompts that are covered (``nan`` for no prompts)."""
        return sum(self.covered) / len(self.prompts) if self.prompts else math.nan


def tokenize(text: str) -> list[str]:
    """Lower-case word unigrams plus adjacent bigrams."""
    words = [w.lower() for w in _TOKEN.findall(text)]
    return words + [f"{a} {b}" for a, b in zip(words, words[1:])]


def tfidf_matrix(docs: Sequence[str], vocab: dict[str, int] | None = None, idf: np.ndarray | None = None
                 ) -> tuple[sparse.csr_matrix, dict[str, int], np.ndarray]:
    """L2-normalised TF-IDF rows (smooth idf: ``log((1 + N) / (1 + df)) + 1``). With ``vocab``/``idf`` given,
    documents are projected on that vocabulary (unknown words are dropped)."""
    counts = [Counter(tokenize(d)) for d in docs]
    if vocab is None:
        vocab = {}
        for c in counts:
            for t in c:
                vocab.setdefault(t, len(vocab))
        df = np.zeros(len(vocab))
        for c in counts:
            for t in c:
                df[vocab[t]] += 1
        idf = np.log((1 + len(docs)) / (1 + df)) + 1.0
    assert idf is not None
    rows, cols, vals = [], [], []
    for i, c in enumerate(counts):
        for t, n in c.items():
            j = vocab.get(t)
            if j is not None:
                rows.append(i)
                cols.append(j)
                vals.append((1.0 + math.log(n)) * idf[j])
    m = sparse.csr_matrix((vals, (rows, cols)), shape=(len(docs), len(vocab)), dtype=np.float64)
    norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=1)).ravel())
    norms[norms == 0] = 1.0
    return sparse.csr_matrix(m.multiply(1.0 / norms[:, None])), vocab, idf


def _nearest(sim: np.ndarray) -> tuple[tuple[int, ...], tuple[float, ...]]:
    if sim.shape[1] == 0:
        return tuple([-1] * sim.shape[0]), tuple([0.0] * sim.shape[0])
    idx = np.asarray(sim.argmax(axis=1)).ravel()
    best = sim[np.arange(sim.shape[0]), idx]
    return tuple(int(i) for i in idx), tuple(float(np.clip(b, -1.0, 1.0)) for b in np.asarray(best).ravel())


def tfidf_coverage(downstream: Sequence[str], labelled: Sequence[str], threshold: float | None = None) -> CoverageResult:
    """Nearest labelled prompt by TF-IDF cosine (vocabulary and idf fitted on the labelled prompts)."""
    th = DEFAULT_THRESHOLDS["tfidf"] if threshold is None else float(threshold)
    if not labelled:
        idx, sim = _nearest(np.zeros((len(downstream), 0)))
        return CoverageResult("tfidf", th, tuple(downstream), idx, sim)
    lab, vocab, idf = tfidf_matrix(labelled)
    down, _, _ = tfidf_matrix(downstream, vocab, idf)
    sim = (down @ lab.T).toarray() if len(downstream) else np.zeros((0, len(labelled)))
    idx, best = _nearest(sim)
    return CoverageResult("tfidf", th, tuple(downstream), idx, best)


Embedder = Callable[[Sequence[str]], np.ndarray]


def embedding_coverage(
    downstream: Sequence[str], labelled: Sequence[str], embed: Embedder, threshold: float | None = None
) -> CoverageResult:
    """Nearest labelled prompt by cosine of embeddings from ``embed`` (texts -> ``(n, d)`` array)."""
    th = DEFAULT_THRESHOLDS["embedding"] if threshold is None else float(threshold)
    if not labelled or not downstream:
        idx, sim = _nearest(np.zeros((len(downstream), 0 if not labelled else len(labelled))))
        return CoverageResult("embedding", th, tuple(downstream), idx, sim)

    def unit(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        n = np.linalg.norm(x, axis=1, keepdims=True)
        return x / np.where(n == 0, 1.0, n)

    sim = unit(embed(list(downstream))) @ unit(embed(list(labelled))).T
    idx, best = _nearest(sim)
    return CoverageResult("embedding", th, tuple(downstream), idx, best)


class FeatureEmbedder:
    """Prompt embeddings through the engine's feature cache (``rm_engine.head.features``): the context-alone ("p")
    vectors that head-mode training already cached, so labelled prompts usually cost nothing."""

    def __init__(self, settings: Settings, backbone: str = "minilm", max_length: int = 256,
                 progress: Callable[[float, str], None] | None = None) -> None:
        # the feature extractor loads torch (seconds); the TF-IDF fallback and the Dashboard need none of it
        from rm_engine.head.features import FeatureExtractor

        self.extractor = FeatureExtractor(settings, resolve_backbone(backbone, settings), max_length=max_length)
        self.progress = progress  # (fraction done, message) while texts are embedded

    def _items(self, texts: Sequence[str]) -> list[TextItem]:
        from rm_engine.head.features import TextItem

        return [TextItem("p", t, (), "") for t in texts]

    def cached_share(self, texts: Sequence[str]) -> float:
        """Share of ``texts`` whose embedding is already in the cache (0 for no texts)."""
        if not texts:
            return 0.0
        keys = [it.key for it in self._items(texts)]
        return len(self.extractor.cache.get_many(keys)) / len(keys)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        report = self.progress
        cb = None if report is None else (
            lambda d: report(min(1.0, d["step"] / max(1, d["total"])), f"embedding {d['step']}/{d['total']} prompts"))
        return self.extractor.embed(self._items(texts), progress=cb)


def check_coverage(
    downstream: Sequence[str],
    labelled: Sequence[str],
    *,
    method: str = "auto",
    settings: Settings | None = None,
    backbone: str = "minilm",
    threshold: float | None = None,
    progress: Callable[[float, str], None] | None = None,
) -> tuple[CoverageResult, str]:
    """Coverage of ``downstream`` prompts by ``labelled`` ones, and a one-line note on the method used.

    ``method``: ``"tfidf"``, ``"embedding"`` or ``"auto"`` (embeddings when at least half of the labelled
    prompts already have cached features, else TF-IDF). An embedding failure (backbone missing or unloadable)
    falls back to TF-IDF and says why. ``progress(fraction, message)`` reports embedding work (can be minutes for
    thousands of new prompts on a CPU).
    """
    if method not in ("auto", "tfidf", "embedding"):
        raise ValueError(f"coverage method must be auto, tfidf or embedding, got {method!r}")
    if method != "tfidf" and settings is not None and labelled:
        try:
            emb = FeatureEmbedder(settings, backbone, progress=progress)
            share = emb.cached_share(labelled)
            if method == "embedding" or share >= 0.5:
                res = embedding_coverage(downstream, labelled, emb, threshold)
                return res, f"{backbone} embeddings (feature cache held {share:.0%} of the labelled prompts)"
            note = f"TF-IDF cosine: only {share:.0%} of the labelled prompts have cached {backbone} features"
        except Exception as exc:  # noqa: BLE001  (any backbone problem falls back to the fast path)
            note = f"TF-IDF cosine: embeddings unavailable ({type(exc).__name__}: {str(exc)[:200]})"
    else:
        note = "TF-IDF cosine"
    return tfidf_coverage(downstream, labelled, threshold), note


def parse_prompt_upload(data: bytes, filename: str = "upload", limit: int = MAX_UPLOAD_PROMPTS) -> list[str]:
    """Prompts from an uploaded file: ``.jsonl`` (a ``prompt`` or ``text`` field per line), ``.csv`` (a
    ``prompt`` or ``text`` column, else the first), otherwise one prompt per non-empty line.

    Raises ``ValueError`` naming the file and line for undecodable or malformed input, or above ``limit``.
    """
    import csv
    import io
    import json

    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{filename}: not UTF-8 text (byte {exc.start})") from None
    name = filename.lower()
    out: list[str] = []
    if name.endswith(".jsonl") or name.endswith(".json"):
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{filename}, line {n}: invalid JSON ({exc.msg})") from None
            val = rec.get("prompt", rec.get("text")) if isinstance(rec, dict) else rec if isinstance(rec, str) else None
            if not isinstance(val, str):
                raise ValueError(f"{filename}, line {n}: expected a string field 'prompt' or 'text'")
            out.append(val)
    elif name.endswith(".csv"):
        rows = list(csv.reader(io.StringIO(text)))
        if rows:
            header = [h.strip().lower() for h in rows[0]]
            col = header.index("prompt") if "prompt" in header else header.index("text") if "text" in header else 0
            for n, row in enumerate(rows[1:], 2):
                if len(row) <= col:
                    raise ValueError(f"{filename}, line {n}: missing column {rows[0][col]!r}")
                out.append(row[col])
    else:
        out = list(text.splitlines())
    out = [p.strip() for p in out if p and p.strip()]
    if len(out) > limit:
        raise ValueError(f"{filename}: {len(out)} prompts; at most {limit} are checked at once")
    return out


def result_frame(result: CoverageResult, labelled: Sequence[str]) -> pd.DataFrame:
    """A table of the result, least covered first: ``prompt``, ``nearest_labelled``, ``similarity``, ``covered``."""
    import pandas as pd

    df = pd.DataFrame(
        {
            "prompt": list(result.prompts),
            "nearest_labelled": [labelled[i] if i >= 0 else None for i in result.nearest_index],
            "similarity": list(result.similarity),
            "covered": list(result.covered),
        }
    )
    return df.sort_values("similarity", kind="stable").reset_index(drop=True)
