"""End to end in a real browser: identity, labeling by clicks and keyboard shortcuts, untrusted text shown as
text, the automatic retrain reached, and the new version's accuracy appearing on an open dashboard without a
reload. Screenshots of every page land in test-artifacts/e2e/."""
from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from db.labeling import QueuePolicy, save_queue_policy
from db.models import Label, Source
from db.policy import set_policy
from db.session import Database
from db.store import get_or_create_comparison, get_or_create_prompt, get_or_create_response
from tests.app.conftest import XSS_SCRIPT, seed_small
from tests.e2e.conftest import app_env, shot, streamlit_server, wait_idle, worker

EXTRA = [(f"Is {n} an even number?", f"{'Yes' if n % 2 == 0 else 'No'}, {n} is {'even' if n % 2 == 0 else 'odd'}.",
          f"{'No' if n % 2 == 0 else 'Yes'}.") for n in range(10, 16)]
N_LABELS = 8  # 4 by clicks, 4 by keyboard shortcuts
PAIR = re.compile(r"Pair #(\d+)")


def _seed(home: Path) -> None:
    from tests.tiny_models import build_tiny_encoder

    tiny = build_tiny_encoder(home / "backbones" / "tiny-encoder")
    db = Database(f"sqlite:///{home / 'rmstudio.db'}")
    seed_small(db)
    with db.write() as s:
        for text, good, bad in EXTRA:
            p = get_or_create_prompt(s, text, category="maths")
            get_or_create_comparison(s, get_or_create_response(s, p, good), get_or_create_response(s, p, bad))
        save_queue_policy(s, QueuePolicy(target_overlap=1, agreement_share=0.0))
        set_policy(s, enabled=True, mode="head", min_new_labels=N_LABELS - 2, min_interval_s=0.0,
                   train_params={"backbone": str(tiny)}, rescore=False)
    db.dispose()


def _pair_id(page) -> int:
    text = page.get_by_text(re.compile(r"^Pair #\d+")).first.inner_text(timeout=20_000)
    return int(PAIR.search(text).group(1))


def _wait_new_pair(page, old: int, timeout: float = 20.0) -> int:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            new = _pair_id(page)
            if new != old:
                return new
        except Exception:  # noqa: BLE001 - the element is being replaced
            pass
        time.sleep(0.1)
    raise AssertionError(f"the next pair did not replace pair #{old} within {timeout} s")


def _assert_no_injection(page) -> None:
    assert page.evaluate("window.__pwned") is None, "a response's script ran"
    assert page.locator("img[src='x']").count() == 0, "a response's <img onerror> was rendered as HTML"
    assert page.locator("a[href^='javascript']").count() == 0, "a javascript: link was rendered"


@pytest.mark.timeout(240)
def test_label_retrain_dashboard(browser, home: Path) -> None:
    _seed(home)
    env = app_env(home)
    server, url = streamlit_server(home, env)
    work = worker(home, env)
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        page = ctx.new_page()
        page.goto(url)
        # Identity first.
        page.get_by_label("Your name").fill("e2e-alice")
        page.get_by_text("expert", exact=True).click()
        page.get_by_role("button", name="Start labeling").click()
        page.get_by_role("button", name="A better").wait_for(timeout=30_000)
        assert "annotator=" not in page.url  # kept on record, not in the address where anyone could change it
        shot(page, "label")
        # A researcher keeps the dashboard open in another tab while labels arrive.
        dash = ctx.new_page()
        dash.goto(url + "/dashboard")
        dash.get_by_role("heading", name="Dashboard").first.wait_for(timeout=60_000)
        dash.wait_for_timeout(1000)
        dash.evaluate("window.__still_same_page = 42")
        assert dash.get_by_text(re.compile(r"Validation accuracy \(v\d+\)")).count() == 0
        shot(dash, "dashboard-before")

        seen_script = False
        pid = _pair_id(page)
        wait_idle(page)
        for i in range(N_LABELS):
            _assert_no_injection(page)
            if page.get_by_text(XSS_SCRIPT, exact=False).count():
                seen_script = True
            if i % 2 == 0:
                page.get_by_role("button", name=["A better", "B better"][i % 4 // 2]).click()
            else:
                page.evaluate("document.activeElement && document.activeElement.blur()")  # focus out of any widget
                page.keyboard.press(["1", "2"][i % 4 // 2])
            pid = _wait_new_pair(page, pid)
            wait_idle(page)
        # Skip (key 5) through the rest of the queue: every pair, the hostile ones included, gets shown.
        while not page.get_by_text("Nothing left for you to label").count():
            _assert_no_injection(page)
            seen_script = seen_script or page.get_by_text(XSS_SCRIPT, exact=False).count() > 0
            page.evaluate("document.activeElement && document.activeElement.blur()")
            page.keyboard.press("5")
            try:
                pid = _wait_new_pair(page, pid, timeout=5)
                wait_idle(page)
            except AssertionError:
                page.get_by_text("Nothing left for you to label").wait_for(timeout=10_000)
        assert seen_script, "the response with a <script> tag was never shown as text"
        page.reload()  # identity survives a reload (the researcher's own annotator, on record)
        page.get_by_role("button", name="A better").wait_for(timeout=30_000)
        assert page.get_by_text("Labeling as").first.inner_text().startswith("Labeling as e2e-alice")

        db = Database(env["RMSTUDIO_DB"])
        with db.read() as s:
            labels = list(s.scalars(select(Label)))
            assert len(labels) == N_LABELS, "one label per click or key press, no more, no fewer"
            assert {(lab.annotator.name, lab.source) for lab in labels} == {("e2e-alice", Source.expert)}
            assert all(lab.left is not None and lab.time_spent_ms is not None for lab in labels)
        db.dispose()

        # The worker retrains by itself; the open dashboard shows the new accuracy without a reload.
        acc = dash.get_by_text(re.compile(r"Validation accuracy \(v\d+\)"))
        try:
            acc.first.wait_for(timeout=150_000)
        except Exception as exc:
            raise AssertionError(f"no accuracy on the dashboard; worker log:\n{work.log.read_text()[-3000:]}") from exc
        assert dash.evaluate("window.__still_same_page") == 42, "the dashboard page was reloaded"
        shot(dash, "dashboard")
        for name in ("train", "inspect", "data"):
            p = ctx.new_page()
            p.goto(f"{url}/{name}")
            p.get_by_role("heading", name=name.capitalize()).first.wait_for(timeout=60_000)
            p.wait_for_timeout(500)
            shot(p, name)
            p.close()
    except BaseException:
        for i, pg in enumerate(ctx.pages):
            try:
                shot(pg, f"failure-{i}")
            except Exception:  # noqa: BLE001
                pass
        print("streamlit log:", server.log.read_text()[-2000:])
        raise
    finally:
        ctx.close()
        work.stop()
        server.stop()
