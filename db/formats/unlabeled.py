"""``unlabeled``: prompts with responses and no verdict, to fill the labeling queue.

``prompt``, ``responses`` (as in ``rankings``), optional ``history``, ``category``, ``models``. Importing creates
the prompt, its responses and comparisons between them (every pair up to 9 responses, else 8 partners per
response: ``db.bulk.partner_pairs``); no labels.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from db.formats.base import (
    PROVENANCE_FIELDS,
    ImportRecord,
    Options,
    RowProblem,
    option,
    parse_extra,
    parse_history,
    provenance,
    record_key,
    responses_field,
    short,
    text_field,
)

NAME = "unlabeled"
KNOWN = ("prompt", "history", "responses", "models", *PROVENANCE_FIELDS)
_VERDICT_FIELDS = ("winner", "ranking", "response_a", "response_b")


def parse(obj: Mapping[str, Any], line: int, opts: Options) -> ImportRecord:
    """One prompt with its responses as an ``ImportRecord`` of kind ``unlabeled``.

    A line with a verdict's field (``winner``, ``ranking``, ``response_a``/``response_b``), even a null one, is
    refused: a judgment is never stored as unlabeled data."""
    for f in _VERDICT_FIELDS:
        if f in obj:
            raise RowProblem(f, f"an unlabeled line has no verdict, but this one has a {f!r} field (got "
                                f"{short(obj[f])}); is the file of another format ({option('format')})?")
    prompt = text_field(obj, "prompt")
    texts, models = responses_field(obj, min_n=1)
    prov = provenance(obj, opts)
    return ImportRecord(
        line=line, kind="unlabeled", prompt=prompt, history=parse_history(obj.get("history")), category=prov["category"],
        responses=texts, models=models, winner=None, ranks=None, source=prov["source"], annotator=prov["annotator"],
        strength=None, split=prov["split"], extra=parse_extra(obj, KNOWN), key=record_key(NAME, obj),
    )


def to_obj(*, prompt: str, history: list[dict[str, str]] | None, category: str | None, responses: list[str],
           models: list[str | None]) -> dict[str, Any]:
    """The JSON object ``parse`` reads back into the same prompt and responses."""
    items = [{"text": t, "model": m} if m else {"text": t} for t, m in zip(responses, models)]
    obj: dict[str, Any] = {"prompt": prompt, "history": history or None, "category": category, "responses": items}
    return {k: v for k, v in obj.items() if v is not None}
