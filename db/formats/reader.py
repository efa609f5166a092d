"""Format detection and ``parse_file``: any supported file to a stream of ``ImportRecord``s and ``RowError``s.

One file is one format: detection reads the fields of the file's first readable records (up to
``_SNIFF_RECORDS`` of a known shape; unreadable or unknown ones before them are skipped, so a file whose first
rows are bad still imports under ``skip_invalid``) and every line is then read as that format, so a line that
does not fit is an invalid row of it (never re-read as another kind). ``mixed`` reads each line by its own
fields as a comparison, ranking or unlabeled line: what ``export --format comparisons`` (or csv, parquet)
writes. It is chosen with ``format="mixed"``, or detected when the first record carries an export's
``key`` and ``origin`` fields.
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from db.formats import comparisons, hh_rlhf, mapped, rankings, trl, unlabeled
from db.formats.base import (
    DEFAULT_ANNOTATOR,
    DEFAULT_SOURCE,
    MAX_ANNOTATOR,
    MAX_CATEGORY,
    FormatError,
    ImportRecord,
    Options,
    RowError,
    RowProblem,
    check_name,
    display_name,
    option,
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
MIXED = "mixed"
FORMATS = (*PARSERS, MIXED)
# The kinds of line a mixed file holds (what export writes).
NATIVE = (comparisons.NAME, rankings.NAME, unlabeled.NAME)
# Fields of a judgment: a mixed file's line with responses and one of these is a ranking, never unlabeled.
_JUDGMENT_FIELDS = frozenset({"key", "origin", "source", "annotator", "strength", "split", "time_spent_ms"})
_JSON_COLUMNS = ("history", "extra", "responses", "models", "ranking")
_TEXT_COLUMNS = ("prompt", "response_a", "response_b", "chosen", "rejected")
_SNIFF_RECORDS = 20


@dataclass(frozen=True)
class Detected:
    """How a file will be read: its container (jsonl, json, csv, tsv, parquet) and its format."""

    container: str
    format: str


def _fields(obj: Mapping[str, Any], table: bool) -> set[str]:
    """The fields a record has: in a table, a blank cell is no field; in JSON, a field is there even when null."""
    return {k for k, v in obj.items() if not (table and (v is None or v == ""))}


def shape_of(obj: Mapping[str, Any], *, table: bool = False) -> str | None:
    """The format a single record looks like from the fields it has (not their values), or None."""
    keys = _fields(obj, table)
    if {"chosen", "rejected"} <= keys:
        return hh_rlhf.NAME if hh_rlhf.looks_like(obj) else trl.NAME
    if keys & {"response_a", "response_b", "winner"}:
        return comparisons.NAME
    if "ranking" in keys:
        return rankings.NAME
    if "responses" in keys:
        return unlabeled.NAME
    return None


def line_kind(obj: Mapping[str, Any], *, table: bool = False) -> str:
    """In a mixed file: the kind of one line, by its fields. A line with responses and any of a judgment's
    fields (key, origin, source, annotator, ...) is a ranking (whose missing ranking is then its error)."""
    keys = _fields(obj, table)
    if keys & {"response_a", "response_b", "winner"}:
        return comparisons.NAME
    if "ranking" in keys or ("responses" in keys and keys & _JUDGMENT_FIELDS):
        return rankings.NAME
    if "responses" in keys:
        return unlabeled.NAME
    return comparisons.NAME  # its parser names the missing fields


def _is_export(obj: Mapping[str, Any]) -> bool:
    """A record as RM Studio's export writes it (a label or ranking line carries ``key`` and ``origin``)."""
    return "key" in obj and "origin" in obj


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
            parse_source(opts.source, option("source"))
        parse_split(opts.split, option("split"))
    except RowProblem as p:
        raise FormatError(name, 0, p.field, p.message) from None
    if opts.annotator is not None and not (0 < len(opts.annotator.strip()) <= MAX_ANNOTATOR):
        raise FormatError(name, 0, option("annotator"), f"must be 1 to {MAX_ANNOTATOR} characters")
    if opts.category is not None and len(opts.category) > MAX_CATEGORY:
        raise FormatError(name, 0, option("category"), f"must be at most {MAX_CATEGORY} characters")


