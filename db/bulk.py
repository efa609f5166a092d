"""Set-based writes for imports: many records in a handful of statements per chunk.

``db.store`` writes one record at a time (a get-or-create per prompt, response, comparison, annotator and
label: about four statements per label), which holds SQLite's write lock for seconds on a few thousand records.
Here the work is split in two:

* :func:`prepare` (no database, run BEFORE the write transaction opens): hash every prompt and response with
  the same content addressing as ``db.store`` (``prompt_hash``, ``sha256``), strip annotator names, check what
  ``db.store`` would refuse, drop records whose idempotency key already appeared earlier in the file;
* :class:`BulkWriter` (inside the caller's one write transaction): per chunk, one ``SELECT`` of the label /
  ranking keys already stored, then for annotators, prompts, responses and comparisons one multi-row
  ``INSERT ... ON CONFLICT DO NOTHING RETURNING id, key`` (executemany of the rows not known yet, which
  SQLAlchemy sends as multi-row ``VALUES`` statements) and, for the rows that were already stored (no row
  returned), one ``SELECT id, key ... WHERE key IN (...)``; labels and rankings are inserted the same way (so
  only labels really inserted bump ``comparisons.label_count``, even beside a concurrent writer).

The result is what the per-record path stores: same rows, same hashes, the comparison stored once per unordered
pair (``response_a_id < response_b_id``) with each label's outcome and displayed side relative to it, a
prompt's category / a response's model filled in from the first record that has one, an annotator's default
source from the first record that names it, ``label_count`` equal to the labels added.

Every multi-row statement writes its rows in the order of their unique key (annotator name, prompt hash,
``(prompt_id, response hash)``, ``(response_a_id, response_b_id)``, idempotency key, comparison id), so
concurrent imports lock shared rows in one order instead of deadlocking on PostgreSQL; what still conflicts
across batches is retried whole by the importer (``Database.run_write``).

An unlabeled record's responses are paired by :func:`partner_pairs`: every pair up to ``PAIR_PARTNERS + 1``
responses, beyond that ``PAIR_PARTNERS`` partners per response, so one line with thousands of responses makes
a few thousand comparisons, not millions. Chunks are cut by weight (responses and pairs), not only by count.
"""
from __future__ import annotations

import pickle
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, or_, select, tuple_, update
from sqlalchemy.orm import Session

from db.formats import ImportRecord
from db.models import (
    Annotator,
    Comparison,
    Label,
    Outcome,
    Prompt,
    Ranking,
    RankingItem,
    Response,
    Side,
    Source,
    Split,
    utcnow,
)
from db.session import dialect_insert
from db.store import prompt_hash, sha256

IN_LIMIT = 500  # items per IN (...) list: far below SQLite's 32,766 bound variables
PAIR_PARTNERS = 8  # an unlabeled record's response is paired with at most this many of its other responses
CHUNK_WEIGHT = 5_000  # responses + comparisons per chunk, whatever the number of records


