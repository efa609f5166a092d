"""Loader for the HH-RLHF harmless pairs in ``../shared/data/hh_harmless_1300.jsonl.gz`` (benchmarks only).

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
        for n, line in enumerate(f, 1):
            rec = json.loads(line)
            ctx_c, chosen = split_transcript(rec["chosen"])
            ctx_r, rejected = split_transcript(rec["rejected"])
            if ctx_c != ctx_r or not ctx_c or ctx_c[-1][0] != "user":
                continue
            out.append(HHPair(prompt=ctx_c[-1][1], history=tuple(ctx_c[:-1]), chosen=chosen, rejected=rejected))
            if limit and len(out) >= limit:
                break
    return out