def _options(name: str, *, format: str | None, mapping: Any, winner_values: Any, source: str | None,
             annotator: str | None, category: str | None, split: str, winner_scale: Any = None) -> Options:
    m = wv = ws = None
    if mapping:
        if format not in (None, mapped.NAME):
            raise FormatError(name, 0, option("map"), f"a field mapping reads the file as format mapped, not {format}")
        try:
            m = mapped.parse_mapping(mapping)
        except ValueError as exc:
            raise FormatError(name, 0, option("map"), str(exc)) from None
    for given, opt in ((winner_values, "winner-values"), (winner_scale, "winner-scale")):
        if given and not (m and "winner" in m):
            raise FormatError(name, 0, option(opt), f"applies only to a field mapping with a winner column ({option('map')})")
    if winner_values and winner_scale:
        raise FormatError(name, 0, option("winner-scale"),
                          f"give the verdict values ({option('winner-values')}) or a scale ({option('winner-scale')}), not both")
    try:
        wv = mapped.parse_winner_values(winner_values) if winner_values else None
    except ValueError as exc:
        raise FormatError(name, 0, option("winner-values"), str(exc)) from None
    try:
        ws = mapped.parse_winner_scale(winner_scale) if winner_scale else None
    except ValueError as exc:
        raise FormatError(name, 0, option("winner-scale"), str(exc)) from None
    if m and ws and "strength" in m:
        raise FormatError(name, 0, option("winner-scale"), "sets each label's strength from its distance to the "
                          "midpoint: map no strength column with it")
    if m and len(mapped.winner_columns(m)) > 1 and ("annotator" in m or annotator):
        raise FormatError(name, 0, option("annotator") if annotator else option("map"),
                          "with several verdict columns, each column's name is its annotator: name no other annotator")
    if format is None and m:
        format = mapped.NAME
    if format is not None and format not in FORMATS:
        raise FormatError(name, 0, option("format"), f"unknown format {format!r}; formats are {', '.join(FORMATS)}")
    if format == mapped.NAME and not m:
        raise FormatError(name, 0, option("map"), "format mapped needs a field mapping: the prompt column and either "
                          "a, b and winner or chosen and rejected")
    opts = Options(source=source, annotator=annotator, category=category, split=split or "train", mapping=m,
                   winner_values=wv, winner_scale=ws)
    _check_options(name, opts)
    return opts


def _detect(inp: Input, format: str | None, opts: Options) -> Detected:
    container = sniff_container(inp)
    table = container not in ("jsonl", "json")
    first: tuple[int, dict[str, Any]] | None = None
    first_problem: tuple[int, RowProblem] | None = None
    votes: Counter[str] = Counter()
    columns: set[str] = set()
    readable = 0
    for line, obj in iter_raw(inp, container):
        if isinstance(obj, RowProblem):
            first_problem = first_problem or (line, obj)
            continue
        first = first or (line, obj)
        readable += 1
        if opts.mapping:
            columns.update(obj)
            if readable >= _SNIFF_RECORDS or not mapped.missing_columns(opts.mapping, columns):
                break
            continue
        if format is not None:
            break
        rec = _table_row(obj, comparisons.NAME) if table else obj
        shape = shape_of(rec, table=table)
        if shape is None:
            continue
        if not votes and _is_export(rec):
            return Detected(container, MIXED)
        votes[shape] += 1
        if votes.total() >= _SNIFF_RECORDS:
            break
    if first is None:
        if first_problem is not None:
            raise FormatError(inp.name, first_problem[0], first_problem[1].field, first_problem[1].message)
        raise FormatError(inp.name, 1, "file", "holds no records")
    line, obj = first
    if opts.mapping:
        missing = mapped.missing_columns(opts.mapping, columns)
        if missing:
            have = ", ".join(display_name(c) for c in obj)[:300]
            raise FormatError(inp.name, line, display_name(missing[0]),
                              f"the field mapping ({option('map')}) names column {display_name(missing[0])!r}, which the "
                              f"file lacks (it has: {have})")
        return Detected(container, mapped.NAME)
    if format is not None:
        return Detected(container, format)
    if not votes:
        fields = ", ".join(display_name(c) for c in obj)[:300]
        raise FormatError(
            inp.name, line, "format",
            f"cannot tell the format from the fields ({fields}); choose the format ({option('format')}) or map the "
            f"columns ({option('map')})",
        )
    return Detected(container, votes.most_common(1)[0][0])


def detect(src: Any, *, format: str | None = None, mapping: Any = None, filename: str | None = None) -> Detected:
    """Container and format of a file (raises ``FormatError`` when it cannot be told)."""
    inp = Input.of(src, filename)
    opts = _options(inp.name, format=format, mapping=mapping, winner_values=None, source=None, annotator=None, category=None, split="train")
    return _detect(inp, format, opts)


def detect_format(src: Any, *, format: str | None = None, mapping: Any = None, filename: str | None = None) -> str:
    """The format name (``hh-rlhf``, ``trl``, ``comparisons``, ``rankings``, ``unlabeled``, ``mapped``, ``mixed``)."""
    return detect(src, format=format, mapping=mapping, filename=filename).format


