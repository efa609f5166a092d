"""Loader for ``hh_harmless_1300.jsonl.gz``, the first 1,300 pairs of HH-RLHF's harmless-base test file
(benchmarks only; by default read from the real-data folder beside the checkout, as in ``tests/conftest.py``).

Each line holds two transcripts that share the dialogue up to the final ``\\n\\nAssistant:`` turn. The shared part
becomes the prompt (last human turn) plus history (earlier turns); the final assistant turns are the responses.
"""
from __future__ import annotations

import gzip
import json
import re
from dataclasses import dataclass
from pathlib import Path

_TURN = re.compile(r"\n\n(Human|Assistant):")
DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hh_harmless_1300.jsonl.gz"


@dataclass(frozen=True)
class HHPair:
    """One HH pair: the prompt (last human turn), earlier turns, and the two final assistant responses."""

    prompt: str
    history: tuple[tuple[str, str], ...]
    chosen: str
    rejected: str


def split_transcript(t: str) -> tuple[list[tuple[str, str]], str]:
    """``(turns before the final assistant turn, final assistant text)`` of one HH transcript."""
    parts = _TURN.split("\n\n" + t.lstrip("\n") if not t.startswith("\n\n") else t)
    turns: list[tuple[str, str]] = []
    for i in range(1, len(parts) - 1, 2):
        role = "user" if parts[i] == "Human" else "assistant"
        turns.append((role, parts[i + 1].strip()))
    if not turns or turns[-1][0] != "assistant":
        raise ValueError("transcript does not end with an Assistant turn")
    return turns[:-1], turns[-1][1]


def load_hh(path: Path = DEFAULT, limit: int | None = None) -> list[HHPair]:
    """Parse the file; lines whose two transcripts do not share their context are skipped."""
    out: list[HHPair] = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            ctx_c, chosen = split_transcript(rec["chosen"])
            ctx_r, rejected = split_transcript(rec["rejected"])
            if ctx_c != ctx_r or not ctx_c or ctx_c[-1][0] != "user":
                continue
            out.append(HHPair(prompt=ctx_c[-1][1], history=tuple(ctx_c[:-1]), chosen=chosen, rejected=rejected))
            if limit and len(out) >= limit:
                break
    return out


def as_training_pairs(hh: list[HHPair]) -> list:
    """The pairs as the engine's ``TrainingPair``s: prompt ids 0..n-1, response ids ``2i`` (chosen) and ``2i + 1``
    (rejected), crowd labels by one annotator ``hh``."""
    from db.pairs import TrainingPair

    return [TrainingPair(prompt_id=i, prompt=p.prompt, history=p.history, category=None, chosen_id=2 * i,
                         rejected_id=2 * i + 1, chosen=p.chosen, rejected=p.rejected, source="crowd", annotator="hh")
            for i, p in enumerate(hh)]


def cached_features(home: str, recipes: tuple[str, ...] = ("rich",)) -> tuple[list, dict]:
    """The HH pairs (as :func:`as_training_pairs`) and their head-mode features per recipe, rows indexed by response
    id, read from the feature cache under ``home`` (``bench/hh_features.py`` fills it; missing texts are computed)."""
    import torch

    from db.config import Settings
    from rm_engine.backbone import resolve_backbone
    from rm_engine.head.features import FeatureExtractor

    torch.set_num_threads(1)
    s = Settings.from_env({"RMSTUDIO_HOME": home})
    hh = load_hh()
    rows = [(p.prompt, p.history, t) for p in hh for t in (p.chosen, p.rejected)]
    fx = FeatureExtractor(s, resolve_backbone("minilm", s), max_length=256)
    return as_training_pairs(hh), {r: fx.features_for(rows, r) for r in recipes}
