"""Import a preference file into the database: all or nothing, idempotent, with progress.

Two steps: every row is parsed and validated first (nothing is written if one is bad, unless
``skip_invalid``), and hashed and checked for storage (``db.bulk.prepare``); then everything is written in ONE
write transaction, in batches of a few set-based statements each (``db.bulk.BulkWriter``), with a progress
callback, so SQLite's write lock is held for the inserts only. A failure half-way rolls the whole transaction
back, so the database is left exactly as it was. ``bulk=False`` writes record by record through ``db.store``
instead (the path of earlier releases: the same rows, a write lock held about 20-40x longer).

Each label / ranking carries the idempotency key of its source record (and, when options decided it, of the
judgment stored from it: annotator, source, verdict), so importing the same file again adds nothing (the report
counts those rows as ``duplicates``), while distinct judgments of one pair are all kept.

Concurrent imports of overlapping files all succeed. On SQLite their write transactions take turns (the
database's one write lock); on PostgreSQL they take turns too, on a transaction-scoped advisory lock: rows
written in key order within each statement still meet in opposite orders across a file's batches, and 10
overlapping imports then deadlocked again and again (half failed after 8 retries). Beside other writers
(labelers), whose rows the key-ordered statements lock in one order, the whole write transaction is run again
when it meets a PostgreSQL deadlock or serialization failure or SQLite's lock held beyond its timeout
(``IMPORT_RETRIES`` times, with growing pauses).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from db import store
from db.bulk import BulkWriter, partner_pairs, prepare, record_weight
from db.formats import FormatError, ImportRecord, RowError, parse_file
from db.formats.base import MAX_ORIGIN, option
from db.formats.containers import Input, iter_raw, sniff_container
from db.formats.reader import detect
from db.models import Annotator, Comparison, Label, Prompt, Ranking, Response
from db.session import Database

Progress = Callable[[int, int], None]  # (records written so far, records in total)
BATCH = 200
# Up to this weight of validated records (about one unit per response or comparison they make) is kept between
# the two steps, not parsed twice; beyond, the bulk path spools its prepared batches to a temporary file before
# the write transaction opens.
_KEEP_IN_MEMORY = 60_000
IMPORT_RETRIES = 8  # runs of the write transaction after the first, on deadlocks, serialization failures, locks
_PG_IMPORT_LOCK = 727_005  # pg_advisory_xact_lock key: one import's write transaction at a time (as on SQLite)


@dataclass
class ImportReport:
    """What an import did. ``skipped`` lists the rows left out under ``skip_invalid``."""

    format: str
    container: str
    filename: str
    records: int = 0
    labels_added: int = 0
    rankings_added: int = 0
    comparisons_added: int = 0
    prompts_added: int = 0
    responses_added: int = 0
    duplicates: int = 0
    skipped: list[RowError] = field(default_factory=list)
    seconds: float = 0.0
    retries: int = 0  # write transactions run again after a deadlock, serialization failure or lock timeout

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with skipped rows as their one-line messages."""
        d = asdict(self)
        d["skipped"] = [str(e) for e in self.skipped]
        return d

    def summary(self) -> str:
        """One line for people."""
        parts = [
            f"{self.records} records ({self.format}, {self.container})",
            f"{self.labels_added} labels", f"{self.rankings_added} rankings", f"{self.comparisons_added} comparisons",
            f"{self.prompts_added} prompts", f"{self.responses_added} responses added",
        ]
        if self.duplicates:
            parts.append(f"{self.duplicates} already present")
        if self.skipped:
            parts.append(f"{len(self.skipped)} invalid rows skipped")
        return ", ".join(parts)


