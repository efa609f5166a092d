"""Cached scores of a model version: bulk insert, update in place, chunking, on SQLite and PostgreSQL."""
from __future__ import annotations

from sqlalchemy import func, insert, select

from db import versions
from db.models import Prompt, Response, ResponseScore, utcnow


def _responses(db, n: int) -> list[int]:
    with db.write() as s:
        s.execute(insert(Prompt.__table__), [{"content_hash": "p", "text": "p", "created_at": utcnow()}])
        pid = s.scalar(select(Prompt.id))
        s.execute(insert(Response.__table__), [{"prompt_id": pid, "content_hash": f"r{i}", "text": f"r{i}", "created_at": utcnow()} for i in range(n)])
    with db.read() as s:
        return list(s.scalars(select(Response.id).order_by(Response.id)))


def test_store_response_scores_insert_update_chunks(any_db, monkeypatch):
    monkeypatch.setattr(versions, "SCORE_CHUNK", 7)  # several executemany chunks
    ids = _responses(any_db, 30)
    with any_db.write() as s:
        v1 = versions.insert_version(s, mode="head", backbone="b", path="models/v1", config={}).id
        v2 = versions.insert_version(s, mode="head", backbone="b", path="models/v2", config={}).id
        assert versions.store_response_scores(s, v1, {}) == 0
        assert versions.store_response_scores(s, v1, {r: (i / 10, None if i % 3 else i / 100) for i, r in enumerate(ids)}) == 30
        assert versions.store_response_scores(s, v2, {ids[0]: (5.0, 0.5)}) == 1
    with any_db.write() as s:  # rescoring part of a version updates in place
        assert versions.store_response_scores(s, v1, {r: (-1.0, 0.25) for r in ids[:10]}) == 10
    with any_db.read() as s:
        got = versions.get_scores(s, v1)
        assert len(got) == 30 and versions.count_scores(s, v1) == 30 and versions.count_scores(s, v2) == 1
        assert all(got[r] == (-1.0, 0.25) for r in ids[:10])
        assert all(got[r] == (i / 10, None if i % 3 else i / 100) for i, r in enumerate(ids) if i >= 10)
        assert versions.get_scores(s, v2) == {ids[0]: (5.0, 0.5)}
        assert s.scalar(select(func.count()).select_from(ResponseScore)) == 31
