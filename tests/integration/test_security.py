"""Security: model files and paths, uploads, roles, and untrusted text.

* only safetensors weights are ever loaded: a pickle planted in a backbone folder or a version folder is never
  unpickled (its payload would create a marker file);
* backbone/model paths outside ``RMSTUDIO_HOME`` and ``RMSTUDIO_MODEL_DIRS`` are refused (symlinks and ``..``
  included), and nothing is fetched from the network;
* the app server refuses uploads over ``RMSTUDIO_MAX_UPLOAD_MB``;
* a labeler can undo only their own last label, through the Label page;
* untrusted annotator names are shown as text (response and prompt XSS on the Label page is covered by
  ``tests/app/test_label_page.py``; the research pages are covered here).
"""
from __future__ import annotations

import argparse
import pickle
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from db.config import Settings
from db.models import Label
from db.session import Database

# ------------------------------------------------------------------------------------------ model files


class _Payload:
    """Unpickling this object calls ``open(marker, "w")``: the file appearing means a pickle was loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (self.marker, "w"))


def plant_pickle(folder: Path, name: str, marker: Path) -> Path:
    """Write a malicious pickle as ``folder/name``."""
    p = folder / name
    p.write_bytes(pickle.dumps({"weight": _Payload(marker)}))
    return p


def test_backbone_paths_are_confined(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rm_engine.backbone import BackboneError, resolve_backbone

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "config.json").write_text("{}")
    settings = Settings.from_env()
    (home / "escape").symlink_to(outside, target_is_directory=True)
    for spec in (str(outside), str(home / ".." / "outside"), "escape", str(home / "escape"), "/etc",
                 "https://huggingface.co/bert-base-uncased", "hf://org/model"):
        with pytest.raises(BackboneError) as ei:
            resolve_backbone(spec, settings)
        msg = str(ei.value)
        assert "outside the allowed" in msg or "not URLs" in msg, (spec, msg)
    with pytest.raises(BackboneError, match="not a directory"):  # a hub id is a local name, never a download
        resolve_backbone("bert-base-uncased", settings)
    # The allow-list lets that folder in (and only when listed).
    monkeypatch.setenv("RMSTUDIO_MODEL_DIRS", str(tmp_path))
    assert resolve_backbone(str(outside), Settings.from_env()).path == outside.resolve()


def test_pickle_in_a_backbone_folder_is_never_loaded(home: Path, tmp_path: Path) -> None:
    """A backbone folder under RMSTUDIO_HOME whose weights are a pickle: both loaders refuse, nothing runs."""
    from rm_engine.backbone import resolve_backbone
    from rm_engine.head.features import FeatureExtractor
    from tests.tiny_models import build_tiny_encoder

    folder = build_tiny_encoder(home / "evil")
    for f in folder.glob("*.safetensors"):  # only a pickle is left as weights
        f.unlink()
    marker = tmp_path / "pwned"
    plant_pickle(folder, "pytorch_model.bin", marker)
    settings = Settings.from_env()
    ref = resolve_backbone(str(folder), settings)
    fx = FeatureExtractor(settings, ref, max_length=32)
    with pytest.raises(OSError, match="safetensors"):
        fx.model()
    assert not marker.exists()
    from rm_engine.backbone import load_tokenizer
    from rm_engine.finetune import model as finetune_model

    with pytest.raises(OSError, match="safetensors"):
        finetune_model.load_backbone_model(folder, load_tokenizer(ref), argparse.Namespace(grad_checkpointing=False, lora=False), decoder=False)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------ uploads


def test_app_server_refuses_uploads_over_the_cap(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``rmstudio serve`` hands ``RMSTUDIO_MAX_UPLOAD_MB`` to Streamlit, whose upload route rejects bigger bodies
    while streaming (HTTP 413) instead of holding them in memory."""
    from cli import job_cmds

    monkeypatch.setenv("RMSTUDIO_MAX_UPLOAD_MB", "3")
    started: list[list[str]] = []

    class _Exited:
        returncode = 0

        def poll(self) -> int:
            return 0

        def terminate(self) -> None:
            pass

        pid = -1

        def wait(self, timeout: float | None = None) -> int:
            return 0

    monkeypatch.setattr(job_cmds, "_spawn", lambda cmd: started.append(cmd) or _Exited())
    job_cmds.cmd_serve(argparse.Namespace(port=8599, address="127.0.0.1", no_worker=True, device="cpu", dev=False))
    (app_cmd,) = started
    assert app_cmd[app_cmd.index("--server.maxUploadSize") + 1] == "3"
    assert app_cmd[app_cmd.index("--server.fileWatcherType") + 1] == "none"  # no watcher unless --dev