def import_file(
    db: Database,
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
    skip_invalid: bool = False,
    filename: str | None = None,
    progress: Progress | None = None,
    bulk: bool = True,
) -> ImportReport:
    """Import one file (path, bytes or binary file object); see ``db.formats.parse_file`` for the options.

    Raises ``FormatError`` ("FILE:LINE: field 'X': message") for the first bad row unless ``skip_invalid``,
    and for problems with the whole file in any case; the database is then unchanged. ``progress(done, total)``
    is called after each batch of records written.

    ``bulk`` (the default) hashes and checks every record before the write transaction opens and then writes
    each batch in a few set-based statements (``db.bulk``), so SQLite's write lock is held only for the inserts;
    ``bulk=False`` is the older per-record path through ``db.store`` (same result, kept for comparison).
    """
    t0 = time.monotonic()
    inp = Input.of(path_or_bytes, filename)
    kw = dict(format=format, mapping=mapping, winner_values=winner_values, winner_scale=winner_scale, source=source,
              annotator=annotator, category=category, split=split)
    records: list[ImportRecord] | None = []
    errors: list[RowError] = []
    n = weight = 0
    for item in parse_file(inp, **kw):
        if isinstance(item, RowError):
            errors.append(item)
            continue
        n += 1
        if records is not None:
            records.append(item)
            weight += record_weight(len(item.responses), item.kind)
            if weight > _KEEP_IN_MEMORY:
                records = None  # a large file: parse it again while writing instead of holding it all
    if errors and not skip_invalid:
        more = (f" ({len(errors) - 1} more invalid rows; {option('skip-invalid')} imports the valid ones)"
                if len(errors) > 1 else "")
        raise FormatError.from_row(errors[0], more)
    det = detect(inp, format=format, mapping=mapping)
    report = ImportReport(format=det.format, container=det.container, filename=inp.name, records=n, skipped=errors)
    if n == 0:
        report.seconds = time.monotonic() - t0
        return report
    source_records: Iterable[ImportRecord] = records if records is not None else _Reparsed(inp, kw)
    origin = f"import:{inp.name}"[:MAX_ORIGIN]

    def count_retry(_exc: BaseException) -> None:
        report.retries += 1

    if bulk:
        # Everything but the inserts happens here, before the write lock is taken.
        plan = prepare(source_records, origin, chunk_size=BATCH, keep_in_memory=_KEEP_IN_MEMORY)
        records = source_records = None  # type: ignore[assignment]

        def write_bulk(s: Session) -> tuple[BulkWriter, dict[str, int], dict[str, int]]:
            _take_turn(s)
            before = _counts(s)
            writer = BulkWriter(s)
            done = 0
            if progress:
                progress(0, n)
            for chunk in plan.chunks:
                writer.write_chunk(chunk)
                done += len(chunk)
                if progress and done < plan.records:
                    progress(done, n)
            return writer, before, _counts(s)

        try:
            writer, before, after = db.run_write(write_bulk, retries=IMPORT_RETRIES, on_retry=count_retry)
        finally:
            plan.chunks.close()
        writer.duplicates += plan.in_file_duplicates
    else:
        def write_records(s: Session) -> tuple[_Writer, dict[str, int], dict[str, int]]:
            _take_turn(s)
            before = _counts(s)
            writer = _Writer(s, origin)
            done = 0
            if progress:
                progress(0, n)
            batch: list[ImportRecord] = []
            for rec in source_records:
                batch.append(rec)
                if len(batch) >= BATCH:
                    writer.write_batch(batch)
                    done += len(batch)
                    batch = []
                    if progress:
                        progress(done, n)
            writer.write_batch(batch)
            return writer, before, _counts(s)

        writer, before, after = db.run_write(write_records, retries=IMPORT_RETRIES,  # type: ignore[assignment]
                                             on_retry=count_retry)
    if progress:
        progress(n, n)
    report.labels_added, report.rankings_added = writer.labels_added, writer.rankings_added
    report.duplicates = writer.duplicates
    report.prompts_added = after["prompts"] - before["prompts"]
    report.responses_added = after["responses"] - before["responses"]
    report.comparisons_added = after["comparisons"] - before["comparisons"]
    report.seconds = time.monotonic() - t0
    return report


def _take_turn(s: Session) -> None:
    """On PostgreSQL, wait for other imports' write transactions to end (SQLite's write lock does this already)."""
    if s.get_bind().dialect.name == "postgresql":
        s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_IMPORT_LOCK})


