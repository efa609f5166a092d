"""Fixtures for the app tests: a small real SQLite database with prompts, responses and comparisons.

``seed_small(db)`` is importable (``from tests.app.conftest import seed_small``) by unit tests and benches too.
The data covers what the pages must render: a multi-turn prompt, Markdown with a code block, responses
carrying HTML/JS injection attempts, and a prompt with four responses for ranking mode.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from db.session import Database
from db.store import get_or_create_comparison, get_or_create_prompt, get_or_create_response

REPO = Path(__file__).resolve().parents[2]
MAIN = str(REPO / "app" / "main.py")
PAGES = REPO / "app" / "views"

XSS_SCRIPT = "<script>window.__pwned = 1</script>Totally safe answer"
XSS_IMG = '<img src=x onerror="window.__pwned=2"> look at this'
XSS_LINK = "[click me](javascript:alert(1))"

PAIRS: list[tuple[str, list[dict[str, str]] | None, str, str, str]] = [
    ("What is the capital of France?", None, "Paris.", "Lyon, I think.", "geography"),
    ("Write a Python function that adds two numbers.", None,
     "```python\ndef add(a, b):\n    return a + b\n```", "Use `a + b`.", "code"),
    ("And what about Germany?", [{"role": "user", "content": "What is the capital of France?"},
                                 {"role": "assistant", "content": "Paris."}], "Berlin.", "Munich.", "geography"),
    ("Is this page safe?", None, XSS_SCRIPT, XSS_IMG, "security"),
    ("Give me a link.", None, XSS_LINK, "No links today.", "security"),
    ("How do I boil an egg?", None, "Boil water, add the egg, wait 9 minutes.", "Microwave it.", "cooking"),
]
RANKING_PROMPT = "Name a primary colour."
RANKING_RESPONSES = ["Red.", "Blue is one.", "Yellow, in the RYB model.", "Green (in RGB)."]


@dataclass(frozen=True)
class Seeded:
    """Ids of what :func:`seed_small` stored."""

    comparison_ids: tuple[int, ...]
    ranking_prompt_id: int
    xss_comparison_ids: tuple[int, ...]


def seed_small(db: Database) -> Seeded:
    """Store the small fixture dataset (six pairs, one four-response prompt); returns their ids."""
    cids: list[int] = []
    xss: list[int] = []
    with db.write() as s:
        for text, history, r1, r2, cat in PAIRS:
            p = get_or_create_prompt(s, text, history=history, category=cat)
            a = get_or_create_response(s, p, r1, model="m1")
            b = get_or_create_response(s, p, r2, model="m2")
            cid = get_or_create_comparison(s, a, b).comparison.id
            cids.append(cid)
            if cat == "security":
                xss.append(cid)
        p = get_or_create_prompt(s, RANKING_PROMPT, category="colours")
        for i, t in enumerate(RANKING_RESPONSES):
            get_or_create_response(s, p, t, model=f"m{i}")
        rp = p.id
    return Seeded(tuple(cids), rp, tuple(xss))


def invite(name: str, tier: str = "crowd") -> str:
    """A new personal link token of ``name`` (added with ``tier`` when new) in the database ``RMSTUDIO_DB`` names,
    as the Team tab makes it: open the Label page with ``?invite=<token>`` to label as them."""
    from sqlalchemy import select

    from db import annotators
    from db.config import Settings
    from db.models import Annotator

    db = Database(Settings.from_env().db_url)
    try:
        with db.write() as s:
            if s.scalar(select(Annotator.id).where(Annotator.name == name)) is None:
                annotators.add_annotator(s, name, tier, by="researcher")
            return annotators.invite(s, name, by="researcher")
    finally:
        db.dispose()


@pytest.fixture
def seeded(sqlite_db: Database) -> Seeded:
    """The small dataset in the test's SQLite database (``RMSTUDIO_DB`` points at it)."""
    return seed_small(sqlite_db)


@pytest.fixture
def app_env(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """No researcher token and a clean Streamlit resource cache, so each test opens its own database."""
    monkeypatch.delenv("RMSTUDIO_RESEARCHER_TOKEN", raising=False)
    import streamlit as st

    st.cache_resource.clear()
    yield home
    st.cache_resource.clear()


def plotly_values(v: object) -> list:
    """A plotly data array from a chart's JSON spec: plain lists stay, numpy arrays come encoded as
    ``{"dtype", "bdata"}``."""
    if isinstance(v, dict) and "bdata" in v:
        import base64

        import numpy as np

        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=v["dtype"]).tolist()
    return list(v)  # type: ignore[call-overload]
