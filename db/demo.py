"""The built-in demo data (``db/demo/demo.jsonl``) and its seeding.

The file holds prompts written for RM Studio, one JSON object per line::

    {"prompt": str, "category": str, "history"?: [{"role": ..., "content": ...}],
     "responses": [{"text": str, "model": str, "quality": int}, ...]}   # 2-4 responses, quality 1 = best

``seed_demo`` stores every prompt, response and pairwise comparison (so the labeling queue is full), then adds
AI pre-labels (source ``ai``, annotator ``demo-ai``), derived from the quality ranks, on a deterministic share
of the comparisons so a first model can be trained at once. The rest stay unlabeled for humans. Seeding twice
adds nothing: content is deduplicated by the store, and each AI label's idempotency key is derived from the
pair's content.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db import store
from db.models import Comparison, Outcome, Prompt, Response, Source
from db.session import Database

DEMO_FILE = Path(__file__).resolve().parent / "demo" / "demo.jsonl"
AI_ANNOTATOR = "demo-ai"
LABEL_ORIGIN = "demo"
DEMO_TAG = "demo"
ROLES = ("system", "user", "assistant")


class DemoDataError(ValueError):
    """The demo file is malformed; the message names the file, line and field."""


@dataclass(frozen=True)
class DemoResponse:
    """One response to a demo prompt; ``quality`` is its rank among the prompt's responses (1 = best)."""

    text: str
    model: str
    quality: int


@dataclass(frozen=True)
class DemoPrompt:
    """One demo prompt with its earlier turns (empty for single-turn prompts) and 2-4 responses."""

    text: str
    category: str
    history: tuple[tuple[str, str], ...]
    responses: tuple[DemoResponse, ...]

    def history_dicts(self) -> list[dict[str, str]]:
        """The history in the stored form, ``[{"role": ..., "content": ...}]``."""
        return [{"role": r, "content": c} for r, c in self.history]


def _text(obj: dict[str, Any], key: str, where: str, field: str | None = None) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value.strip():
        raise DemoDataError(f"{where}: field '{field or key}' must be a non-empty string, got {value!r:.60}")
    return value


def _parse_line(rec: Any, where: str) -> DemoPrompt:
    if not isinstance(rec, dict):
        raise DemoDataError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    text = _text(rec, "prompt", where)
    category = _text(rec, "category", where)
    raw_history = rec.get("history") or []
    if not isinstance(raw_history, list):
        raise DemoDataError(f"{where}: field 'history' must be a list of turns")
    history = []
    for i, turn in enumerate(raw_history):
        if not isinstance(turn, dict) or turn.get("role") not in ROLES:
            raise DemoDataError(f"{where}: field 'history[{i}].role' must be one of {ROLES}")
        history.append((turn["role"], _text(turn, "content", where, f"history[{i}].content")))
    raw = rec.get("responses")
    if not isinstance(raw, list) or not 2 <= len(raw) <= 4:
        raise DemoDataError(f"{where}: field 'responses' must be a list of 2-4 responses")
    responses = []
    for i, r in enumerate(raw):
        if not isinstance(r, dict):
            raise DemoDataError(f"{where}: field 'responses[{i}]' must be an object")
        q = r.get("quality")
        if not isinstance(q, int) or isinstance(q, bool) or q < 1:
            raise DemoDataError(f"{where}: field 'responses[{i}].quality' must be an integer >= 1 (1 = best), got {q!r}")
        rtext = _text(r, "text", where, f"responses[{i}].text")
        responses.append(DemoResponse(text=rtext, model=_text(r, "model", where, f"responses[{i}].model"), quality=q))
    if len({r.quality for r in responses}) != len(responses):
        raise DemoDataError(f"{where}: field 'responses': quality ranks must differ, got {[r.quality for r in responses]}")
    if len({r.text for r in responses}) != len(responses):
        raise DemoDataError(f"{where}: field 'responses': two responses have the same text")
    return DemoPrompt(text=text, category=category, history=tuple(history), responses=tuple(responses))


def load_demo(path: Path | str | None = None) -> list[DemoPrompt]:
    """Parse and check the demo file (default: the bundled ``db/demo/demo.jsonl``).

    Raises ``DemoDataError`` naming the file, line and field of the first problem."""
    path = Path(path) if path is not None else DEMO_FILE
    if not path.is_file():
        raise DemoDataError(f"{path}: demo data file not found (is the package installed with its data files?)")
    prompts: list[DemoPrompt] = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DemoDataError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})") from None
            prompts.append(_parse_line(rec, where))
    if not prompts:
        raise DemoDataError(f"{path}: no prompts")
    return prompts


