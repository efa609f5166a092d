"""Reading raw records out of files: JSON lines, a JSON array, CSV/TSV or Parquet, plain or gzip-compressed.

``iter_raw`` yields ``(line, dict)`` or ``(line, RowProblem)`` for each record, streaming, with the line (CSV:
the record's first line; JSON array and Parquet: the record's number). Problems with the whole file (corrupt
gzip, unreadable Parquet, an empty file, a column name no database can store) raise ``FormatError``.

A JSON object naming a field twice is a problem of its record (one of the two values would be lost). CSV is read
strictly: a quoted field that does not close properly (an unclosed quote would swallow every row after it) is
reported at its row, naming the line where the quote opened, and the lines after that one are read again as rows.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import os
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from db.formats.base import FormatError, RowProblem, check_name, display_name

GZIP_MAGIC = b"\x1f\x8b"
PARQUET_MAGIC = b"PAR1"
CONTAINERS = ("jsonl", "json", "csv", "tsv", "parquet")
csv.field_size_limit(min(2**31 - 1, 1 << 28))  # huge fields are allowed (the default stops at 128 KiB)


@dataclass(frozen=True)
class Input:
    """A file to read, given as a path or as bytes (an upload), with the name used in error messages."""

    name: str
    path: Path | None = None
    data: bytes | None = None

    @classmethod
    def of(cls, src: Any, filename: str | None = None) -> Input:
        """From a path, ``bytes`` or a binary file-like object (e.g. a Streamlit upload)."""
        if isinstance(src, Input):
            return src
        if isinstance(src, (str, os.PathLike)):
            p = Path(src)
            if not p.is_file():
                raise FormatError(filename or str(p), 0, "file", "no such file" if not p.exists() else "is not a regular file")
            return cls(filename or p.name, path=p)
        if isinstance(src, (bytes, bytearray, memoryview)):
            return cls(filename or "<upload>", data=bytes(src))
        if hasattr(src, "read"):
            data = src.read()
            if isinstance(data, str):
                data = data.encode("utf-8")
            name = filename or os.path.basename(str(getattr(src, "name", "") or "")) or "<upload>"
            return cls(name, data=bytes(data))
        raise TypeError(f"cannot read records from a {type(src).__name__}; give a path, bytes or a binary file")

    def open_raw(self) -> BinaryIO:
        return open(self.path, "rb") if self.path is not None else io.BytesIO(self.data or b"")

    def gzipped(self) -> bool:
        with self.open_raw() as f:
            return f.read(2) == GZIP_MAGIC

    def open(self) -> BinaryIO:
        """The decompressed byte stream."""
        raw = self.open_raw()
        if raw.read(2) == GZIP_MAGIC:
            raw.seek(0)
            return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
        raw.seek(0)
        return raw

    @property
    def stem_ext(self) -> str:
        """The name's extension, ignoring ``.gz`` (``x.csv.gz`` -> ``csv``)."""
        name = self.name.lower()
        if name.endswith(".gz"):
            name = name[:-3]
        return name.rsplit(".", 1)[-1] if "." in name else ""


_GZIP_ERRORS = (gzip.BadGzipFile, EOFError, zlib.error)


def _gzip_error(inp: Input, line: int, exc: BaseException) -> FormatError:
    return FormatError(inp.name, line, "gzip", f"corrupt or truncated gzip data ({type(exc).__name__}: {exc})")


def head(inp: Input, n: int = 8192) -> bytes:
    """The first ``n`` decompressed bytes."""
    try:
        with inp.open() as f:
            return f.read(n)
    except _GZIP_ERRORS as exc:
        raise _gzip_error(inp, 1, exc) from None


def sniff_container(inp: Input) -> str:
    """``jsonl``, ``json``, ``csv``, ``tsv`` or ``parquet``, from the content first and the name second."""
    data = head(inp)
    if data.startswith(PARQUET_MAGIC):
        return "parquet"
    if not data.strip():
        raise FormatError(inp.name, 1, "file", "the file is empty")
    text = _decode_head(data)
    ext = inp.stem_ext
    if ext in ("csv", "tsv"):
        return ext
    first = text.lstrip()[:1]
    if first == "{":
        return "jsonl"
    if first == "[":
        return "json"
    line = text.splitlines()[0] if text else ""
    if "\t" in line:
        return "tsv"
    if "," in line:
        return "csv"
    raise FormatError(inp.name, 1, "file", "is neither JSON lines, a JSON array, CSV nor Parquet")


def _decode_head(data: bytes) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16", errors="replace")
    return data.decode("utf-8-sig", errors="replace")


