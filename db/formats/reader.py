"""Format detection and ``parse_file``: any supported file to a stream of ``ImportRecord``s and ``RowError``s."""
from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from db.formats import comparisons, hh_rlhf, mapped, rankings, trl, unlabeled
from db.formats.base import (
    MAX_ANNOTATOR,
    MAX_CATEGORY,
    FormatError,
    ImportRecord,
    Options,
    RowError,
    RowProblem,
    parse_source,
    parse_split,
)
from db.formats.containers import Input, iter_raw, sniff_container

Parser = Callable[[Mapping[str, Any], int, Options], ImportRecord]
PARSERS: dict[str, Parser] = {
    hh_rlhf.NAME: hh_rlhf.parse,
    trl.NAME: trl.parse,
    comparisons.NAME: comparisons.parse,
    rankings.NAME: rankings.parse,
    unlabeled.NAME: unlabeled.parse,
    mapped.NAME: mapped.parse,
}
FORMATS = tuple(PARSERS)
# The native shapes: a file of one of them may also hold lines of the others (what export writes).
NATIVE = (comparisons.NAME, rankings.NAME, unlabeled.NAME)
_JSON_COLUMNS = ("history", "extra", "responses", "models", "ranking")
_TEXT_COLUMNS = ("prompt", "response_a", "response_b", "chosen", "rejected")
_SNIFF_RECORDS = 20


@dataclass(frozen=True)
class Detected:
    """How a file will be read: its container (jsonl, json, csv, tsv, parquet) and its format."""

    container: str
    format: str


def shape_of(obj: Mapping[str, Any]) -> str | None:
    """The format a single record looks like, or None."""
    keys = set(obj)
    if {"chosen", "rejected"} <= keys:
        return hh_rlhf.NAME if hh_rlhf.looks_like(obj) else trl.NAME
    if obj.get("ranking") not in (None, "") and "responses" in keys:
        return rankings.NAME
    if obj.get("responses") not in (None, "") and obj.get("winner") in (None, ""):
        return unlabeled.NAME
    if keys & {"response_a", "response_b", "winner"}:
        return comparisons.NAME
    if "responses" in keys:
        return unlabeled.NAME
    return None


def _table_row(obj: dict[str, Any], fmt: str) -> dict[str, Any]:
    """A CSV/Parquet row of a native format as the JSON record it stands for (JSON cells decoded, blanks dropped)."""
    if fmt == mapped.NAME:
        return obj
    out: dict[str, Any] = {}
    for k, v in obj.items():
        if isinstance(v, str) and k in _JSON_COLUMNS and v.strip()[:1] in ("[", "{"):
            try:
                v = json.loads(v)
            except ValueError:
                pass  # left as text: the format's own check reports it
        if (v is None or v == "") and k not in _TEXT_COLUMNS:
            if k == "origin":  # an exported record's empty origin means "none", not "this import"
                out[k] = None
            continue
        out[k] = v
    return out


def _check_options(name: str, opts: Options) -> None:
    try:
        if opts.source is not None:
            parse_source(opts.source, "--source")
        parse_split(opts.split, "--split")
    except RowProblem as p:
        raise FormatError(name, 0, p.field, p.message) from None
    if opts.annotator is not None and not (0 < len(opts.annotator.strip()) <= MAX_ANNOTATOR):
        raise FormatError(name, 0, "--annotator", f"must be 1 to {MAX_ANNOTATOR} characters")
    if opts.category is not None and len(opts.category) > MAX_CATEGORY:
        raise FormatError(name, 0, "--category", f"must be at most {MAX_CATEGORY} characters")


def _options(name: str, *, format: str | None, mapping: Any, winner_values: Any, source: str | None,
             annotator: str | None, category: str | None, split: str) -> Options:
    m = wv = None
    if mapping:
        if format not in (None, mapped.NAME):
            raise FormatError(name, 0, "--map", f"a field mapping implies --format mapped, not {format}")
        try:
            m = mapped.parse_mapping(mapping)
        except ValueError as exc:
            raise FormatError(name, 0, "--map", str(exc)) from None
    if winner_values:
        if not mapping:
            raise FormatError(name, 0, "--winner-values", "applies only with --map (format mapped)")
        try:
            wv = mapped.parse_winner_values(winner_values)
        except ValueError as exc:
            raise FormatError(name, 0, "--winner-values", str(exc)) from None
    if format is None and m:
        format = mapped.NAME
    if format is not None and format not in PARSERS:
        raise FormatError(name, 0, "--format", f"unknown format {format!r}; formats are {', '.join(FORMATS)}")
    if format == mapped.NAME and not m:
        raise FormatError(name, 0, "--map", "format mapped needs a field mapping (--map prompt=COL,a=COL,b=COL,winner=COL)")
    opts = Options(source=source, annotator=annotator, category=category, split=split or "train", mapping=m, winner_values=wv)
    _check_options(name, opts)
    return opts


