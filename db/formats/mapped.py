"""``mapped``: any CSV / JSONL / Parquet file, read through a field mapping.

Syntax (CLI and upload form alike)::

    --map prompt=question,a=answer_a,b=answer_b,winner=overall_preference --winner-values=-1:a,1:b,0:tie

Targets: ``prompt`` (required), then either ``a``, ``b`` and ``winner`` or ``chosen`` and ``rejected``; optional
``source``, ``annotator``, ``category``, ``strength``, ``split``, ``model_a``, ``model_b``, ``history``.
``--winner-values`` maps the file's verdicts (compared as text: ``-1``, ``-1.0`` and ``"-1"`` are the same) to
``a``/``b``/``tie``/``both_bad``; without it the winner column must already hold those words. Unmapped
columns (a justification, a rationale) are kept in the label's ``extra``. Errors name the file's columns.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from db.formats.base import (
    OUTCOMES,
    ImportRecord,
    Options,
    RowProblem,
    check_json_value,
    model_field,
    parse_history,
    parse_winner,
    provenance,
    record_key,
    require,
    text_field,
)

NAME = "mapped"
TARGETS = ("prompt", "a", "b", "winner", "chosen", "rejected", "source", "annotator", "category", "strength", "split",
           "model_a", "model_b", "history")
_PROVENANCE_TARGETS = ("source", "annotator", "category", "strength", "split")


def parse_mapping(spec: str | Mapping[str, str]) -> dict[str, str]:
    """``"prompt=question,a=answer_a"`` -> ``{"prompt": "question", "a": "answer_a"}``, checked.

    Raises ``ValueError`` naming the problem (unknown target, missing ``=``, incomplete mapping).
    """
    if isinstance(spec, Mapping):
        mapping = {str(k).strip(): str(v).strip() for k, v in spec.items()}
    else:
        mapping = {}
        for part in (p.strip() for p in spec.split(",")):
            if not part:
                continue
            target, sep, column = part.partition("=")
            if not sep or not target.strip() or not column.strip():
                raise ValueError(f"--map entry {part!r} must read target=column (e.g. prompt=question)")
            if target.strip() in mapping:
                raise ValueError(f"--map names target {target.strip()!r} twice")
            mapping[target.strip()] = column.strip()
    unknown = [t for t in mapping if t not in TARGETS]
    if unknown:
        raise ValueError(f"--map target {unknown[0]!r} is unknown; targets are {', '.join(TARGETS)}")
    if "prompt" not in mapping:
        raise ValueError("--map must name the prompt column (prompt=COLUMN)")
    pair = all(t in mapping for t in ("a", "b", "winner"))
    trl = all(t in mapping for t in ("chosen", "rejected"))
    if pair == trl:
        raise ValueError("--map needs either a=, b= and winner= or chosen= and rejected= (not both, not neither)")
    return mapping


def parse_winner_values(spec: str | Mapping[str, str] | None) -> dict[str, str] | None:
    """``"-1:a,1:b,0:tie"`` -> ``{"-1": "a", "1": "b", "0": "tie"}``; raises ``ValueError`` on a bad entry."""
    if spec is None or spec == "":
        return None
    if isinstance(spec, Mapping):
        items = [(str(k), str(v)) for k, v in spec.items()]
    else:
        items = []
        for part in (p.strip() for p in spec.split(",")):
            if not part:
                continue
            value, sep, outcome = part.rpartition(":")
            if not sep or not value.strip():
                raise ValueError(f"--winner-values entry {part!r} must read VALUE:OUTCOME (e.g. -1:a)")
            items.append((value, outcome))
    out: dict[str, str] = {}
    for value, outcome in items:
        o = outcome.strip().lower()
        if o not in OUTCOMES:
            raise ValueError(f"--winner-values maps {value.strip()!r} to {outcome.strip()!r}; outcomes are a, b, tie, both_bad")
        if value.strip() in out:
            raise ValueError(f"--winner-values maps {value.strip()!r} twice")
        out[value.strip()] = o
    return out or None


def missing_columns(mapping: Mapping[str, str], columns: list[str]) -> list[str]:
    """Mapped columns absent from a record's fields (checked on the first record for a clear error)."""
    return [c for c in mapping.values() if c not in columns]


def parse(obj: Mapping[str, Any], line: int, opts: Options) -> ImportRecord:
    """One row read through ``opts.mapping`` as an ``ImportRecord`` of kind ``comparison``."""
    m = opts.mapping or {}
    prompt = text_field(obj, m["prompt"])
    if "chosen" in m:
        a, b = text_field(obj, m["chosen"], allow_empty=True), text_field(obj, m["rejected"], allow_empty=True)
        winner = "a"
        second = m["rejected"]
    else:
        a, b = text_field(obj, m["a"], allow_empty=True), text_field(obj, m["b"], allow_empty=True)
        winner = parse_winner(require(obj, m["winner"]), m["winner"], opts.winner_values)
        second = m["b"]
    if a == b:
        raise RowProblem(second, "is identical to the other response: there is nothing to compare")
    # Provenance under its canonical names, so the shared checks apply (errors still name the file's column).
    canon = {t: obj.get(m[t]) for t in _PROVENANCE_TARGETS if t in m}
    try:
        prov = provenance(canon, opts)
    except RowProblem as p:
        raise RowProblem(m.get(p.field, p.field), p.message) from None
    history = None
    if "history" in m:
        h = obj.get(m["history"])
        if isinstance(h, str) and h.strip():
            try:
                h = json.loads(h)
            except ValueError:
                raise RowProblem(m["history"], "must be a JSON list of {role, content} turns") from None
        history = parse_history(h, m["history"])
    mapped_cols = set(m.values())
    extra = {str(k): check_json_value(v, str(k)) for k, v in obj.items() if k not in mapped_cols and v not in (None, "")}
    return ImportRecord(
        line=line, kind="comparison", prompt=prompt, history=history, category=prov["category"], responses=[a, b],
        models=[model_field(obj, m["model_a"]) if "model_a" in m else None, model_field(obj, m["model_b"]) if "model_b" in m else None],
        winner=winner, ranks=None, source=prov["source"], annotator=prov["annotator"], strength=prov["strength"],
        split=prov["split"], extra=extra, key=record_key(NAME, obj, honor_key=False),
    )
