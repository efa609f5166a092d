"""Prompts the reward server scored (``db/served.py``) on SQLite and PostgreSQL: counted per distinct text, newest
first, summarised and cleared; concurrent servers recording the same prompts lose no count."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from db.served import MAX_PROMPT_CHARS, clear_served, record_served, served_prompts, served_summary
from db.session import Database
from tests.concurrency import run_in_threads


def test_record_count_order_summary_clear(any_db: Database) -> None:
    t0 = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)
    with any_db.write() as s:
        assert record_served(s, ["how do I bake bread?", "how do I bake bread?", "  ", "tie a tie"], now=t0) == 2
    with any_db.write() as s:
        assert record_served(s, ["tie a tie", "x" * (MAX_PROMPT_CHARS + 10)], now=t0 + timedelta(minutes=5)) == 2
    with any_db.read() as s:
        assert served_prompts(s)[0] in ("tie a tie", "x" * MAX_PROMPT_CHARS)  # the newest two, then the older one
        assert served_prompts(s)[-1] == "how do I bake bread?" and len(served_prompts(s, limit=2)) == 2
        summary = served_summary(s)
    assert summary["prompts"] == 3 and summary["responses"] == 5
    assert summary["last_seen"].startswith("2026-11-27")
    with any_db.write() as s:
        assert clear_served(s) == 3
    with any_db.read() as s:
        assert served_summary(s) == {"prompts": 0, "responses": 0, "last_seen": None}


def test_concurrent_servers_lose_no_count(any_db: Database) -> None:
    prompts = [f"prompt {i}" for i in range(20)]

    def server(k: int) -> None:
        for _ in range(10):
            any_db.run_write(lambda s: record_served(s, prompts[k % 3:] + prompts[: k % 3]))

    assert run_in_threads(server, 6) == []
    with any_db.read() as s:
        assert served_summary(s) == {**served_summary(s), "prompts": 20, "responses": 20 * 6 * 10}
