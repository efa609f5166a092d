"""Export the database to files: TRL training data, or the native comparison records (JSONL, CSV, Parquet).

* ``trl``: ``{"prompt", "chosen", "rejected"}`` per training pair (labels and expanded rankings); ties and
  both-bad verdicts cannot be written as chosen/rejected and are left out, counted in ``excluded``. When any
  prompt has multi-turn history every line uses TRL's conversational shape (lists of chat messages).
* ``comparisons``: JSONL with full provenance: one line per label (``response_a`` is what the annotator saw
  first), then one per ranking, then ``unlabeled`` lines for comparisons without labels and for responses
  in no comparison or ranking. Labels excluded in review are left out of every format and counted
  (``review_excluded``), as are verdicts their annotator changed since (``superseded``: the new label is written); a
  pair whose labels are all excluded is written as unlabeled. Importing it into an empty database recreates the same prompts, responses,
  comparisons, labels and rankings; importing it into the database it came from adds nothing.
* ``csv`` / ``parquet``: the same records as a table (structured cells as JSON text), also re-importable.

A path ending in ``.gz`` is gzip-compressed (JSONL and CSV). Files are written to a temporary name and moved
into place, so a failed export never leaves half a file.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import exists, select
from sqlalchemy.orm import Session, aliased

from db.formats import comparisons, rankings, trl, unlabeled
from db.models import Annotator, Comparison, Label, Prompt, Ranking, RankingItem, Response, Side, Split
from db.pairs import training_pairs
from db.session import Database

EXPORT_FORMATS = ("trl", "comparisons", "csv", "parquet")
TABLE_COLUMNS = (
    "prompt", "history", "category", "response_a", "response_b", "model_a", "model_b", "winner", "responses",
    "ranking", "source", "annotator", "strength", "split", "time_spent_ms", "origin", "key", "extra",
)
_JSON_CELLS = ("history", "responses", "ranking", "extra")
_INT_CELLS = ("strength", "time_spent_ms")


@dataclass
class ExportReport:
    """What an export wrote and what it left out (and why)."""

    format: str
    n_written: int = 0
    excluded: dict[str, int] = field(default_factory=dict)
    path: str | None = None

    def summary(self) -> str:
        left = ", ".join(f"{n} {why}" for why, n in sorted(self.excluded.items()) if n)
        return f"wrote {self.n_written} {self.format} records" + (f" to {self.path}" if self.path else "") + (f"; left out: {left}" if left else "")


def export(db: Database, fmt: str, out: str | os.PathLike[str] | BinaryIO, *, split: str | None = None) -> ExportReport:
    """Write the database as ``fmt`` (trl, comparisons, csv, parquet) to a path or a binary stream.

    ``split`` (``train``/``test``) keeps only labels and rankings of that split (and then no unlabeled records).
    """
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; formats are {', '.join(EXPORT_FORMATS)}")
    if split is not None:
        split = Split(split).value
    report = ExportReport(format=fmt, path=str(out) if isinstance(out, (str, os.PathLike)) else None)
    with db.read() as s:
        if fmt == "trl":
            records = list(_trl_records(s, split, report))
        else:
            records = list(native_records(s, split, report))
    if fmt == "parquet":
        data = _parquet_bytes(records)
    elif fmt == "csv":
        data = _csv_bytes(records)
    else:
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    _write(out, data, compress=fmt != "parquet" and str(report.path or "").endswith(".gz"))
    report.n_written = len(records)
    return report


def _trl_records(s: Session, split: str | None, report: ExportReport) -> Iterator[dict[str, Any]]:
    ps = training_pairs(s, split=split, include_ties=False)
    report.excluded = {k: v for k, v in ps.excluded.items() if v}
    conversational = any(p.history for p in ps.pairs)
    for p in ps.pairs:
        history = [{"role": r, "content": c} for r, c in p.history] or None
        yield trl.to_obj(prompt=p.prompt, history=history, chosen=p.chosen, rejected=p.rejected, conversational=conversational)


def native_records(s: Session, split: str | None, report: ExportReport | None = None) -> Iterator[dict[str, Any]]:
    """Every label, ranking and unjudged response as native JSON records (what ``comparisons`` export writes)."""
    excluded: dict[str, int] = {}
    ra, rb = aliased(Response), aliased(Response)
    q = (
        select(Label, Annotator.name, Prompt, ra, rb)
        .join(Comparison, Label.comparison_id == Comparison.id)
        .join(Prompt, Comparison.prompt_id == Prompt.id)
        .join(ra, Comparison.response_a_id == ra.id)
        .join(rb, Comparison.response_b_id == rb.id)
        .join(Annotator, Label.annotator_id == Annotator.id)
        .order_by(Label.id)
    )
    for label, ann, prompt, a, b in s.execute(q):
        if label.superseded_by_id is not None:  # its annotator changed the verdict: the new label is exported
            excluded["superseded"] = excluded.get("superseded", 0) + 1
            continue
        if label.excluded:  # a researcher kept it out of training: not exported either, and counted
            excluded["review_excluded"] = excluded.get("review_excluded", 0) + 1
            continue
        if split is not None and label.split.value != split:
            excluded["other_split"] = excluded.get("other_split", 0) + 1
            continue
        winner = label.outcome.value
        if label.left is Side.b:  # the file's response_a is what the annotator saw first
            a, b = b, a
            winner = {"a": "b", "b": "a"}.get(winner, winner)
        yield comparisons.to_obj(
            prompt=prompt.text, history=prompt.history, category=prompt.category, response_a=a.text,
            response_b=b.text, model_a=a.model, model_b=b.model, winner=winner, source=label.source.value,
            annotator=ann, strength=label.strength, split=label.split.value, key=label.idempotency_key,
            origin=label.origin, time_spent_ms=label.time_spent_ms, extra=label.extra,
        )
    items: dict[int, list[tuple[Response, int]]] = {}
    for item, resp in s.execute(
        select(RankingItem, Response).join(Response, RankingItem.response_id == Response.id)
        .order_by(RankingItem.ranking_id, RankingItem.position, RankingItem.id)
    ):
        items.setdefault(item.ranking_id, []).append((resp, item.rank))
    for ranking, ann, prompt in s.execute(
        select(Ranking, Annotator.name, Prompt).join(Prompt, Ranking.prompt_id == Prompt.id)
        .join(Annotator, Ranking.annotator_id == Annotator.id).order_by(Ranking.id)
    ):
        if split is not None and ranking.split.value != split:
            excluded["other_split"] = excluded.get("other_split", 0) + 1
            continue
        its = items.get(ranking.id, [])
        yield rankings.to_obj(
            prompt=prompt.text, history=prompt.history, category=prompt.category, responses=[r.text for r, _ in its],
            models=[r.model for r, _ in its], ranks=[k for _, k in its], source=ranking.source.value, annotator=ann,
            split=ranking.split.value, key=ranking.idempotency_key, origin=ranking.origin,
            time_spent_ms=ranking.time_spent_ms, extra=ranking.extra,
        )
    if split is None:
        yield from _unlabeled_records(s, excluded)
    if report is not None:
        report.excluded = excluded


def _unlabeled_records(s: Session, excluded: dict[str, int]) -> Iterator[dict[str, Any]]:
    ra, rb = aliased(Response), aliased(Response)
    no_label = ~exists().where(Label.comparison_id == Comparison.id, Label.excluded.is_(False))
    for prompt, a, b in s.execute(
        select(Prompt, ra, rb).join(Comparison, Comparison.prompt_id == Prompt.id)
        .join(ra, Comparison.response_a_id == ra.id).join(rb, Comparison.response_b_id == rb.id)
        .where(no_label).order_by(Comparison.id)
    ):
        yield unlabeled.to_obj(prompt=prompt.text, history=prompt.history, category=prompt.category,
                               responses=[a.text, b.text], models=[a.model, b.model])
    in_comparison = exists().where((Comparison.response_a_id == Response.id) | (Comparison.response_b_id == Response.id))
    in_ranking = exists().where(RankingItem.response_id == Response.id)
    orphans: dict[int, tuple[Prompt, list[Response]]] = {}
    for prompt, resp in s.execute(
        select(Prompt, Response).join(Response, Response.prompt_id == Prompt.id)
        .where(~in_comparison, ~in_ranking).order_by(Prompt.id, Response.id)
    ):
        orphans.setdefault(prompt.id, (prompt, []))[1].append(resp)
    for prompt, resps in orphans.values():
        yield unlabeled.to_obj(prompt=prompt.text, history=prompt.history, category=prompt.category,
                               responses=[r.text for r in resps], models=[r.model for r in resps])
    bare = s.scalar(select(Prompt.id).where(~exists().where(Response.prompt_id == Prompt.id)).limit(1))
    if bare is not None:
        n = len(s.scalars(select(Prompt.id).where(~exists().where(Response.prompt_id == Prompt.id))).all())
        excluded["prompts_without_responses"] = n


def table_row(rec: dict[str, Any]) -> dict[str, Any]:
    """A native record as one row of the export table (structured cells as JSON text)."""
    row: dict[str, Any] = {}
    for col in TABLE_COLUMNS:
        v = rec.get(col)
        if col in _JSON_CELLS and v is not None:
            v = json.dumps(v, ensure_ascii=False)
        row[col] = v
    return row


def _csv_bytes(records: list[dict[str, Any]]) -> bytes:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(TABLE_COLUMNS), lineterminator="\n")
    w.writeheader()
    for rec in records:
        w.writerow({k: ("" if v is None else v) for k, v in table_row(rec).items()})
    return buf.getvalue().encode("utf-8")


def _parquet_bytes(records: list[dict[str, Any]]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [table_row(r) for r in records]
    arrays = {
        col: pa.array([r[col] for r in rows], type=pa.int64() if col in _INT_CELLS else pa.string()) for col in TABLE_COLUMNS
    }
    buf = io.BytesIO()
    pq.write_table(pa.table(arrays), buf)
    return buf.getvalue()


def _write(out: str | os.PathLike[str] | BinaryIO, data: bytes, *, compress: bool) -> None:
    if compress:
        data = gzip.compress(data, mtime=0)
    if not isinstance(out, (str, os.PathLike)):
        out.write(data)
        out.flush()
        return
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
