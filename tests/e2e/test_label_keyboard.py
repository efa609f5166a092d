"""The Label page in a real browser at 1366x768, keyboard only: with a 20,000-character response (a code block with
long lines, earlier turns) the verdict bar stays inside the window while the response scrolls in its own pane and its
code scrolls sideways inside it; strength and verdict by key; stepping back through my labels and changing one (a new
label supersedes the old); flag by key; undo by key. Larger and narrow windows keep the bar in view too."""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from db.labeling import QueuePolicy, save_queue_policy
from db.models import Label, Outcome, ReviewFlag
from db.session import Database
from db.store import add_label, get_or_create_comparison, get_or_create_prompt, get_or_create_response
from tests.app.conftest import invite, seed_small
from tests.e2e.conftest import app_env, served_app, shot, wait_idle

VIEWPORT = {"width": 1366, "height": 768}
PAIR = re.compile(r"^Pair #(\d+)")
LONG_PROMPT = "Explain the whole standard library, with code."
CODE_LINE = "result = transform(" + ", ".join(f"argument_{i}" for i in range(60)) + ")"


def _long_text() -> str:
    parts = ["Here is everything, section by section."]
    i = 0
    while sum(map(len, parts)) < 20_500:
        parts.append(f"Section {i}: " + "the module does one thing and does it well; " * 12)
        if i % 5 == 0:
            parts.append(f"```python\n{CODE_LINE}\n```")
        i += 1
    text = "\n\n".join(parts)
    return text[:20_000 - 10] + "\n\nThe end."


def _seed(home: Path) -> tuple[str, int]:
    db = Database(f"sqlite:///{home / 'rmstudio.db'}")
    try:
        small = seed_small(db)
        with db.write() as s:
            for c in small.comparison_ids:  # one label each: the long pair, with none, comes first
                add_label(s, comparison_id=c, outcome="a", source="crowd", annotator="earlier",
                          idempotency_key=f"earlier-{c}")
            p = get_or_create_prompt(s, LONG_PROMPT, category="long", history=[
                {"role": "user", "content": "I need a long answer."}, {"role": "assistant", "content": "Sure."}])
            long_text = _long_text()
            assert len(long_text) == 20_000
            cid = get_or_create_comparison(s, get_or_create_response(s, p, long_text),
                                           get_or_create_response(s, p, "It is big.")).comparison.id
            save_queue_policy(s, QueuePolicy(target_overlap=2, agreement_share=0.0))
    finally:
        db.dispose()
    return invite("kai", "crowd"), cid


def _pair(page: Any) -> int:
    for el in page.locator('[data-testid="stCaptionContainer"]').all():
        m = PAIR.match(el.inner_text().strip())
        if m:
            return int(m.group(1))
    raise AssertionError("no pair on screen")


def _press(page: Any, key: str) -> None:
    """A key with no widget focused, after the app is idle (a labeler's pace), then wait for its rerun."""
    wait_idle(page)
    page.evaluate("document.activeElement && document.activeElement.blur()")
    page.keyboard.press(key)
    page.wait_for_timeout(150)
    wait_idle(page)