class _Reparsed:
    """A large file's valid records, parsed again each time they are iterated (not held in memory)."""

    def __init__(self, inp: Input, kw: dict[str, Any]) -> None:
        self.inp, self.kw = inp, kw

    def __iter__(self) -> Iterator[ImportRecord]:
        return (r for r in parse_file(self.inp, **self.kw) if not isinstance(r, RowError))


def _counts(s: Session) -> dict[str, int]:
    return {
        "prompts": s.scalar(select(func.count()).select_from(Prompt)) or 0,
        "responses": s.scalar(select(func.count()).select_from(Response)) or 0,
        "comparisons": s.scalar(select(func.count()).select_from(Comparison)) or 0,
    }


class _Writer:
    """The per-record path (``bulk=False``): writes records through ``db.store`` inside one transaction, in
    batches.

    Per batch, one query finds the labels / rankings already present (re-imports and repeated lines are
    skipped without touching anything else). Prompts, responses, comparisons and annotators already looked up
    are remembered (detached after each batch, so the session's identity map, which every ``label_count``
    update scans, stays small and large imports stay linear).
    """

    def __init__(self, session: Session, origin: str) -> None:
        self.s = session
        self.origin = origin
        self.prompts: dict[str, Prompt] = {}
        self.responses: dict[tuple[int, str], Response] = {}
        self.comparisons: dict[tuple[int, int], Comparison] = {}
        self.annotators: dict[str, Annotator] = {}
        self.seen: set[tuple[str, str]] = set()  # (kind, key) written or found by this import
        self.labels_added = self.rankings_added = self.duplicates = 0

    def write_batch(self, batch: list[ImportRecord]) -> None:
        """Write a batch of records, then flush and detach the session's objects."""
        self._mark_existing(batch)
        for rec in batch:
            if rec.kind != "unlabeled":
                if (rec.kind, rec.key) in self.seen:
                    self.duplicates += 1
                    continue
                self.seen.add((rec.kind, rec.key))
            self.add(rec)
        self.s.flush()
        self.s.expunge_all()
        if len(self.responses) > _KEEP_IN_MEMORY * 4:  # bound memory on huge files
            self.prompts.clear()
            self.responses.clear()
            self.comparisons.clear()

    def _mark_existing(self, batch: list[ImportRecord]) -> None:
        for kind, model in (("comparison", Label), ("ranking", Ranking)):
            keys = list({r.key for r in batch if r.kind == kind and (kind, r.key) not in self.seen})
            for i in range(0, len(keys), 500):
                chunk = keys[i:i + 500]
                for (k,) in self.s.execute(select(model.idempotency_key).where(model.idempotency_key.in_(chunk))):
                    self.seen.add((kind, k))

    def _prompt(self, rec: ImportRecord) -> Prompt:
        h = store.prompt_hash(rec.prompt, rec.history)
        p = self.prompts.get(h)
        if p is None:
            p = self.prompts[h] = store.get_or_create_prompt(self.s, rec.prompt, history=rec.history, category=rec.category)
        elif rec.category and not p.category:
            p.category = rec.category
            attached = self.s.get(Prompt, p.id)
            if attached is not None and attached is not p:
                attached.category = rec.category
        return p

    def _response(self, prompt: Prompt, text: str, model: str | None) -> Response:
        k = (prompt.id, store.sha256(text))
        r = self.responses.get(k)
        if r is None:
            r = self.responses[k] = store.get_or_create_response(self.s, prompt.id, text, model)
        elif model and not r.model:
            r.model = model
            attached = self.s.get(Response, r.id)
            if attached is not None and attached is not r:
                attached.model = model
        return r

    def _comparison(self, first: Response, second: Response) -> store.OrientedComparison:
        k = (min(first.id, second.id), max(first.id, second.id))
        c = self.comparisons.get(k)
        if c is None:
            oc = store.get_or_create_comparison(self.s, first, second)
            self.comparisons[k] = oc.comparison
            return oc
        return store.OrientedComparison(c, swapped=first.id != k[0])

    def _annotator(self, name: str, source: str) -> Annotator:
        a = self.annotators.get(name)
        if a is None:
            a = self.annotators[name] = store.get_or_create_annotator(self.s, name, source)
        return a

    def add(self, rec: ImportRecord) -> None:
        prompt = self._prompt(rec)
        resps = [self._response(prompt, t, m) for t, m in zip(rec.responses, rec.models)]
        if rec.kind == "comparison":
            oc = self._comparison(resps[0], resps[1])
            _, created = store.add_label(
                self.s, comparison_id=oc.comparison.id, outcome=oc.outcome_to_stored(rec.winner or ""),
                source=rec.source, annotator=self._annotator(rec.annotator, rec.source), idempotency_key=rec.key,
                left=oc.to_stored("a"), strength=rec.strength, time_spent_ms=rec.time_spent_ms, split=rec.split,
                origin=rec.origin if rec.origin_given else self.origin, extra=rec.extra or None,
            )
            self.labels_added += created
            self.duplicates += not created
        elif rec.kind == "ranking":
            _, created = store.add_ranking(
                self.s, prompt_id=prompt.id, response_ids=[r.id for r in resps], ranks=rec.ranks, source=rec.source,
                annotator=self._annotator(rec.annotator, rec.source), idempotency_key=rec.key, split=rec.split,
                time_spent_ms=rec.time_spent_ms, origin=rec.origin if rec.origin_given else self.origin,
                extra=rec.extra or None,
            )
            self.rankings_added += created
            self.duplicates += not created
        else:
            for first, second in partner_pairs([store.sha256(t) for t in rec.responses]):
                self._comparison(resps[first], resps[second])