def ai_label_key(prompt_hash: str, text_1: str, text_2: str) -> str:
    """The idempotency key of the demo AI label on a pair: stable across databases, order-free."""
    pair = sorted([store.sha256(text_1), store.sha256(text_2)])
    return "demo-ai:" + store.sha256(store.canonical_json([prompt_hash, pair]))[:56]


@dataclass(frozen=True)
class _Candidate:
    order: str
    comparison_id: int
    outcome: Outcome
    strength: int
    key: str
    extra: dict[str, Any]


def _seed(session: Session, prompts: list[DemoPrompt], share: float, seed: int) -> dict[str, int]:
    added = {"prompts": 0, "responses": 0, "comparisons": 0, "ai_labels": 0}
    candidates: list[_Candidate] = []
    comparison_ids: list[int] = []
    for dp in prompts:
        history = dp.history_dicts()
        ph = store.prompt_hash(dp.text, history)
        if session.scalar(select(Prompt.id).where(Prompt.content_hash == ph)) is None:
            added["prompts"] += 1
        prompt = store.get_or_create_prompt(session, dp.text, history=history, category=dp.category, tags=[DEMO_TAG])
        stored: list[tuple[DemoResponse, Response]] = []
        for dr in dp.responses:
            q = select(Response.id).where(Response.prompt_id == prompt.id, Response.content_hash == store.sha256(dr.text))
            if session.scalar(q) is None:
                added["responses"] += 1
            stored.append((dr, store.get_or_create_response(session, prompt, dr.text, model=dr.model)))
        for i in range(len(stored)):
            for j in range(i + 1, len(stored)):
                (d1, r1), (d2, r2) = stored[i], stored[j]
                lo, hi = sorted((r1.id, r2.id))
                q = select(Comparison.id).where(Comparison.response_a_id == lo, Comparison.response_b_id == hi)
                if session.scalar(q) is None:
                    added["comparisons"] += 1
                oc = store.get_or_create_comparison(session, r1, r2)
                comparison_ids.append(oc.comparison.id)
                key = ai_label_key(ph, d1.text, d2.text)
                # Caller's "a" is r1: the response with the better (smaller) quality rank wins.
                outcome = oc.outcome_to_stored("a" if d1.quality < d2.quality else "b")
                qa, qb = (d2.quality, d1.quality) if oc.swapped else (d1.quality, d2.quality)
                candidates.append(
                    _Candidate(
                        order=store.sha256(f"{seed}:{key}"),
                        comparison_id=oc.comparison.id,
                        outcome=outcome,
                        strength=2 if abs(d1.quality - d2.quality) >= 2 else 1,
                        key=key,
                        extra={"rule": "quality ranks of the built-in demo data", "quality_a": qa, "quality_b": qb},
                    )
                )
    n_ai = round(share * len(candidates))
    if n_ai:
        annotator = store.get_or_create_annotator(session, AI_ANNOTATOR, Source.ai)
        for c in sorted(candidates, key=lambda c: c.order)[:n_ai]:
            _, created = store.add_label(
                session,
                comparison_id=c.comparison_id,
                outcome=c.outcome,
                source=Source.ai,
                annotator=annotator,
                idempotency_key=c.key,
                strength=c.strength,
                origin=LABEL_ORIGIN,
                extra=c.extra,
            )
            added["ai_labels"] += int(created)
    session.flush()
    added["demo_comparisons"] = len(comparison_ids)
    added["unlabeled"] = int(
        session.scalar(
            select(func.count()).select_from(Comparison).where(Comparison.id.in_(comparison_ids), Comparison.label_count == 0)
        )
        or 0
    )
    return added


def seed_demo(
    db: Database, *, ai_labels_share: float = 0.5, seed: int = 0, path: Path | str | None = None
) -> dict[str, int]:
    """Store the demo data in one write transaction; idempotent (a second run adds nothing).

    ``ai_labels_share`` (0..1) of all demo comparisons, picked deterministically from ``seed``, get an AI
    pre-label from the quality ranks. Returns what was added (``prompts``, ``responses``, ``comparisons``,
    ``ai_labels``) plus ``demo_comparisons`` (all comparisons of the demo data) and ``unlabeled`` (those of
    them with no label yet: the human labeling queue)."""
    if not 0.0 <= float(ai_labels_share) <= 1.0:
        raise ValueError(f"ai_labels_share must be between 0 and 1, got {ai_labels_share!r}")
    prompts = load_demo(path)
    return db.run_write(lambda s: _seed(s, prompts, float(ai_labels_share), int(seed)))