# ------------------------------------------------------------------------------------------ the Label page


def _label_app(name: str) -> Any:
    """The Label page through a personal link of ``name`` (a crowd annotator)."""
    from streamlit.testing.v1 import AppTest

    from tests.app.conftest import MAIN, invite

    at = AppTest.from_file(MAIN, default_timeout=30)
    at.query_params["invite"] = invite(name, "crowd")
    return at.run()


def _click(at: Any, label: str) -> None:
    matches = [b for b in at.button if b.label == label]
    assert matches, f"no button {label!r}; have {[b.label for b in at.button]}"
    matches[0].click().run()
    assert not at.exception, at.exception


@pytest.fixture
def label_app_env(home: Path, sqlite_db: Database, monkeypatch: pytest.MonkeyPatch) -> Database:
    import streamlit as st

    from tests.app.conftest import seed_small

    monkeypatch.delenv("RMSTUDIO_RESEARCHER_TOKEN", raising=False)
    st.cache_resource.clear()
    seed_small(sqlite_db)
    yield sqlite_db
    st.cache_resource.clear()


def test_a_labeler_undoes_only_their_own_last_label(label_app_env: Database) -> None:
    db = label_app_env
    bob, amy = _label_app("bob"), _label_app("amy")
    _click(bob, "A better")
    _click(amy, "B better")
    _click(bob, "Tie")  # bob's label is now the newest in the database
    with db.read() as s:
        keys = {r.annotator.name + str(i): r.idempotency_key for i, r in enumerate(s.scalars(select(Label).order_by(Label.id)))}
    assert len(keys) == 3
    _click(amy, "Undo")
    with db.read() as s:
        left = [(r.annotator.name, r.outcome.value) for r in s.scalars(select(Label).order_by(Label.id))]
    assert [n for n, _ in left] == ["bob", "bob"]
    _click(amy, "Undo")  # nothing of amy's is left: bob's labels stay
    with db.read() as s:
        assert [r.annotator.name for r in s.scalars(select(Label))] == ["bob", "bob"]


HOSTILE_NAME = "<img src=x onerror=alert(1)>[x](javascript:alert(2))"


def test_hostile_annotator_name_is_shown_as_text_on_the_label_page(label_app_env: Database) -> None:
    at = _label_app(HOSTILE_NAME)
    assert not at.exception
    shown = [m for m in at.markdown if "Labeling as" in m.value]
    assert len(shown) == 1 and not shown[0].proto.allow_html
    assert "](javascript:" not in shown[0].value  # the link syntax is escaped, so it is not a link
    assert not at.get("html")


# ------------------------------------------------------------------------------------------ version folders


def _head_versions(db: Database, home: Path, n: int) -> list[Any]:
    """Train and publish ``n`` tiny head versions in this process; returns the version rows."""
    from rm_engine.config import TrainConfig
    from rm_engine.training import train_and_publish
    from tests.integration.rm_seed import seed_labels, tiny_backbone

    seed_labels(db, 12)
    settings = Settings.from_env()
    cfg = TrainConfig(mode="head", backbone=str(tiny_backbone(home)), epochs=3, max_length=32, device="cpu")
    return [train_and_publish(db, settings, cfg) for _ in range(n)]


