"""The researchers' pages in a real browser at 1366x768: the Train page follows a job from queued to running to
done, and shows the new version, without a reload; no page asks anything of a host other than the app's server
(the app works offline)."""
from __future__ import annotations

import re
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from db.config import Settings
from db.policy import set_policy
from db.session import Database
from db.store import add_label
from rm_engine.config import TrainConfig
from rm_engine.training import train_and_publish
from tests.app.conftest import seed_small
from tests.e2e.conftest import app_env, shot, streamlit_server, wait_idle, worker

VIEWPORT = {"width": 1366, "height": 768}
PAGES = {"": "Label", "train": "Train", "dashboard": "Dashboard", "inspect": "Inspect", "data": "Data"}
PAUSE_S = 6  # the worker holds a finished training this long before publishing it: "running" stays in view


def _seed(home: Path) -> Path:
    """The small dataset, every pair labelled ('a' wins), no automatic retrain; returns a tiny backbone."""
    from tests.tiny_models import build_tiny_encoder

    tiny = build_tiny_encoder(home / "backbones" / "tiny-encoder", hidden=32, layers=1)
    db = Database(f"sqlite:///{home / 'rmstudio.db'}")
    try:
        seeded = seed_small(db)
        with db.write() as s:
            for cid in seeded.comparison_ids:
                add_label(s, comparison_id=cid, outcome="a", source="crowd", annotator="ann",
                          idempotency_key=f"l-{cid}")
            set_policy(s, enabled=False, rescore=False)
    finally:
        db.dispose()
    return tiny


def _card(page, status: str):
    return page.get_by_text(re.compile(rf"^#1 train: {status}"))


@pytest.mark.timeout(240)
def test_train_page_follows_a_job_from_queued_to_done_without_reload(browser, home: Path) -> None:
    tiny = _seed(home)
    env = app_env(home)
    marker = home / "paused.txt"
    worker_env = {**env, "RMSTUDIO_FAULT_PAUSE": "publish:files-moved", "RMSTUDIO_FAULT_SECONDS": str(PAUSE_S),
                  "RMSTUDIO_FAULT_MARKER": str(marker)}
    work = None
    server, url = streamlit_server(home, env)
    ctx = browser.new_context(viewport=VIEWPORT)
    page = ctx.new_page()
    try:
        page.goto(f"{url}/train")
        page.get_by_role("heading", name="Train").first.wait_for(timeout=60_000)
        wait_idle(page, 30)
        page.evaluate("window.__same_page = 42")
        page.get_by_label("Backbone", exact=True).fill(str(tiny))
        page.get_by_role("button", name="Enqueue training").click()
        # Queued, in view right after the click, and the page says why it waits.
        card = _card(page, "queued")
        card.wait_for(timeout=30_000)
        assert _in_viewport(page, card), "the queued job is off-screen after enqueueing"
        page.get_by_text("No worker is running, so queued jobs wait").wait_for(timeout=10_000)
        shot(page, "train-queued")
        work = worker(home, worker_env)
        # Running: its progress and loss curve while it runs (the worker holds it before publishing).
        _card(page, "running").wait_for(timeout=120_000)
        _wait_file(marker, 60, work)
        page.locator('[data-testid="stProgress"]').first.wait_for(timeout=10_000)
        page.locator('[data-testid="stPlotlyChart"]').filter(has_text="Training loss").first.wait_for(
            timeout=10_000)
        assert page.get_by_text(re.compile(r", running job #1\)\.$")).count() == 1  # the worker line
        shot(page, "train-running")
        # Done: the outcome names the new version, which the versions section lists.
        page.get_by_text(re.compile(r"^Last finished: #1 train succeeded .*: version 1\.$")).wait_for(
            timeout=60_000)
        assert _card(page, "running").count() == 0
        page.get_by_text("No job is queued or running.").wait_for(timeout=5_000)
        from playwright.sync_api import expect  # imported here: without playwright the module still collects (skip)

        table = page.locator('[data-testid="stDataFrame"]').last  # the versions (its accessible copy of the cells)
        expect(table.locator('[role="columnheader"]').first).to_have_text("version", timeout=15_000)
        expect(table.locator('[role="gridcell"]').first).to_have_text("1")
        table.scroll_into_view_if_needed()
        shot(page, "train-done")
        # The export and delete choices were drawn before the version existed: the page says so and redraws them.
        page.get_by_text("Since this page was drawn: new v1 (export and delete below do not know yet).").wait_for(
            timeout=10_000)
        page.get_by_role("button", name="Update the choices").click()
        page.get_by_role("button", name="Download .zip").wait_for(timeout=30_000)
        assert page.evaluate("window.__same_page") == 42, "the page was reloaded"
    except BaseException:
        shot(page, "train-live-failure")
        print("streamlit log:", server.log.read_text()[-3000:])
        if work is not None:
            print("worker log:", work.log.read_text()[-3000:])
        raise
    finally:
        ctx.close()
        server.stop()
        if work is not None:
            work.stop()