def partner_pairs(hashes: Sequence[str], k: int = PAIR_PARTNERS) -> list[tuple[int, int]]:
    """The pairs of an unlabeled record's responses that become comparisons, as index pairs ``(i, j)``, i < j.

    Up to ``k + 1`` responses: every pair. Beyond, the responses are placed on a ring in the order of their
    content hashes and each is paired with its ``k`` nearest neighbours (``k / 2`` on each side): ``n * k / 2``
    pairs, every response in exactly ``k`` of them and all of them connected, chosen by content alone (a random
    order that the same responses, in any order, always give again: re-imports make the same pairs).
    """
    n = len(hashes)
    if n <= k + 1:
        return [(i, j) for i in range(n) for j in range(i + 1, n)]
    order = sorted(range(n), key=lambda i: hashes[i])
    out: set[tuple[int, int]] = set()
    for p in range(n):
        for d in range(1, k // 2 + 1):
            i, j = order[p], order[(p + d) % n]
            out.add((min(i, j), max(i, j)))
    return sorted(out)


def record_weight(responses: int, kind: str) -> int:
    """Rows a record makes (responses and comparisons): what bounds a chunk's memory and statement size."""
    if kind == "unlabeled":
        return responses + (responses * (responses - 1) // 2 if responses <= PAIR_PARTNERS + 1 else responses * PAIR_PARTNERS // 2)
    return responses + 1


@dataclass(slots=True)
class Prepared:
    """One import record, validated and hashed, ready for :class:`BulkWriter` (picklable, for spooling)."""

    line: int
    kind: str
    key: str
    prompt: str
    history: list[dict[str, str]] | None
    category: str | None
    prompt_hash: str
    responses: list[str]
    response_hashes: list[str]
    models: list[str | None]
    winner: str | None
    ranks: list[int] | None
    source: str
    annotator: str
    strength: int | None
    split: str
    time_spent_ms: int | None
    origin: str | None
    extra: dict[str, Any] | None


def prepare_record(rec: ImportRecord, origin: str) -> Prepared:
    """Hash and check one record (raises ``ValueError`` for what ``db.store`` would refuse)."""
    annotator = rec.annotator.strip() if rec.annotator is not None else ""
    if rec.kind != "unlabeled":
        if not annotator:
            raise ValueError("annotator name is empty")
        if not rec.key:
            raise ValueError("idempotency_key is required")
        Source(rec.source)
        Split(rec.split)
    if rec.kind == "comparison":
        if rec.strength is not None and rec.strength not in (1, 2):
            raise ValueError(f"strength must be 1 (slightly) or 2 (clearly), got {rec.strength!r}")
        Outcome(rec.winner or "")
        if len(rec.responses) < 2:
            raise ValueError("a comparison needs two different responses")
    if rec.kind == "ranking":
        if len(rec.responses) < 2:
            raise ValueError("a ranking needs at least two responses")
        if rec.ranks is not None and len(rec.ranks) != len(rec.responses):
            raise ValueError("ranks and responses differ in length")
    return Prepared(
        line=rec.line, kind=rec.kind, key=rec.key, prompt=rec.prompt, history=rec.history, category=rec.category,
        prompt_hash=prompt_hash(rec.prompt, rec.history), responses=list(rec.responses),
        response_hashes=[sha256(t) for t in rec.responses], models=list(rec.models), winner=rec.winner,
        ranks=None if rec.ranks is None else [int(k) for k in rec.ranks], source=rec.source, annotator=annotator,
        strength=rec.strength, split=rec.split, time_spent_ms=rec.time_spent_ms,
        origin=rec.origin if rec.origin_given else origin, extra=rec.extra or None,
    )


class Spool:
    """Prepared chunks in memory, spilled to a temporary file (pickled) beyond ``keep_in_memory`` weight (about
    one unit per response or comparison), so a huge file is neither held in memory nor parsed again while the
    write lock is held."""

    def __init__(self, keep_in_memory: int) -> None:
        self.keep = keep_in_memory
        self.records = 0
        self.weight = 0
        self._chunks: list[list[Prepared]] = []
        self._n_chunks = 0
        self._file: Any = None

    def add(self, chunk: list[Prepared], weight: int | None = None) -> None:
        if not chunk:
            return
        self.records += len(chunk)
        self.weight += len(chunk) if weight is None else weight
        self._n_chunks += 1
        if self._file is None and self.weight > self.keep:
            self._file = tempfile.TemporaryFile(prefix="rmstudio-import-")  # noqa: SIM115 - closed by close()
            for c in self._chunks:
                pickle.dump(c, self._file, protocol=pickle.HIGHEST_PROTOCOL)
            self._chunks = []
        if self._file is None:
            self._chunks.append(chunk)
        else:
            pickle.dump(chunk, self._file, protocol=pickle.HIGHEST_PROTOCOL)

    def __iter__(self) -> Iterator[list[Prepared]]:
        if self._file is None:
            yield from self._chunks
            return
        self._file.flush()
        self._file.seek(0)
        for _ in range(self._n_chunks):
            yield pickle.load(self._file)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._chunks = []


@dataclass
class Plan:
    """What :func:`prepare` made of a file: the chunks to write and the records left out as repeated keys."""

    chunks: Spool
    records: int  # records to write (repeats left out)
    in_file_duplicates: int


def prepare(records: Iterable[ImportRecord], origin: str, *, chunk_size: int, keep_in_memory: int) -> Plan:
    """Hash, check and chunk records (at most ``chunk_size`` records and about ``CHUNK_WEIGHT`` rows per chunk);
    a label or ranking whose key appeared earlier in the file is left out (counted in ``in_file_duplicates``),
    as the per-record path skips it. ``keep_in_memory`` is a weight (see :class:`Spool`)."""
    spool = Spool(keep_in_memory)
    seen: set[tuple[str, str]] = set()
    dup = n = weight = 0
    chunk: list[Prepared] = []
    for rec in records:
        if rec.kind != "unlabeled":
            if (rec.kind, rec.key) in seen:
                dup += 1
                continue
            seen.add((rec.kind, rec.key))
        w = record_weight(len(rec.responses), rec.kind)
        if chunk and weight + w > CHUNK_WEIGHT:
            spool.add(chunk, weight)
            chunk, weight = [], 0
        chunk.append(prepare_record(rec, origin))
        n += 1
        weight += w
        if len(chunk) >= chunk_size:
            spool.add(chunk, weight)
            chunk, weight = [], 0
    spool.add(chunk, weight)
    return Plan(spool, n, dup)


def _pieces(items: Sequence[Any], n: int = IN_LIMIT) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


def _falsy(col: Any) -> Any:
    return or_(col.is_(None), col == "")


class BulkWriter:
    """Writes prepared chunks inside the caller's write transaction (never commits).

    Ids of annotators, prompts, responses and comparisons already resolved are remembered across chunks, so
    each row is inserted (or looked up) once per import.
    """

    def __init__(self, session: Session, *, max_cache: int = 200_000) -> None:
        self.s = session
        self._insert: Callable[..., Any] = dialect_insert(session)
        self.max_cache = max_cache
        self.annotators: dict[str, int] = {}
        self.prompts: dict[str, list[Any]] = {}  # hash -> [id, category]
        self.responses: dict[tuple[int, str], list[Any]] = {}  # (prompt_id, hash) -> [id, model]
        self.comparisons: dict[tuple[int, int], int] = {}
        self.labels_added = self.rankings_added = self.duplicates = 0

    # -- one chunk -------------------------------------------------------------------------------------------
    def write_chunk(self, chunk: Sequence[Prepared]) -> None:
        live = self._drop_stored(chunk)
        if not live:
            return
        if len(self.responses) + len(self.comparisons) > self.max_cache:  # bound memory on huge files
            self.prompts.clear()
            self.responses.clear()
            self.comparisons.clear()
        ann = self._annotators(live)
        pids = self._prompts(live)
        rids = self._responses(live, pids)
        cids = self._comparisons(live, pids, rids)
        self._labels([r for r in live if r.kind == "comparison"], rids, cids, ann)
        self._rankings([r for r in live if r.kind == "ranking"], pids, rids, ann)

    def _drop_stored(self, chunk: Sequence[Prepared]) -> list[Prepared]:
        """Leave out labels / rankings whose key is already stored (re-imports touch nothing else)."""
        stored: set[tuple[str, str]] = set()
        for kind, model in (("comparison", Label), ("ranking", Ranking)):
            keys = [r.key for r in chunk if r.kind == kind]
            for piece in _pieces(keys):
                stored.update((kind, k) for (k,) in self.s.execute(select(model.idempotency_key).where(model.idempotency_key.in_(piece))))
        if not stored:
            return list(chunk)
        self.duplicates += sum(1 for r in chunk if (r.kind, r.key) in stored)
        return [r for r in chunk if (r.kind, r.key) not in stored]

    def _annotators(self, live: Sequence[Prepared]) -> dict[str, int]:
        want: dict[str, str] = {}
        for r in live:
            if r.kind != "unlabeled" and r.annotator not in self.annotators:
                want.setdefault(r.annotator, r.source)
        if want:
            now = utcnow()
            t = Annotator.__table__
            rows = [{"name": n, "default_source": Source(src), "created_at": now} for n, src in sorted(want.items())]
            stmt = self._insert(t).on_conflict_do_nothing(index_elements=["name"])
            for i, n in self.s.execute(stmt.returning(t.c.id, t.c.name), rows):
                self.annotators[n] = i
            for piece in _pieces([n for n in want if n not in self.annotators]):  # already stored: look them up
                for i, n in self.s.execute(select(t.c.id, t.c.name).where(t.c.name.in_(piece))):
                    self.annotators[n] = i
        return self.annotators

    def _prompts(self, live: Sequence[Prepared]) -> dict[str, list[Any]]:
        new: dict[str, dict[str, Any]] = {}
        wanted_category: dict[str, str] = {}  # the first non-empty category per prompt in this chunk
        for r in live:
            h = r.prompt_hash
            if r.category:
                wanted_category.setdefault(h, r.category)
            if h not in self.prompts and h not in new:
                new[h] = {"content_hash": h, "text": r.prompt, "history": list(r.history) if r.history else None,
                          "category": r.category, "tags": None}
        t = Prompt.__table__
        if new:
            now = utcnow()
            rows = []
            for h, row in sorted(new.items()):
                if not row["category"] and h in wanted_category:
                    row["category"] = wanted_category[h]
                rows.append({**row, "created_at": now})
            stmt = self._insert(t).on_conflict_do_nothing(index_elements=["content_hash"])
            for i, h, cat in self.s.execute(stmt.returning(t.c.id, t.c.content_hash, t.c.category), rows):
                self.prompts[h] = [i, cat]
            for piece in _pieces([h for h in new if h not in self.prompts]):  # already stored: look them up
                for i, h, cat in self.s.execute(select(t.c.id, t.c.content_hash, t.c.category).where(t.c.content_hash.in_(piece))):
                    self.prompts[h] = [i, cat]
        fill = sorted(({"pid": self.prompts[h][0], "cat": c} for h, c in wanted_category.items() if not self.prompts[h][1]),
                      key=lambda r: r["pid"])
        if fill:
            self.s.execute(update(t).where(t.c.id == bindparam("pid"), _falsy(t.c.category)).values(category=bindparam("cat")), fill)
            for h, c in wanted_category.items():
                if not self.prompts[h][1]:
                    self.prompts[h][1] = c
        return self.prompts

    def _responses(self, live: Sequence[Prepared], pids: dict[str, list[Any]]) -> dict[tuple[int, str], list[Any]]:
        new: dict[tuple[int, str], dict[str, Any]] = {}
        wanted_model: dict[tuple[int, str], str] = {}
        for r in live:
            pid = pids[r.prompt_hash][0]
            for text, h, m in zip(r.responses, r.response_hashes, r.models):
                k = (pid, h)
                if m:
                    wanted_model.setdefault(k, m)
                if k not in self.responses and k not in new:
                    new[k] = {"prompt_id": pid, "content_hash": h, "text": text, "model": m}
        t = Response.__table__
        if new:
            now = utcnow()
            rows = []
            for k, row in sorted(new.items()):
                if not row["model"] and k in wanted_model:
                    row["model"] = wanted_model[k]
                rows.append({**row, "created_at": now})
            stmt = self._insert(t).on_conflict_do_nothing(index_elements=["prompt_id", "content_hash"])
            for i, pid, h, m in self.s.execute(stmt.returning(t.c.id, t.c.prompt_id, t.c.content_hash, t.c.model), rows):
                self.responses[(pid, h)] = [i, m]
            for piece in _pieces([k for k in new if k not in self.responses]):  # already stored: look them up
                q = select(t.c.id, t.c.prompt_id, t.c.content_hash, t.c.model).where(tuple_(t.c.prompt_id, t.c.content_hash).in_(piece))
                for i, pid, h, m in self.s.execute(q):
                    self.responses[(pid, h)] = [i, m]
        fill = sorted(({"rid": self.responses[k][0], "model": m} for k, m in wanted_model.items() if not self.responses[k][1]),
                      key=lambda r: r["rid"])
        if fill:
            self.s.execute(update(t).where(t.c.id == bindparam("rid"), _falsy(t.c.model)).values(model=bindparam("model")), fill)
            for k, m in wanted_model.items():
                if not self.responses[k][1]:
                    self.responses[k][1] = m
        return self.responses

    def _response_ids(self, r: Prepared, pids: dict[str, list[Any]], rids: dict[tuple[int, str], list[Any]]) -> list[int]:
        pid = pids[r.prompt_hash][0]
        return [rids[(pid, h)][0] for h in r.response_hashes]

    def _comparisons(self, live: Sequence[Prepared], pids: dict[str, list[Any]], rids: dict[tuple[int, str], list[Any]]) -> dict[tuple[int, int], int]:
        new: dict[tuple[int, int], int] = {}
        for r in live:
            if r.kind == "ranking":
                continue
            ids = self._response_ids(r, pids, rids)
            pairs = [(ids[0], ids[1])] if r.kind == "comparison" else [(ids[i], ids[j]) for i, j in partner_pairs(r.response_hashes)]
            for first, second in pairs:
                if first == second:
                    raise ValueError("a comparison needs two different responses")
                k = (min(first, second), max(first, second))
                if k not in self.comparisons and k not in new:
                    new[k] = pids[r.prompt_hash][0]
        if new:
            t = Comparison.__table__
            now = utcnow()
            rows = [{"prompt_id": pid, "response_a_id": a, "response_b_id": b, "label_count": 0, "created_at": now}
                    for (a, b), pid in sorted(new.items())]
            stmt = self._insert(t).on_conflict_do_nothing(index_elements=["response_a_id", "response_b_id"])
            for i, a, b in self.s.execute(stmt.returning(t.c.id, t.c.response_a_id, t.c.response_b_id), rows):
                self.comparisons[(a, b)] = i
            for piece in _pieces([k for k in new if k not in self.comparisons]):  # already stored: look them up
                q = select(t.c.id, t.c.response_a_id, t.c.response_b_id).where(tuple_(t.c.response_a_id, t.c.response_b_id).in_(piece))
                for i, a, b in self.s.execute(q):
                    self.comparisons[(a, b)] = i
        return self.comparisons

    def _labels(self, recs: Sequence[Prepared], rids: dict[tuple[int, str], list[Any]], cids: dict[tuple[int, int], int],
                ann: dict[str, int]) -> None:
        if not recs:
            return
        rows = []
        for r in recs:
            first, second = self._response_ids(r, self.prompts, rids)[:2]
            a = min(first, second)
            swapped = first != a
            outcome = Outcome(r.winner or "")
            if swapped and outcome in (Outcome.a, Outcome.b):
                outcome = Outcome.b if outcome is Outcome.a else Outcome.a
            rows.append({
                "comparison_id": cids[(a, max(first, second))], "outcome": outcome, "strength": r.strength,
                "source": Source(r.source), "annotator_id": ann[r.annotator], "left": Side.b if swapped else Side.a,
                "time_spent_ms": r.time_spent_ms, "split": Split(r.split), "idempotency_key": r.key, "origin": r.origin,
                "extra": r.extra, "created_at": utcnow(),
            })
        rows.sort(key=lambda row: row["idempotency_key"])
        t = Label.__table__
        stmt = self._insert(t).on_conflict_do_nothing(index_elements=["idempotency_key"]).returning(t.c.comparison_id)
        inserted = [cid for (cid,) in self.s.execute(stmt, rows)]
        self.labels_added += len(inserted)
        self.duplicates += len(rows) - len(inserted)
        counts = Counter(inserted)
        if counts:
            c = Comparison.__table__
            self.s.execute(
                update(c).where(c.c.id == bindparam("cid")).values(label_count=c.c.label_count + bindparam("n")),
                [{"cid": cid, "n": n} for cid, n in sorted(counts.items())],
            )

    def _rankings(self, recs: Sequence[Prepared], pids: dict[str, list[Any]], rids: dict[tuple[int, str], list[Any]],
                  ann: dict[str, int]) -> None:
        if not recs:
            return
        rows, items = [], {}
        for r in recs:
            ids = self._response_ids(r, pids, rids)
            if len(set(ids)) != len(ids):
                raise ValueError("a ranking lists each response once")
            items[r.key] = (ids, r.ranks if r.ranks is not None else list(range(1, len(ids) + 1)))
            rows.append({
                "prompt_id": pids[r.prompt_hash][0], "source": Source(r.source), "annotator_id": ann[r.annotator],
                "split": Split(r.split), "idempotency_key": r.key, "time_spent_ms": r.time_spent_ms, "origin": r.origin,
                "extra": r.extra, "created_at": utcnow(),
            })
        rows.sort(key=lambda row: row["idempotency_key"])
        t = Ranking.__table__
        stmt = self._insert(t).on_conflict_do_nothing(index_elements=["idempotency_key"]).returning(t.c.id, t.c.idempotency_key)
        created = {k: i for i, k in self.s.execute(stmt, rows)}
        self.rankings_added += len(created)
        self.duplicates += len(rows) - len(created)
        item_rows = [
            {"ranking_id": created[r.key], "response_id": rid, "position": pos, "rank": int(k)}
            for r in recs if r.key in created
            for pos, (rid, k) in enumerate(zip(*items[r.key]))
        ]
        if item_rows:
            self.s.execute(RankingItem.__table__.insert(), item_rows)