def _text_lines(inp: Input, f: BinaryIO) -> Iterator[tuple[int, str | RowProblem]]:
    """Decoded lines (UTF-8, UTF-8 with BOM, or UTF-16 with BOM); a line that is not UTF-8 becomes a problem."""
    first = f.read(2)
    if first in (b"\xff\xfe", b"\xfe\xff"):
        try:
            text = (first + f.read()).decode("utf-16")
        except UnicodeDecodeError as exc:
            raise FormatError(inp.name, 1, "encoding", f"invalid UTF-16 ({exc.reason})") from None
        for i, s in enumerate(io.StringIO(text, newline=None), 1):
            yield i, s
        return
    rest = io.BufferedReader(_Prepend(first, f))  # type: ignore[arg-type]
    for i, raw in enumerate(rest, 1):
        if i == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        try:
            yield i, raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield i, RowProblem(
                "encoding", f"is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); save the file as UTF-8"
            )


class _Prepend(io.RawIOBase):
    """A raw stream that returns ``prefix`` and then the rest of ``f`` (to push back sniffed bytes)."""

    def __init__(self, prefix: bytes, f: BinaryIO) -> None:
        self.prefix, self.f = prefix, f

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if self.prefix:
            n = min(len(b), len(self.prefix))
            b[:n] = self.prefix[:n]
            self.prefix = self.prefix[n:]
            return n
        chunk = self.f.read(len(b))
        b[: len(chunk)] = chunk
        return len(chunk)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(s: str) -> float:
    v = float(s)
    if v in (float("inf"), float("-inf")):
        raise ValueError(f"number {s[:20]} is too large")
    return v


