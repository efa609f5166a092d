"""Two machines on one PostgreSQL database, in a real browser: a version trained with home A, the app served from
home B (which never saw its files) scores with it on the Inspect page; the files come from the database copy."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from db.config import Settings
from db.session import Database
from db.store import add_label
from rm_engine.config import TrainConfig
from rm_engine.training import train_and_publish
from tests.app.conftest import seed_small
from tests.e2e.conftest import app_env, served_app, shot, wait_idle


@pytest.mark.timeout(240)
def test_app_on_another_machine_scores_with_a_version_trained_elsewhere(browser, home: Path, pg_url: str,
                                                                         tmp_path: Path) -> None:
    from tests.tiny_models import build_tiny_encoder

    tiny = build_tiny_encoder(tmp_path / "backbones" / "tiny", hidden=32, layers=1)
    db = Database(pg_url)
    try:
        seeded = seed_small(db)
        with db.write() as s:
            for cid in seeded.comparison_ids:
                add_label(s, comparison_id=cid, outcome="a", source="crowd", annotator="ann",
                          idempotency_key=f"l-{cid}")
        cfg = TrainConfig(backbone=str(tiny), epochs=20, device="cpu", max_length=64, val_fraction=0.0)
        settings = dataclasses.replace(Settings.from_env(), model_dirs=(tiny.parent,))
        vid = train_and_publish(db, settings, cfg).id  # machine A: home, files, database copy (PostgreSQL: on)
    finally:
        db.dispose()

    b = tmp_path / "machine-b"
    b.mkdir()
    env = {**app_env(b), "RMSTUDIO_DB": pg_url, "RMSTUDIO_MODEL_DIRS": str(tiny.parent)}
    with served_app(browser, b, env) as (ctx, url):
        page = ctx.new_page()
        page.goto(f"{url}/inspect")
        page.get_by_role("heading", name="Inspect").first.wait_for(timeout=60_000)
        wait_idle(page, 60)
        for label, text in (("Prompt", "What is the capital of France?"), ("Response 1", "Paris."),
                            ("Response 2", "Lyon, I think.")):
            box = page.get_by_label(label, exact=True)
            box.fill(text)
            box.press("Control+Enter")
            wait_idle(page, 30)
        page.get_by_role("button", name="Score").click()
        page.get_by_role("heading", name=f"Version {vid}").wait_for(timeout=60_000)
        # the score table, or whatever the page says instead
        page.locator('[data-testid="stTable"], [data-testid="stAlert"], [data-testid="stException"]').first \
            .wait_for(timeout=90_000)
        wait_idle(page, 60)
        shot(page, "inspect-second-machine")
        alerts = page.locator('[data-testid="stAlert"], [data-testid="stException"]').all_inner_texts()
        assert alerts == [] and page.locator('[data-testid="stTable"]').count() >= 1
        assert [p.name[:2] for p in (b / "models").iterdir()] == ["v-"]  # restored on machine B