def parse_file(
    path_or_bytes: Any,
    *,
    format: str | None = None,
    mapping: Any = None,
    winner_values: Any = None,
    winner_scale: Any = None,
    source: str | None = None,
    annotator: str | None = None,
    category: str | None = None,
    split: str = "train",
    filename: str | None = None,
) -> Iterator[ImportRecord | RowError]:
    """Every record of a file, validated: an ``ImportRecord`` per good row, a ``RowError`` per bad one.

    Raises ``FormatError`` for what spoils the whole file (unknown format, bad options, corrupt gzip or Parquet).
    ``format=None`` detects it (``mapping`` implies ``mapped``); every line is read as that one format, except
    under ``mixed`` (see the module's docstring). A mapping with several verdict columns gives a record per column.
    """
    inp = Input.of(path_or_bytes, filename)
    opts = _options(inp.name, format=format, mapping=mapping, winner_values=winner_values, winner_scale=winner_scale,
                    source=source, annotator=annotator, category=category, split=split)
    det = _detect(inp, format, opts)
    return _records(inp, det, opts)


def _judged_key(fmt: str, obj: Mapping[str, Any], rec: ImportRecord) -> str:
    """The idempotency key of a record read with options that decide what is stored (a field mapping, a default
    annotator or source): the record and the judgment stored from it (annotator, source, verdict, strength).
    Importing a file once per verdict column, or once per annotator, keeps every annotator's labels; importing
    it again the same way adds nothing."""
    label = {"annotator": rec.annotator, "source": rec.source, "winner": rec.winner, "ranks": rec.ranks,
             "strength": rec.strength}
    canon = json.dumps({"format": fmt, "record": obj, "label": label}, sort_keys=True, ensure_ascii=False,
                       separators=(",", ":"), default=str)
    return hashlib.sha256(canon.encode("utf-8", "surrogatepass")).hexdigest()


def _judged_by_options(fmt: str, obj: Mapping[str, Any], opts: Options, rec: ImportRecord) -> bool:
    """Whether options made the stored judgment differ from what the record alone gives (the plain key stays
    when they did not: ``--source crowd`` is the default, and re-imports of earlier releases' files still match)."""
    if fmt == mapped.NAME:
        return True
    if obj.get("key") not in (None, ""):
        return False  # a native export's own key: kept as is
    by_annotator = bool(opts.annotator) and obj.get("annotator") in (None, "") and rec.annotator != DEFAULT_ANNOTATOR
    by_source = bool(opts.source) and obj.get("source") in (None, "") and rec.source != DEFAULT_SOURCE
    return by_annotator or by_source


def _row_error(name: str, line: int, p: RowProblem) -> RowError:
    return RowError(name, line, p.field, p.message)


def _records(inp: Input, det: Detected, opts: Options) -> Iterator[ImportRecord | RowError]:
    table = det.container not in ("jsonl", "json")
    for line, obj in iter_raw(inp, det.container):
        if isinstance(obj, RowProblem):
            yield _row_error(inp.name, line, obj)
            continue
        try:
            if not table:  # a table's column names were checked once, with its header or schema
                for k in obj:
                    check_name(k, display_name(k))
            rec = _table_row(obj, det.format) if table else obj
            if det.format == mapped.NAME:
                for item in mapped.parse_row(rec, line, opts):
                    if isinstance(item, RowProblem):
                        yield _row_error(inp.name, line, item)
                    else:
                        item.key = _judged_key(mapped.NAME, rec, item)
                        yield item
                continue
            fmt = line_kind(rec, table=table) if det.format == MIXED else det.format
            if table and fmt in (rankings.NAME, unlabeled.NAME):
                # the blank comparison cells of a ranking / unlabeled row in a table are not data
                rec = {k: v for k, v in rec.items() if not ((v is None or v == "") and k in _TEXT_COLUMNS and k != "prompt")}
            record = PARSERS[fmt](rec, line, opts)
            if record.kind != "unlabeled" and _judged_by_options(fmt, rec, opts, record):
                record.key = _judged_key(fmt, rec, record)
            yield record
        except RowProblem as p:
            yield _row_error(inp.name, line, p)
        except RecursionError:
            yield RowError(inp.name, line, "json", "is nested too deeply to read")
        except (TypeError, ValueError, AttributeError, KeyError, IndexError) as exc:  # a gap in the checks: still one clear row error
            yield RowError(inp.name, line, "record", f"cannot be read ({type(exc).__name__}: {str(exc)[:200]})")