class DuplicateField(ValueError):
    """A JSON object names one field twice."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise DuplicateField(k)
            seen.add(k)
    return obj


def loads(s: str) -> Any:
    """Strict JSON: no NaN/Infinity, no overflowing numbers, no field named twice in one object."""
    return json.loads(s, parse_constant=_no_constants, parse_float=_finite_float, object_pairs_hook=_unique_pairs)


def _json_problem(exc: BaseException) -> RowProblem:
    if isinstance(exc, RecursionError):
        return RowProblem("json", "is nested too deeply to read")
    if isinstance(exc, DuplicateField):
        return RowProblem(display_name(exc.name), "is named twice in one JSON object: one of the two values would be lost")
    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return RowProblem("json", f"invalid JSON: {msg[:200]}")


def iter_raw(inp: Input, container: str) -> Iterator[tuple[int, dict[str, Any] | RowProblem]]:
    """Every record of the file as ``(line, dict)``, or ``(line, RowProblem)`` for one that cannot be read."""
    line = 0
    try:
        if container == "parquet":
            yield from _iter_parquet(inp)
            return
        with inp.open() as f:
            if container == "jsonl":
                for line, text in _text_lines(inp, f):
                    if isinstance(text, RowProblem):
                        yield line, text
                        continue
                    if not text.strip():
                        continue
                    try:
                        obj = loads(text)
                    except (ValueError, RecursionError) as exc:
                        yield line, _json_problem(exc)
                        continue
                    yield line, obj if isinstance(obj, dict) else RowProblem("json", f"must be a JSON object, got {type(obj).__name__}")
            elif container == "json":
                yield from _iter_json_array(inp, f)
            else:
                yield from _iter_csv(inp, f, "\t" if container == "tsv" else ",")
    except _GZIP_ERRORS as exc:
        raise _gzip_error(inp, line + 1, exc) from None


def _iter_json_array(inp: Input, f: BinaryIO) -> Iterator[tuple[int, dict[str, Any] | RowProblem]]:
    parts = []
    for line, text in _text_lines(inp, f):
        if isinstance(text, RowProblem):
            raise FormatError(inp.name, line, text.field, text.message)
        parts.append(text)
    try:
        data = loads("".join(parts))
    except (ValueError, RecursionError) as exc:
        p = _json_problem(exc)
        raise FormatError(inp.name, getattr(exc, "lineno", 1), p.field, p.message) from None
    if not isinstance(data, list):
        raise FormatError(inp.name, 1, "json", f"a .json file must hold an array of records, got {type(data).__name__}")
    for i, obj in enumerate(data, 1):
        yield i, obj if isinstance(obj, dict) else RowProblem("json", f"record {i} must be a JSON object, got {type(obj).__name__}")


class _DecodeFailed(Exception):
    def __init__(self, line: int, problem: RowProblem) -> None:
        self.line, self.problem = line, problem


class _Lines:
    """Decoded lines for ``csv.reader``, remembering the lines of the record being read (``taken``) so that
    some of them can be read again (``push_back``) after a broken quote."""

    def __init__(self, source: Iterator[tuple[int, str | RowProblem]]) -> None:
        self.source = source
        self.pending: deque[tuple[int, str]] = deque()
        self.taken: list[tuple[int, str]] = []

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        if self.pending:
            item = self.pending.popleft()
        else:
            num, text = next(self.source)
            if isinstance(text, RowProblem):
                raise _DecodeFailed(num, text)
            item = (num, text)
        self.taken.append(item)
        return item[1]

    def push_back(self, items: list[tuple[int, str]]) -> None:
        self.pending.extendleft(reversed(items))


def _quote_opened(lines: list[tuple[int, str]], delimiter: str) -> int:
    """The line on which the quoted field that broke a record opened (the last quote still open, or the one
    that closed in the middle of a field)."""
    opened, in_quote = lines[0][0], False
    for num, text in lines:
        at_start, i = not in_quote, 0
        while i < len(text):
            c = text[i]
            if in_quote:
                if c == '"':
                    if text[i + 1:i + 2] == '"':
                        i += 2
                        continue
                    if text[i + 1:i + 2] not in (delimiter, "\r", "\n", ""):
                        return opened
                    in_quote = False
            elif c == '"' and at_start:
                in_quote, opened = True, num
            at_start = not in_quote and c in (delimiter, "\r", "\n")
            i += 1
    return opened


def _iter_csv(inp: Input, f: BinaryIO, delimiter: str) -> Iterator[tuple[int, dict[str, Any] | RowProblem]]:
    lines = _Lines(_text_lines(inp, f))
    # strict: a quote that closes in the middle of a field, or never, is an error (not text glued together)
    reader = csv.reader(lines, delimiter=delimiter, strict=True)
    try:
        try:
            header = next(reader, None)
        except csv.Error as exc:
            raise FormatError(inp.name, 1, "header", f"cannot be read as CSV: {exc}") from None
        if header is None:
            raise FormatError(inp.name, 1, "file", "the file is empty")
        header = [h.strip() for h in header]
        dupes = sorted({h for h in header if header.count(h) > 1})
        if dupes or any(not h for h in header):
            raise FormatError(inp.name, 1, "header", f"column names must be unique and non-empty (bad: {dupes or ['(empty)']})")
        _check_columns(inp, header, 1)
        while True:
            lines.taken = []
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                taken = lines.taken
                if len(taken) > 1:
                    opened = _quote_opened(taken, delimiter)
                    rest = [t for t in taken if t[0] > opened]
                    yield taken[0][0], RowProblem("csv", (
                        f"a quoted field opened on line {opened} is not closed properly by line {taken[-1][0]} "
                        f"(an unclosed quote?); the {len(rest)} lines after line {opened} are read again as rows"))
                    lines.push_back(rest)
                    reader = csv.reader(lines, delimiter=delimiter, strict=True)
                else:
                    yield (taken[0][0] if taken else 0), RowProblem("csv", f"cannot be read as CSV: {exc}")
                continue
            start, end = lines.taken[0][0], lines.taken[-1][0]
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != len(header):
                span = ""
                if end > start:
                    span = (f" (a quoted field opened on line {_quote_opened(lines.taken, delimiter)} spans the lines up "
                            f"to line {end}: an unclosed quote?)")
                yield start, RowProblem("row", f"has {len(row)} cells but the header has {len(header)} columns{span}")
                continue
            yield start, dict(zip(header, row))
    except _DecodeFailed as exc:
        raise FormatError(inp.name, exc.line, exc.problem.field, exc.problem.message) from None


def _check_columns(inp: Input, names: list[Any], line: int) -> None:
    """Column names a database can store (they become field names of every row), else ``FormatError``."""
    for name in names:
        try:
            check_name(name, display_name(name))
        except RowProblem as p:
            raise FormatError(inp.name, line, "header", f"column '{p.field}': {p.message}") from None


def _iter_parquet(inp: Input) -> Iterator[tuple[int, dict[str, Any] | RowProblem]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        src: Any = str(inp.path) if inp.path is not None and not inp.gzipped() else pa.BufferReader(_all_bytes(inp))
        pf = pq.ParquetFile(src)
        _check_columns(inp, list(pf.schema_arrow.names), 0)
        n = 0
        for batch in pf.iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                n += 1
                yield n, row
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise FormatError(inp.name, 0, "parquet", f"cannot read the Parquet file ({type(exc).__name__}: {str(exc)[:200]})") from None


def _all_bytes(inp: Input) -> bytes:
    with inp.open() as f:
        return f.read()