@dataclass(frozen=True)
class Preview:
    """An upload preview: the detected format, the file's own field names, the first rows, the errors."""

    format: str | None
    container: str | None
    filename: str
    columns: list[str]
    rows: list[dict[str, Any]]
    errors: list[RowError]
    n_records: int
    n_errors: int
    complete: bool = True  # False when the scan stopped at ``scan_limit`` rows (counts are then lower bounds)


def record_row(rec: ImportRecord) -> dict[str, Any]:
    """An ``ImportRecord`` as a flat dict for display (``key`` left out)."""
    d = asdict(rec)
    d.pop("key", None)
    return d


def preview(
    path_or_bytes: Any,
    format: str | None = None,
    mapping: Any = None,
    *,
    winner_values: Any = None,
    winner_scale: Any = None,
    source: str | None = None,
    annotator: str | None = None,
    category: str | None = None,
    split: str = "train",
    n: int = 20,
    max_errors: int = 50,
    scan_limit: int | None = 20_000,
    filename: str | None = None,
) -> Preview:
    """Read a file without writing anything: format, columns, the first ``n`` rows, up to ``max_errors``.

    At most ``scan_limit`` rows are checked (``None``: all), so a preview of a large upload stays quick;
    ``complete`` says whether the whole file was read.

    Never raises for bad content: a file-level problem comes back as the only error (``format`` None), so an
    upload form can show it next to the file's columns and let the user pick ``--map`` targets.
    """
    inp = Input.of(path_or_bytes, filename)
    columns = _columns(inp)
    rows: list[dict[str, Any]] = []
    errors: list[RowError] = []
    n_records = n_errors = 0
    complete = True
    try:
        det = detect(inp, format=format, mapping=mapping)
        for item in parse_file(inp, format=format, mapping=mapping, winner_values=winner_values, winner_scale=winner_scale,
                               source=source, annotator=annotator, category=category, split=split):
            if scan_limit is not None and n_records + n_errors >= scan_limit:
                complete = False
                break
            if isinstance(item, RowError):
                n_errors += 1
                if len(errors) < max_errors:
                    errors.append(item)
            else:
                n_records += 1
                if len(rows) < n:
                    rows.append(record_row(item))
    except FormatError as exc:
        return Preview(None, None, inp.name, columns, rows, [exc.row_error], n_records, n_errors + 1)
    return Preview(det.format, det.container, inp.name, columns, rows, errors, n_records, n_errors, complete)


def _columns(inp: Input) -> list[str]:
    try:
        for _, obj in iter_raw(inp, sniff_container(inp)):
            if isinstance(obj, dict):
                return [str(k) for k in obj]
    except FormatError:
        pass
    return []