def _until(cond: Any, what: str, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if cond():
                return
        except Exception:  # noqa: BLE001 - elements are being replaced
            pass
        time.sleep(0.1)
    raise AssertionError(f"{what} within {timeout} s")


def _bar_in_view(page: Any) -> None:
    """Every button of the verdict bar, and the key legend, lie inside the window."""
    height = page.viewport_size["height"]
    bar = page.locator(".st-key-lbl_bar")
    buttons = bar.locator("button:visible")
    assert buttons.count() >= 4
    for el in [*buttons.all(), bar.get_by_text(re.compile(r"^Keys: "))]:
        box = el.bounding_box()
        assert box is not None and 0 <= box["y"] and box["y"] + box["height"] <= height, \
            f"{el.inner_text()!r} at {box} is outside the {height} px window"


def _labels(url: str) -> list[Label]:
    db = Database(url)
    try:
        with db.read() as s:
            out = list(s.scalars(select(Label).order_by(Label.id)))
            s.expunge_all()
            return out
    finally:
        db.dispose()


@pytest.mark.timeout(240)
def test_keyboard_labeling_with_a_20000_character_response(browser: Any, home: Path) -> None:
    token, long_cid = _seed(home)
    env = app_env(home)
    with served_app(browser, home, env) as (ctx, url):
        page = ctx.new_page()
        page.set_viewport_size(VIEWPORT)
        page.goto(f"{url}/?invite={token}")
        page.get_by_role("button", name="A better").wait_for(timeout=60_000)
        assert _pair(page) == long_cid
        # The long response scrolls in its own pane, its code sideways inside it; the bar stays in the window.
        _bar_in_view(page)
        pane = page.locator(".st-key-lbl_pane_a, .st-key-lbl_pane_b").filter(has_text="Here is everything")
        dims = pane.evaluate("e => [e.scrollHeight, e.clientHeight, e.getBoundingClientRect().right, innerWidth]")
        assert dims[0] > 5 * dims[1] and dims[2] <= dims[3], dims
        code = pane.locator("pre").first
        assert code.evaluate("e => e.scrollWidth > e.clientWidth && getComputedStyle(e).overflowX !== 'visible'")
        page.get_by_text("Earlier turns (2)").wait_for()  # the history folded above the prompt
        shot(page, "label-long-1366")

        # Strength and verdict by key: W (clearly), 1 (A better).
        _press(page, "w")
        _press(page, "1")
        _until(lambda: _pair(page) != long_cid, "key 1 did not show the next pair")
        [lab] = [x for x in _labels(env["RMSTUDIO_DB"]) if x.origin == "app"]
        assert (lab.comparison_id, lab.strength, lab.outcome) == (long_cid, 2, Outcome(lab.left.value))
        second = _pair(page)
        _press(page, "2")
        _until(lambda: _pair(page) != second, "key 2 did not show the next pair")
        at_queue = _pair(page)

        # Step back (B, B), forward (N) to the long pair's label and change it by key (3: tie).
        _press(page, "b")
        page.get_by_text("My label 1 of the last 2").wait_for(timeout=10_000)
        assert _pair(page) == second
        _press(page, "b")
        page.get_by_text("My label 2 of the last 2").wait_for(timeout=10_000)
        assert _pair(page) == long_cid
        _bar_in_view(page)
        _press(page, "n")
        page.get_by_text("My label 1 of the last 2").wait_for(timeout=10_000)
        _press(page, "b")
        _press(page, "3")
        page.get_by_text(re.compile(r"Tie \(changed\)")).first.wait_for(timeout=10_000)
        labs = [x for x in _labels(env["RMSTUDIO_DB"]) if x.origin == "app"]
        old = next(x for x in labs if x.id == lab.id)
        new = next(x for x in labs if x.id == old.superseded_by_id)
        assert (new.comparison_id, new.outcome, new.superseded_by_id) == (long_cid, Outcome.tie, None)
        shot(page, "label-changed")
        _press(page, "Escape")
        _until(lambda: _pair(page) == at_queue, "Esc did not go back to the queue")

        # Flag by key: F, a comment, Tab out of it, 2 (offensive).
        _press(page, "f")
        box = page.get_by_placeholder("Comment (optional)")
        box.fill("rude words")
        page.keyboard.press("Tab")
        wait_idle(page)
        page.keyboard.press("2")
        _until(lambda: _pair(page) != at_queue, "the flag did not move on")
        db = Database(env["RMSTUDIO_DB"])
        try:
            with db.read() as s:
                [flag] = s.scalars(select(ReviewFlag)).all()
                assert (flag.comparison_id, flag.reason.value, flag.comment) == (at_queue, "offensive", "rude words")
        finally:
            db.dispose()

        # Undo by key: my last label (pair `second`) is deleted and its pair shown again.
        _press(page, "u")
        _until(lambda: _pair(page) == second, "U did not bring the pair back")
        mine = [x.comparison_id for x in _labels(env["RMSTUDIO_DB"]) if x.origin == "app" and x.superseded_by_id is None]
        assert mine == [long_cid]

        # Larger and narrow windows: the bar stays in view; narrow ones stack the panes.
        page.set_viewport_size({"width": 1920, "height": 1080})
        page.wait_for_timeout(300)
        _bar_in_view(page)
        page.set_viewport_size({"width": 600, "height": 900})
        page.wait_for_timeout(300)
        _bar_in_view(page)
        a, b = (page.locator(f".st-key-lbl_pane_{s}").bounding_box() for s in "ab")
        assert b["y"] >= a["y"] + a["height"] - 1, "narrow window: the panes are not stacked"
        assert page.locator('[data-testid="stException"]').count() == 0
