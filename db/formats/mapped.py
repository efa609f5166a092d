"""``mapped``: any CSV / JSONL / Parquet file, read through a field mapping.

Syntax (CLI and upload form alike)::

    --map prompt=question,a=answer_a,b=answer_b,winner=overall_preference --winner-values=-1:a,1:b,0:tie

Targets: ``prompt`` (required), then either ``a``, ``b`` and ``winner`` or ``chosen`` and ``rejected``; optional
``source``, ``annotator``, ``category``, ``strength``, ``split``, ``model_a``, ``model_b``, ``history``.

* ``--winner-values`` maps the file's verdicts (compared as text: ``-1``, ``-1.0`` and ``"-1"`` are the same) to
  ``a``/``b``/``tie``/``both_bad``; without it the winner column must already hold those words.
* ``--winner-scale LOW:a,HIGH:b`` reads a numeric verdict: values nearer LOW mean ``a``, nearer HIGH ``b``, the
  midpoint a tie; the distance from the midpoint becomes the label's strength (under half the way to an end:
  1, slightly better; from half on: 2, clearly better). The value itself is kept in the label's ``extra``.
* ``winner=col1|col2|col3``: one verdict column per annotator; each row gives one label per column, made by the
  annotator named like the column.

Unmapped columns (a justification, a rationale) are kept in the label's ``extra``. Errors name the file's columns.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from db.formats.base import (
    MAX_ANNOTATOR,
    OUTCOMES,
    ImportRecord,
    Options,
    RowProblem,
    check_json_value,
    model_field,
    option,
    parse_history,
    parse_winner,
    provenance,
    record_key,
    require,
    short,
    text_field,
)

NAME = "mapped"
TARGETS = ("prompt", "a", "b", "winner", "chosen", "rejected", "source", "annotator", "category", "strength", "split",
           "model_a", "model_b", "history")
_PROVENANCE_TARGETS = ("source", "annotator", "category", "strength", "split")
Scale = tuple[tuple[float, str], tuple[float, str]]


def parse_mapping(spec: str | Mapping[str, str]) -> dict[str, str]:
    """``"prompt=question,a=answer_a"`` -> ``{"prompt": "question", "a": "answer_a"}``, checked.

    Raises ``ValueError`` naming the problem (unknown target, missing ``=``, incomplete mapping).
    """
    m = option("map")
    if isinstance(spec, Mapping):
        mapping = {str(k).strip(): str(v).strip() for k, v in spec.items()}
    else:
        mapping = {}
        for part in (p.strip() for p in spec.split(",")):
            if not part:
                continue
            target, sep, column = part.partition("=")
            if not sep or not target.strip() or not column.strip():
                raise ValueError(f"{m} entry {part!r} must read target=column (e.g. prompt=question)")
            if target.strip() in mapping:
                raise ValueError(f"{m} names target {target.strip()!r} twice")
            mapping[target.strip()] = column.strip()
    unknown = [t for t in mapping if t not in TARGETS]
    if unknown:
        raise ValueError(f"{m} target {unknown[0]!r} is unknown; targets are {', '.join(TARGETS)}")
    if "prompt" not in mapping:
        raise ValueError(f"{m} must name the prompt column (prompt=COLUMN)")
    pair = all(t in mapping for t in ("a", "b", "winner"))
    trl = all(t in mapping for t in ("chosen", "rejected"))
    if pair == trl:
        raise ValueError(f"{m} needs either a=, b= and winner= or chosen= and rejected= (not both, not neither)")
    if "winner" in mapping:
        cols = [c.strip() for c in mapping["winner"].split("|")]
        if any(not c for c in cols):
            raise ValueError(f"{m} winner={mapping['winner']!r}: name each verdict column, separated by | "
                             "(e.g. winner=annotator1|annotator2)")
        if len(set(cols)) != len(cols):
            raise ValueError(f"{m} winner= names a verdict column twice")
        too_long = [c for c in cols if len(c) > MAX_ANNOTATOR]
        if len(cols) > 1 and too_long:
            raise ValueError(f"verdict column {too_long[0][:40]!r}... is too long to name its annotator "
                             f"(at most {MAX_ANNOTATOR} characters)")
        mapping["winner"] = "|".join(cols)
    return mapping


def winner_columns(mapping: Mapping[str, str]) -> list[str]:
    """The verdict columns of a mapping (several: one annotator per column, named like it)."""
    return mapping["winner"].split("|") if "winner" in mapping else []


def mapped_columns(mapping: Mapping[str, str]) -> list[str]:
    """Every column a mapping reads."""
    out: list[str] = []
    for target, col in mapping.items():
        out.extend(winner_columns(mapping) if target == "winner" else [col])
    return out


def parse_winner_values(spec: str | Mapping[str, str] | None) -> dict[str, str] | None:
    """``"-1:a,1:b,0:tie"`` -> ``{"-1": "a", "1": "b", "0": "tie"}``; raises ``ValueError`` on a bad entry."""
    if spec is None or spec == "":
        return None
    wv = option("winner-values")
    if isinstance(spec, Mapping):
        items = [(str(k), str(v)) for k, v in spec.items()]
    else:
        items = []
        for part in (p.strip() for p in spec.split(",")):
            if not part:
                continue
            value, sep, outcome = part.rpartition(":")
            if not sep or not value.strip():
                raise ValueError(f"{wv} entry {part!r} must read VALUE:OUTCOME (e.g. -1:a)")
            items.append((value, outcome))
    out: dict[str, str] = {}
    for value, outcome in items:
        o = outcome.strip().lower()
        if o not in OUTCOMES:
            raise ValueError(f"{wv} maps {value.strip()!r} to {outcome.strip()!r}; outcomes are a, b, tie, both_bad")
        if value.strip() in out:
            raise ValueError(f"{wv} maps {value.strip()!r} twice")
        out[value.strip()] = o
    return out or None


def parse_winner_scale(spec: str | None) -> Scale | None:
    """``"1:a,2:b"`` -> ``((1.0, "a"), (2.0, "b"))`` (ends in increasing order); raises ``ValueError``."""
    if spec is None or str(spec).strip() == "":
        return None
    ws = option("winner-scale")
    ends = []
    for part in (p.strip() for p in str(spec).split(",") if p.strip()):
        value, sep, outcome = part.rpartition(":")
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not sep or not math.isfinite(number) or outcome.strip().lower() not in ("a", "b"):
            raise ValueError(f"{ws} entry {part!r} must read NUMBER:a or NUMBER:b (e.g. 1:a,2:b)")
        ends.append((number, outcome.strip().lower()))
    if len(ends) != 2 or {o for _, o in ends} != {"a", "b"} or ends[0][0] == ends[1][0]:
        raise ValueError(f"{ws} needs two different numbers, one for a and one for b (e.g. 1:a,2:b)")
    lo, hi = sorted(ends)
    return lo, hi


def scale_verdict(value: Any, field: str, scale: Scale) -> tuple[str, int | None, float]:
    """``(outcome, strength, number)`` of a numeric verdict on ``scale`` (see the module's docstring)."""
    (lo, lo_outcome), (hi, hi_outcome) = scale
    number = math.nan
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            pass
    elif hasattr(value, "item"):  # numpy / pyarrow scalars from Parquet
        return scale_verdict(value.item(), field, scale)
    if not math.isfinite(number):
        raise RowProblem(field, f"must be a number from {lo:g} to {hi:g} ({option('winner-scale')}), got {short(value)}")
    if not lo <= number <= hi:
        raise RowProblem(field, f"is {number:g}, outside the verdict scale {lo:g} to {hi:g} ({option('winner-scale')})")
    half = (hi - lo) / 2
    distance = (number - (lo + half)) / half  # -1 at lo, 0 at the midpoint, 1 at hi
    if abs(distance) <= 1e-9:
        return "tie", None, number
    return (hi_outcome if distance > 0 else lo_outcome), (2 if abs(distance) >= 0.5 else 1), number


def missing_columns(mapping: Mapping[str, str], columns: Any) -> list[str]:
    """Mapped columns absent from a file's fields (checked on its first records for a clear error)."""
    have = set(columns)
    return [c for c in mapped_columns(mapping) if c not in have]


def parse(obj: Mapping[str, Any], line: int, opts: Options) -> ImportRecord:
    """One row read through ``opts.mapping`` as an ``ImportRecord`` of kind ``comparison`` (one verdict column)."""
    item = parse_row(obj, line, opts)[0]
    if isinstance(item, RowProblem):
        raise item
    return item


def parse_row(obj: Mapping[str, Any], line: int, opts: Options) -> list[ImportRecord | RowProblem]:
    """One row read through ``opts.mapping``: a record per verdict column (or the column's problem).

    Raises ``RowProblem`` for what spoils the whole row (prompt, responses, provenance)."""
    m = opts.mapping or {}
    prompt = text_field(obj, m["prompt"])
    verdicts = winner_columns(m)
    if "chosen" in m:
        a, b = text_field(obj, m["chosen"], allow_empty=True), text_field(obj, m["rejected"], allow_empty=True)
        second = m["rejected"]
    else:
        a, b = text_field(obj, m["a"], allow_empty=True), text_field(obj, m["b"], allow_empty=True)
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
    read = set(mapped_columns(m))
    extra = {str(k): check_json_value(v, str(k)) for k, v in obj.items() if k not in read and v not in (None, "")}
    models = [model_field(obj, m["model_a"]) if "model_a" in m else None, model_field(obj, m["model_b"]) if "model_b" in m else None]

    def record(winner: str, strength: int | None, annotator: str, rec_extra: dict[str, Any]) -> ImportRecord:
        return ImportRecord(
            line=line, kind="comparison", prompt=prompt, history=history, category=prov["category"], responses=[a, b],
            models=models, winner=winner, ranks=None, source=prov["source"], annotator=annotator, strength=strength,
            split=prov["split"], extra=rec_extra, key=record_key(NAME, obj, honor_key=False),
        )

    if not verdicts:  # chosen / rejected
        return [record("a", prov["strength"], prov["annotator"], extra)]
    out: list[ImportRecord | RowProblem] = []
    for col in verdicts:
        try:
            value = require(obj, col)
            if opts.winner_scale:
                winner, strength, number = scale_verdict(value, col, opts.winner_scale)
                rec_extra = {**extra, col: number}
            else:
                winner, strength, rec_extra = parse_winner(value, col, opts.winner_values), prov["strength"], extra
            out.append(record(winner, strength, col if len(verdicts) > 1 else prov["annotator"], rec_extra))
        except RowProblem as p:
            out.append(p)
    return out