def _in_viewport(page, locator) -> bool:
    box = locator.bounding_box()
    return box is not None and 0 <= box["y"] and box["y"] + box["height"] <= page.viewport_size["height"]


def _wait_file(path: Path, timeout: float, proc) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists():
            return
        if proc.proc.poll() is not None:
            raise AssertionError(f"the worker exited:\n{proc.log.read_text()[-3000:]}")
        time.sleep(0.1)
    raise AssertionError(f"the worker never reached the publishing step:\n{proc.log.read_text()[-3000:]}")


@pytest.mark.timeout(240)
def test_no_page_requests_anything_outside_the_server(browser, home: Path) -> None:
    """Every page loaded with data (labels, a version) asks only the app's own server: no fonts, icons or scripts
    from elsewhere. Requests elsewhere are recorded, then refused so that none can succeed."""
    tiny = _seed(home)
    env = app_env(home)
    db = Database(env["RMSTUDIO_DB"])
    try:
        cfg = TrainConfig(backbone=str(tiny), epochs=5, device="cpu", max_length=64, val_fraction=0.0)
        train_and_publish(db, Settings.from_env(), cfg)  # the home fixture set RMSTUDIO_HOME/DB
    finally:
        db.dispose()
    server, url = streamlit_server(home, env)
    ctx = browser.new_context(viewport=VIEWPORT)
    origin = urlsplit(url).netloc
    seen: list[str] = []
    ctx.on("request", lambda r: seen.append(r.url))
    ctx.route(lambda u: urlsplit(u).scheme in ("http", "https", "ws", "wss") and urlsplit(u).netloc != origin,
              lambda route: route.abort())
    try:
        for path, title in PAGES.items():
            page = ctx.new_page()
            page.goto(f"{url}/{path}")
            page.get_by_role("heading", name=title).first.wait_for(timeout=60_000)
            wait_idle(page, 60)
            page.wait_for_timeout(1500)  # late requests: fonts, icons, charts
            icon = page.evaluate("document.querySelector(\"link[rel='shortcut icon']\").href")
            assert urlsplit(icon).netloc == origin, f"{title}: the favicon comes from {icon}"
            shot(page, f"offline-{title.lower()}")
            page.close()
        outside = sorted({u for u in seen if urlsplit(u).scheme in ("http", "https", "ws", "wss")
                          and urlsplit(u).netloc != origin})
        assert outside == [], f"requests outside the server: {outside}"
        assert any("/_stcore/" in u or "/static/" in u for u in seen)  # the recording works
        with urllib.request.urlopen(icon, timeout=10) as r:  # the favicon is the packaged image
            assert r.headers["Content-Type"] == "image/png"
            assert r.read() == (Path(__file__).resolve().parents[2] / "app" / "assets" / "favicon.png").read_bytes()
    except BaseException:
        print("streamlit log:", server.log.read_text()[-3000:])
        raise
    finally:
        ctx.close()
        server.stop()
