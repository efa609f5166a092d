"""``rankings``: ranking JSONL: ``prompt``, ``responses``, ``ranking``.

``responses`` is a list of strings, a list of ``{"text", "model"}`` objects or an object ``{model: text}``.
``ranking`` is either the rank of each response, aligned with ``responses`` (``[2, 1, 3]``: 1 = best, equal
ranks are ties), or the responses' model names best first (``["gpt4", "claude", "bard"]``).
Optional fields as in ``comparisons`` (``history``, ``category``, ``source``, ``annotator``, ``split`` ...).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from db.formats.base import (
    PROVENANCE_FIELDS,
    ImportRecord,
    Options,
    RowProblem,
    parse_extra,
    parse_history,
    provenance,
    record_key,
    require,
    responses_field,
    short,
    text_field,
)

NAME = "rankings"
KNOWN = ("prompt", "history", "responses", "models", "ranking", *PROVENANCE_FIELDS)


def parse_ranks(value: Any, models: list[str | None], n: int, field: str = "ranking") -> list[int]:
    """Ranks aligned with the responses, from ranks (ints) or from model names listed best first."""
    if not isinstance(value, list):
        raise RowProblem(field, f"must be a list, got {type(value).__name__}")
    if len(value) != n:
        raise RowProblem(field, f"has {len(value)} entries but there are {n} responses")
    if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        bad = [v for v in value if v < 1 or v > n]
        if bad:
            raise RowProblem(field, f"ranks must lie between 1 (best) and {n}, got {bad[0]}")
        return list(value)
    if all(isinstance(v, str) for v in value):
        index = {m: i for i, m in enumerate(models) if m is not None}
        ranks = [0] * n
        for pos, name in enumerate(value):
            if name not in index:
                raise RowProblem(f"{field}[{pos}]", f"{short(name)} names no response's model")
            if ranks[index[name]]:
                raise RowProblem(f"{field}[{pos}]", f"{short(name)} is listed twice")
            ranks[index[name]] = pos + 1
        return ranks
    raise RowProblem(field, "must list ranks (integers, 1 = best) or model names best first")


def parse(obj: Mapping[str, Any], line: int, opts: Options) -> ImportRecord:
    """One ranking line as an ``ImportRecord`` of kind ``ranking``."""
    prompt = text_field(obj, "prompt")
    texts, models = responses_field(obj, min_n=2)
    ranks = parse_ranks(require(obj, "ranking"), models, len(texts))
    prov = provenance(obj, opts)
    return ImportRecord(
        line=line, kind="ranking", prompt=prompt, history=parse_history(obj.get("history")), category=prov["category"],
        responses=texts, models=models, winner=None, ranks=ranks, source=prov["source"], annotator=prov["annotator"],
        strength=None, split=prov["split"], extra=parse_extra(obj, KNOWN), key=record_key(NAME, obj),
        origin=prov["origin"], time_spent_ms=prov["time_spent_ms"], origin_given=prov["origin_given"],
    )


def to_obj(
    *, prompt: str, history: list[dict[str, str]] | None, category: str | None, responses: list[str],
    models: list[str | None], ranks: list[int], source: str, annotator: str, split: str, key: str,
    origin: str | None, time_spent_ms: int | None, extra: dict[str, Any] | None,
) -> dict[str, Any]:
    """The JSON object ``parse`` reads back into the same ranking (items in their given order)."""
    items = [{"text": t, "model": m} if m else {"text": t} for t, m in zip(responses, models)]
    obj: dict[str, Any] = {
        "prompt": prompt, "history": history or None, "category": category, "responses": items, "ranking": list(ranks),
        "source": source, "annotator": annotator, "split": split, "time_spent_ms": time_spent_ms, "origin": origin,
        "key": key, "extra": extra or None,
    }
    return {k: v for k, v in obj.items() if v is not None or k == "origin"}  # origin null: keep it null
