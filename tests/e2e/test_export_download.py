"""The Train page's "Download .zip" in a real browser: the deferred export runs on the server, the browser saves a
zip holding the Hugging Face folder of the chosen version."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from db.config import Settings
from db.session import Database
from db.store import add_label
from rm_engine.config import TrainConfig
from rm_engine.training import train_and_publish
from tests.app.conftest import seed_small
from tests.e2e.conftest import app_env, served_app, shot


def _finetuned_version(home: Path, env: dict[str, str]) -> int:
    from tests.tiny_models import build_tiny_encoder

    tiny = build_tiny_encoder(home / "backbones" / "tiny-encoder", hidden=32, layers=1)
    db = Database(env["RMSTUDIO_DB"])
    seeded = seed_small(db)
    with db.write() as s:
        for cid in seeded.comparison_ids:
            add_label(s, comparison_id=cid, outcome="a", source="crowd", annotator="ann", idempotency_key=f"l-{cid}")
    cfg = TrainConfig(mode="finetune", backbone=str(tiny), epochs=1, device="cpu", max_length=64, val_fraction=0.0)
    try:
        return train_and_publish(db, Settings.from_env(), cfg).id  # the home fixture set RMSTUDIO_HOME/DB
    finally:
        db.dispose()


@pytest.mark.timeout(180)
def test_download_an_exported_version(browser, home: Path, tmp_path: Path) -> None:
    env = app_env(home)
    version = _finetuned_version(home, env)
    with served_app(browser, home, env) as (ctx, url):
        page = ctx.new_page()
        page.goto(f"{url}/train")
        button = page.get_by_role("button", name="Download .zip")
        button.wait_for(timeout=60_000)
        button.scroll_into_view_if_needed()
        shot(page, "train-export")
        with page.expect_download(timeout=60_000) as dl:
            button.click()
        saved = tmp_path / dl.value.suggested_filename
        dl.value.save_as(str(saved))
        assert saved.name == f"rmstudio-v{version}.zip"
        with zipfile.ZipFile(saved) as zf:
            names = set(zf.namelist())
            info = json.loads(zf.read(f"rmstudio-v{version}/rmstudio_reward.json"))
        assert {f"rmstudio-v{version}/{f}" for f in ("config.json", "model.safetensors", "README.md",
                                                      "tokenizer.json")} <= names
        assert info["version_id"] == version and info["input"]["format"] == "text-pair"
