"""The Train page's form checks a run as the worker will before queueing it: a backbone outside the allowed model
folders (or a URL) is named at once and nothing is queued; the same checks as the command line's."""
from __future__ import annotations

import pytest
from sqlalchemy import func, select
from streamlit.testing.v1 import AppTest

from app.train_actions import FORM_KEYS
from db.models import Job
from db.session import Database
from tests.app.conftest import PAGES, Seeded


def _jobs(db: Database) -> int:
    with db.read() as s:
        return s.scalar(select(func.count()).select_from(Job)) or 0


@pytest.mark.parametrize("button", ["Enqueue training", "Cross-validate these settings"])
@pytest.mark.parametrize("backbone", ["/etc", "../../x", "https://example.com/model"])
def test_a_backbone_the_worker_would_refuse_is_refused_by_the_form(app_env, sqlite_db: Database, seeded: Seeded,
                                                                   backbone: str, button: str) -> None:
    at = AppTest.from_file(str(PAGES / "train.py"), default_timeout=30).run()
    at.text_input(key=FORM_KEYS["backbone"]).set_value(backbone)
    next(b for b in at.button if b.label == button).click().run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert any(e.startswith("Invalid training settings: backbone") for e in errors), errors
    assert _jobs(sqlite_db) == 0
    at.text_input(key=FORM_KEYS["backbone"]).set_value("minilm")  # the default is queued as before
    next(b for b in at.button if b.label == button).click().run()
    assert _jobs(sqlite_db) == 1