def test_pickles_planted_in_a_version_folder_are_never_loaded(sqlite_db: Database, home: Path, tmp_path: Path) -> None:
    """Extra pickles beside a version's safetensors are ignored; a pickle in place of its weights is refused
    with an error naming the version, and the previous version is used instead; nothing is unpickled."""
    from rm_engine.serving.scoring import RewardModel, load_usable
    from rm_engine.versions.registry import HEAD_WEIGHTS, ModelFilesError

    old, new = _head_versions(sqlite_db, home, 2)
    settings = Settings.from_env()
    marker = tmp_path / "pwned"
    new_dir = settings.home / new.path
    for name in ("pytorch_model.bin", "model.pt", "head.pkl", "adapter_model.bin", "training_args.bin"):
        plant_pickle(new_dir, name, marker)
    scores = RewardModel.load(sqlite_db, settings, new.id).score("p", ["a kind answer", "go away"])
    assert len(scores) == 2 and not marker.exists()
    plant_pickle(new_dir, HEAD_WEIGHTS, marker)  # the weights file itself replaced by a pickle
    with pytest.raises(ModelFilesError, match=f"model version {new.id}"):
        RewardModel.load(sqlite_db, settings, new.id)
    model = load_usable(sqlite_db, settings, "latest")
    assert model.version_id == old.id and f"model version {new.id}" in (model.fallback_message or "")
    assert not marker.exists()


# ------------------------------------------------------------------------------------------ every page


XSS = ("<script>window.__pwned=1</script>", '<img src=x onerror="window.__pwned=2">', "[x](javascript:alert(3))",
       "<a href=javascript:alert(4)>a</a>", "<svg onload=alert(5)>")


def _hostile_world(db: Database) -> None:
    """Prompts, responses, categories, annotator names, job errors and a version all carrying hostile text."""
    from db import jobs as jobq
    from db import store, versions
    from db.models import JobStatus

    with db.write() as s:
        for i, bad in enumerate(XSS):
            p = store.get_or_create_prompt(s, f"Prompt {bad}", category=f"cat {bad}"[:90])
            a = store.get_or_create_response(s, p, f"Answer {bad}", model=bad[:150])
            b = store.get_or_create_response(s, p, f"Other {i}")
            c = store.get_or_create_comparison(s, a, b).comparison
            for j, who in enumerate((f"name {bad}", f"second {bad}")):
                store.add_label(s, comparison_id=c.id, outcome="a" if j == 0 else "b", source=("crowd", "ai")[j],
                                annotator=who, idempotency_key=f"x{i}-{j}")
        v = versions.insert_version(s, mode="head", backbone=XSS[1], path="models/v-missing",
                                    config={"mode": "head"}, metrics={"val": {"accuracy": 0.6}})
        job = jobq.enqueue(s, "train", {"mode": "head", "backbone": XSS[2]}, created_by=XSS[0])
        job.status, job.error = JobStatus.failed, f"BackboneError: backbone {XSS[2]} {XSS[1]} is outside"
        assert v.id


@pytest.mark.parametrize("page", ["label", "dashboard", "inspect", "train", "data"])
def test_every_page_shows_hostile_stored_text_as_text(label_app_env: Database, page: str) -> None:
    """Complements the per-page tests in ``tests/app``: with hostile text in every stored field, no page emits
    HTML, allows HTML in Markdown, or renders a ``javascript:`` Markdown link."""
    from streamlit.testing.v1 import AppTest

    from app import label_view
    from tests.app.conftest import MAIN, PAGES

    _hostile_world(label_app_env)
    at = AppTest.from_file(MAIN if page == "label" else str(PAGES / f"{page}.py"), default_timeout=60)
    if page == "label":  # a labeler with a hostile name, through their link, with hostile text appended
        from tests.app.conftest import invite

        at.query_params["invite"] = invite(XSS[1], "crowd")
    at.query_params["annotator"] = XSS[2]
    at.run()
    assert not at.exception, at.exception
    assert not at.get("html")
    rendered = 0
    for kind in ("markdown", "caption", "error", "warning", "info", "success", "title", "header", "subheader", "toast"):
        for el in at.get(kind):
            body = getattr(el, "value", "") or ""
            if body == label_view.CSS:  # the Label page's own static layout stylesheet, no stored text in it
                continue
            assert not getattr(el.proto, "allow_html", False), (kind, body[:200])
            assert "](javascript:" not in body, (kind, body[:200])
            rendered += any(x[:8] in body for x in XSS)
    assert page != "label" or rendered  # the label page shows hostile text (escaped) rather than hiding it
