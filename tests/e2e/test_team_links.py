"""Team set-up in a real browser: a researcher adds a crowd annotator on the Data page's Team tab and creates their
personal link; the labeler opens it with ``&source=expert&annotator=someone-else`` appended and labels with the
keyboard: the label is theirs, as crowd. Once revoked, the link labels nothing. A campaign link opened with a
Prolific ``PROLIFIC_PID`` creates a crowd annotator who labels as such."""
from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from db.labeling import QueuePolicy, save_queue_policy
from db.models import Annotator, Label, Source
from db.session import Database
from tests.app.conftest import seed_small
from tests.e2e.conftest import app_env, served_app, shot, wait_idle

PAIR = re.compile(r"Pair #(\d+)")


def _labels(url: str) -> list[tuple[str, Source]]:
    db = Database(url)
    try:
        with db.read() as s:
            return [(lab.annotator.name, lab.source) for lab in s.scalars(select(Label).order_by(Label.id))]
    finally:
        db.dispose()


def _pair_id(page) -> int:
    text = page.get_by_text(re.compile(r"^Pair #\d+")).first.inner_text(timeout=20_000)
    return int(PAIR.search(text).group(1))


def _press(page, key: str) -> None:
    """A keyboard shortcut with no widget focused, then wait for the next pair."""
    before = _pair_id(page)
    wait_idle(page)
    page.evaluate("document.activeElement && document.activeElement.blur()")
    page.keyboard.press(key)
    end = time.monotonic() + 20
    while time.monotonic() < end:
        try:
            if _pair_id(page) != before:
                wait_idle(page)
                return
        except Exception:  # noqa: BLE001 - the element is being replaced
            pass
        time.sleep(0.1)
    raise AssertionError(f"key {key} did not move past pair #{before}")


def _link(page) -> str:
    code = page.locator('[data-testid="stCode"] code').filter(has_text="://").last
    code.wait_for(timeout=20_000)
    return code.inner_text().strip()


@pytest.mark.timeout(240)
def test_invite_revoke_and_campaign_links(browser, home: Path) -> None:
    env = app_env(home)
    db = Database(env["RMSTUDIO_DB"])
    seed_small(db)
    with db.write() as s:
        save_queue_policy(s, QueuePolicy(target_overlap=3, agreement_share=0.0))
    db.dispose()
    with served_app(browser, home, env) as (ctx, url):
        admin = ctx.new_page()
        admin.goto(f"{url}/data")
        admin.get_by_role("tab", name="Team").click()
        admin.locator(".st-key-team_add_name input").fill("cara")
        admin.locator(".st-key-team_add_tier").get_by_text("crowd", exact=True).click()
        wait_idle(admin)
        admin.get_by_role("button", name="Add", exact=True).click()
        admin.get_by_text("Added cara as crowd").wait_for(timeout=20_000)
        wait_idle(admin)
        admin.get_by_role("button", name="Create personal link").click()
        link = _link(admin)
        assert link.startswith(f"{url}/?invite=")
        shot(admin, "team-invite")

        labeler = browser.new_context(viewport={"width": 1400, "height": 1000})
        try:
            page = labeler.new_page()
            page.goto(link + "&source=expert&annotator=someone-else")
            page.get_by_role("button", name="A better").wait_for(timeout=30_000)
            assert page.get_by_text("Labeling as").first.inner_text().startswith("Labeling as cara (crowd tier)")
            page.get_by_text("ignored").first.wait_for(timeout=5_000)
            _press(page, "1")
            _press(page, "2")
            assert _labels(env["RMSTUDIO_DB"]) == [("cara", Source.crowd)] * 2
            shot(page, "label-invite")

            wait_idle(admin)
            admin.get_by_role("button", name="Revoke link").click()
            admin.get_by_text("link is revoked").wait_for(timeout=20_000)
            page.evaluate("document.activeElement && document.activeElement.blur()")
            page.keyboard.press("1")  # the page still open: the key stores nothing
            page.get_by_text("revoked").first.wait_for(timeout=20_000)
            page.goto(link)
            page.get_by_text("revoked or never existed").wait_for(timeout=30_000)
            assert page.get_by_role("button", name="A better").count() == 0
            assert len(_labels(env["RMSTUDIO_DB"])) == 2

            wait_idle(admin)
            admin.locator(".st-key-team_campaign_name input").fill("wave")
            wait_idle(admin)
            admin.get_by_role("button", name="Open campaign link").click()
            camp = _link(admin)
            assert camp.startswith(f"{url}/?campaign=")
            worker = labeler.new_page()
            worker.goto(camp + "&PROLIFIC_PID=5f00aa11&STUDY_ID=s1&SESSION_ID=x9")
            worker.get_by_role("button", name="A better").wait_for(timeout=30_000)
            assert worker.get_by_text("Labeling as").first.inner_text().startswith("Labeling as wave:5f00aa11 (crowd")
            _press(worker, "3")
            shot(worker, "label-campaign")
        finally:
            labeler.close()
    db = Database(env["RMSTUDIO_DB"])
    try:
        with db.read() as s:
            made = s.scalar(select(Annotator).where(Annotator.name == "wave:5f00aa11"))
            assert made.default_source is Source.crowd and made.worker_id == "5f00aa11"
            assert s.scalar(select(Annotator.id).where(Annotator.name == "someone-else")) is None
    finally:
        db.dispose()
    assert _labels(env["RMSTUDIO_DB"]) == [("cara", Source.crowd)] * 2 + [("wave:5f00aa11", Source.crowd)]