def _detect(inp: Input, format: str | None, opts: Options) -> Detected:
    container = sniff_container(inp)
    first: tuple[int, dict[str, Any]] | None = None
    first_problem: tuple[int, RowProblem] | None = None
    for i, (line, obj) in enumerate(iter_raw(inp, container)):
        if isinstance(obj, RowProblem):
            first_problem = first_problem or (line, obj)
        else:
            first = (line, obj)
            break
        if i >= _SNIFF_RECORDS:
            break
    if first is None:
        if first_problem is not None:
            raise FormatError(inp.name, first_problem[0], first_problem[1].field, first_problem[1].message)
        raise FormatError(inp.name, 1, "file", "holds no records")
    line, obj = first
    if opts.mapping:
        missing = mapped.missing_columns(opts.mapping, list(obj))
        if missing:
            raise FormatError(inp.name, line, missing[0], f"--map names column {missing[0]!r}, which the file lacks (it has: {', '.join(map(str, obj))[:300]})")
        return Detected(container, mapped.NAME)
    if format is not None:
        return Detected(container, format)
    shape = shape_of(obj if container in ("jsonl", "json") else _table_row(obj, comparisons.NAME))
    if shape is None:
        fields = ", ".join(map(str, obj))[:300]
        raise FormatError(
            inp.name, line, "format",
            f"cannot tell the format from the fields ({fields}); give --format, or --map for other layouts",
        )
    return Detected(container, shape)


def detect(src: Any, *, format: str | None = None, mapping: Any = None, filename: str | None = None) -> Detected:
    """Container and format of a file (raises ``FormatError`` when it cannot be told)."""
    inp = Input.of(src, filename)
    opts = _options(inp.name, format=format, mapping=mapping, winner_values=None, source=None, annotator=None, category=None, split="train")
    return _detect(inp, format, opts)


def detect_format(src: Any, *, format: str | None = None, mapping: Any = None, filename: str | None = None) -> str:
    """The format name (``hh-rlhf``, ``trl``, ``comparisons``, ``rankings``, ``unlabeled``, ``mapped``) of a file."""
    return detect(src, format=format, mapping=mapping, filename=filename).format


def parse_file(
    path_or_bytes: Any,
    *,
    format: str | None = None,
    mapping: Any = None,
    winner_values: Any = None,
    source: str | None = None,
    annotator: str | None = None,
    category: str | None = None,
    split: str = "train",
    filename: str | None = None,
) -> Iterator[ImportRecord | RowError]:
    """Every record of a file, validated: an ``ImportRecord`` per good row, a ``RowError`` per bad one.

    Raises ``FormatError`` for what spoils the whole file (unknown format, bad options, corrupt gzip or Parquet).
    ``format=None`` detects it (``mapping`` implies ``mapped``). Without a forced format, a native file
    (comparisons / rankings / unlabeled) may mix the three kinds of lines, as ``export --format comparisons`` writes.
    """
    inp = Input.of(path_or_bytes, filename)
    opts = _options(inp.name, format=format, mapping=mapping, winner_values=winner_values, source=source,
                    annotator=annotator, category=category, split=split)
    det = _detect(inp, format, opts)
    return _records(inp, det, opts, mixed=det.format in NATIVE and format in (None, comparisons.NAME))


def _records(inp: Input, det: Detected, opts: Options, *, mixed: bool) -> Iterator[ImportRecord | RowError]:
    table = det.container not in ("jsonl", "json")
    for line, obj in iter_raw(inp, det.container):
        if isinstance(obj, RowProblem):
            yield RowError(inp.name, line, obj.field, obj.message)
            continue
        try:
            rec = _table_row(obj, det.format) if table else obj
            fmt = (shape_of(rec) or det.format) if mixed else det.format
            if mixed and fmt not in NATIVE:
                fmt = det.format
            if table and fmt in (rankings.NAME, unlabeled.NAME):
                # the blank comparison cells of a ranking / unlabeled row in a mixed table are not data
                rec = {k: v for k, v in rec.items() if not (v == "" and k in _TEXT_COLUMNS and k != "prompt")}
            yield PARSERS[fmt](rec, line, opts)
        except RowProblem as p:
            yield RowError(inp.name, line, p.field, p.message)
        except RecursionError:
            yield RowError(inp.name, line, "json", "is nested too deeply to read")
        except (TypeError, ValueError, AttributeError, KeyError, IndexError) as exc:  # a gap in the checks: still one clear row error
            yield RowError(inp.name, line, "record", f"cannot be read ({type(exc).__name__}: {str(exc)[:200]})")
