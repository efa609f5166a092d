"""``comparisons``: comparison JSONL, the native format with full provenance.

One line per judgment: ``prompt``, ``response_a``, ``response_b``, ``winner`` (``a``/``b``/``tie``/``both_bad``,
relative to ``response_a``/``response_b``, where ``response_a`` is what was shown first), optional ``history``,
``category``, ``model_a``, ``model_b``, ``source``, ``annotator``, ``strength``, ``split``, ``extra`` and any
other fields (kept in the label's ``extra``). ``rmstudio export --format comparisons`` also writes ranking lines
(see ``rankings``) and unlabeled lines (see ``unlabeled``) into the same file; ``key`` and ``origin`` carry the
original idempotency key and provenance so that re-importing an export adds nothing and round-trips exactly.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from db.formats.base import (
    PROVENANCE_FIELDS,
    ImportRecord,
    Options,
    RowProblem,
    model_field,
    parse_extra,
    parse_history,
    parse_winner,
    provenance,
    record_key,
    require,
    text_field,
)

NAME = "comparisons"
KNOWN = ("prompt", "history", "response_a", "response_b", "model_a", "model_b", "winner", *PROVENANCE_FIELDS)


def parse(obj: Mapping[str, Any], line: int, opts: Options) -> ImportRecord:
    """One comparison line as an ``ImportRecord`` (raises ``RowProblem`` naming the field)."""
    prompt = text_field(obj, "prompt")
    if obj.get("response_a") is None and "responses" in obj:
        raise RowProblem("response_a", "is missing: this line lists 'responses', but every line of a comparisons file "
                                       "compares response_a with response_b under a winner")
    a = text_field(obj, "response_a", allow_empty=True)
    b = text_field(obj, "response_b", allow_empty=True)
    if a == b:
        raise RowProblem("response_b", "is identical to response_a: there is nothing to compare")
    winner = parse_winner(require(obj, "winner"))
    prov = provenance(obj, opts)
    return ImportRecord(
        line=line, kind="comparison", prompt=prompt, history=parse_history(obj.get("history")),
        category=prov["category"], responses=[a, b], models=[model_field(obj, "model_a"), model_field(obj, "model_b")],
        winner=winner, ranks=None, source=prov["source"], annotator=prov["annotator"], strength=prov["strength"],
        split=prov["split"], extra=parse_extra(obj, KNOWN), key=record_key(NAME, obj),
        origin=prov["origin"], time_spent_ms=prov["time_spent_ms"], origin_given=prov["origin_given"],
    )


def to_obj(
    *, prompt: str, history: list[dict[str, str]] | None, category: str | None, response_a: str, response_b: str,
    model_a: str | None, model_b: str | None, winner: str, source: str, annotator: str, strength: int | None,
    split: str, key: str, origin: str | None, time_spent_ms: int | None, extra: dict[str, Any] | None,
) -> dict[str, Any]:
    """The JSON object ``parse`` reads back into the same record (``None`` fields left out)."""
    obj: dict[str, Any] = {
        "prompt": prompt, "history": history or None, "category": category,
        "response_a": response_a, "response_b": response_b, "model_a": model_a, "model_b": model_b,
        "winner": winner, "source": source, "annotator": annotator, "strength": strength, "split": split,
        "time_spent_ms": time_spent_ms, "origin": origin, "key": key, "extra": extra or None,
    }
    return {k: v for k, v in obj.items() if v is not None or k == "origin"}  # origin null: keep it null
