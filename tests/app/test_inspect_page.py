"""The Inspect page under AppTest with real model versions: a tiny random encoder (MiniLM tokenizer) trained in
head mode by the engine on labels in a real SQLite database, then scored through ``load_usable``."""
from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from streamlit.testing.v1 import AppTest

from app.render import defang_links
from db.config import Settings
from db.session import Database
from db.store import add_label
from rm_engine import normalize
from rm_engine.config import TrainConfig
from rm_engine.serving.scoring import rescore_stored
from rm_engine.training import train_and_publish
from tests.app.conftest import PAGES, XSS_IMG, XSS_LINK, XSS_SCRIPT, Seeded, plotly_values
from tests.tiny_models import build_tiny_encoder

INSPECT = str(PAGES / "inspect.py")


def _page(tab: str | None = None) -> AppTest:
    """The Inspect page with one of its lazy tabs open ("Score responses" by default)."""
    at = AppTest.from_file(INSPECT, default_timeout=60)
    if tab is not None:
        at.session_state["inspect_tab"] = tab
    return at.run()


def _train(db: Database, seeded: Seeded, home, seed: int) -> int:
    """Label every seeded pair ('a' wins) and train a tiny head-mode version; returns its id."""
    torch.set_num_threads(1)
    backbone = home / "tiny"
    if not (backbone / "config.json").exists():
        build_tiny_encoder(backbone, hidden=32, layers=1)
    with db.write() as s:
        for cid in seeded.comparison_ids:
            add_label(s, comparison_id=cid, outcome="a", source="crowd", annotator="ann", idempotency_key=f"l-{cid}")
    cfg = TrainConfig(backbone=str(backbone), epochs=20, seed=seed, val_fraction=0.0, device="cpu", max_length=64)
    v = train_and_publish(db, Settings.from_env(), cfg)
    assert v is not None
    return v.id


@pytest.fixture
def version(app_env, sqlite_db: Database, seeded: Seeded, home) -> int:
    return _train(sqlite_db, seeded, home, seed=0)


def _score(at: AppTest, prompt: str, responses: list[str]) -> AppTest:
    at.text_area(key="inspect_prompt").input(prompt)
    at.number_input(key="inspect_n").set_value(len(responses)).run()
    for i, r in enumerate(responses):
        at.text_area(key=f"inspect_resp_{i}").input(r)
    return at.button(key="inspect_score").click().run()


def _score_tables(at: AppTest) -> list:
    """Each version's ranking table on the page, in order (one per version shown)."""
    return [d.value for d in at.table if "rank" in d.value.columns]


def _table_with(at: AppTest, column: str):
    [df] = [d.value for d in at.table if column in d.value.columns]
    return df


def test_no_version_teaches(app_env, sqlite_db: Database, seeded: Seeded) -> None:
    at = _page()
    assert not at.exception
    assert any("No model version yet" in i.value for i in at.info)


def test_scores_rank_responses_and_show_untrusted_text_as_text(version: int, sqlite_db: Database) -> None:
    at = _page()
    assert not at.exception
    responses = [XSS_SCRIPT, XSS_IMG, XSS_LINK, "Paris."]
    at = _score(at, "What is the capital of France?", responses)
    assert not at.exception
    [df] = _score_tables(at)
    assert list(df["rank"]) == [1, 2, 3, 4]
    assert list(df["raw"]) == sorted(df["raw"], reverse=True)
    assert sorted(df["response"]) == sorted(responses)
    with sqlite_db.read() as s:
        from db.versions import get_version

        stats = dict(get_version(s, version).norm_stats)
        temp = get_version(s, version).metrics["temperature"]
    assert (df["z"] - (df["raw"] - stats["mean"]) / stats["std"]).abs().max() < 1e-5
    # calibrated P(beats the next one down) from the temperature fitted at training time (1.0 without one)
    t = temp["temperature"] or 1.0
    want = [1 / (1 + math.exp(-(a - b) / t)) for a, b in zip(df["raw"], df["raw"][1:])]
    assert list(df["p_beats_next"][:3]) == pytest.approx(want, abs=1e-6) and df["p_beats_next"].isna().iloc[3]
    assert any("the last response has no next one" in c.value for c in at.caption)  # shown as "–", explained
    assert not at.dataframe  # static tables: every column in view
    assert all(0.5 <= x <= 1 for x in want)  # sorted best first
    assert (df["sigmoid"] - [float(normalize.to_sigmoid(r, stats)) for r in df["raw"]]).abs().max() < 1e-6
    # Each response is rendered as Markdown without HTML, script links defanged.
    bodies = [m.value for m in at.markdown]
    for r in responses:
        assert defang_links(r) in bodies
    assert "\\[click me\\]\\(javascript:alert(1))" in bodies
    assert all(not m.proto.allow_html for m in at.markdown)


def test_three_versions_side_by_side_and_as_one_reward(version: int, sqlite_db: Database, seeded: Seeded, home) -> None:
    second, third = (_train(sqlite_db, seeded, home, seed=k) for k in (1, 2))
    at = _page()
    # the pickers name each version by id, recipe and accuracy (db.versions.version_label), newest first
    opts = at.selectbox(key="inspect_version").options
    assert [o.split(" · ")[0] for o in opts] == [f"v{v}" for v in (third, second, version)]
    assert all(" head, " in o and (" · val " in o or " · no validation" in o) for o in opts)
    assert at.multiselect(key="inspect_compare").options == opts
    at.selectbox(key="inspect_version").set_value(third)
    at.multiselect(key="inspect_compare").set_value([third, version, second])  # the first version again: skipped
    at = _score(at, "Name a colour", ["Red.", "no.", "Blue!"])
    assert not at.exception
    assert [h.value for h in at.subheader] == [f"Versions {third}, {version} and {second} compared",
                                               f"Versions {third}, {version} and {second} as one reward"]
    tables = [t.set_index("response")["z"] for t in _score_tables(at)]  # each version's ranking (expander)
    compared = _table_with(at, f"v{third} z")
    assert list(compared["response"]) == ["1. Red.", "2. no.", "3. Blue!"]  # as entered
    both = _table_with(at, "mean z").set_index("response")
    assert "mean - std" in both.columns  # with three versions it differs from min z
    for i, text in enumerate(("Red.", "no.", "Blue!")):
        zs = [t[text] for t in tables]
        assert [compared.loc[i, f"v{v} z"] for v in (third, version, second)] == pytest.approx(zs)
        assert both.loc[f"{i + 1}. {text}", "mean z"] == pytest.approx(sum(zs) / 3)
        assert both.loc[f"{i + 1}. {text}", "min z"] == pytest.approx(min(zs))


def test_compare_two_versions_and_fall_back_when_files_are_gone(version: int, sqlite_db: Database, seeded: Seeded, home) -> None:
    second = _train(sqlite_db, seeded, home, seed=1)
    at = _page()
    at.selectbox(key="inspect_version").set_value(second)
    at.multiselect(key="inspect_compare").set_value([version])
    at = _score(at, "Name a colour", ["Red.", "no."])
    assert not at.exception
    assert [h.value for h in at.subheader] == [f"Versions {second} and {version} compared",
                                               f"Versions {second} and {version} as one reward"]
    a, b = _score_tables(at)
    assert len(a) == len(b) == 2 and not a["raw"].equals(b["raw"])  # different seeds, different scores
    # One table holds every version's raw, z and sigmoid per response, side by side.
    compared = _table_with(at, f"v{second} z")
    assert list(compared.columns) == ["response"] + [f"v{v} {m}" for v in (second, version)
                                                     for m in ("raw", "z", "sigmoid")]
    za, zb = a.set_index("response")["z"], b.set_index("response")["z"]
    for i, text in enumerate(("Red.", "no.")):
        for v, ranking in ((second, a), (version, b)):
            mine = ranking.set_index("response").loc[text]
            assert [compared.loc[i, f"v{v} {m}"] for m in ("raw", "z", "sigmoid")] == pytest.approx(
                [mine["raw"], mine["z"], mine["sigmoid"]])
            assert f"v{v} #{int(mine['rank'])}, z {mine['z']:.2f}" in next(
                c.value for c in at.caption if c.value.startswith(f"Response {i + 1}: "))
    # ... and a chart of each response's z per version.
    [chart] = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    assert chart["layout"]["title"]["text"] == "z-score of each response per version"
    bars = {t["name"]: (t["x"], plotly_values(t["y"])) for t in chart["data"]}
    assert bars == {f"v{second}": (["1", "2"], pytest.approx([za["Red."], za["no."]])),
                    f"v{version}": (["1", "2"], pytest.approx([zb["Red."], zb["no."]]))}
    # With two versions "mean - std" equals "min z": only min z is shown, and the page says why.
    both = _table_with(at, "mean z").set_index("response")
    assert "mean - std" not in both.columns
    assert any("With two versions `mean - std` is the same as `min z`" in c.value for c in at.caption)
    for text in ("Red.", "no."):
        row = both.loc[f"{('Red.', 'no.').index(text) + 1}. {text}"]
        assert row["mean z"] == pytest.approx((za[text] + zb[text]) / 2)
        assert row["min z"] == pytest.approx(min(za[text], zb[text]))
        assert row["std of z"] == pytest.approx(abs(za[text] - zb[text]) / 2)
    # The newer version's files disappear: a fresh server falls back to the older version and says so.
    with sqlite_db.read() as s:
        from db.versions import get_version

        path = get_version(s, second).path
    shutil.rmtree(Settings.from_env().home / path)
    import streamlit as st

    st.cache_resource.clear()
    at = _page()
    at.selectbox(key="inspect_version").set_value(second)
    at = _score(at, "Name a colour", ["Red.", "no."])
    assert not at.exception
    assert any(f"using model version {version} instead" in w.value for w in at.warning)
    # With no usable version left, the page says so instead of failing.
    with sqlite_db.read() as s:
        first_path = get_version(s, version).path
    shutil.rmtree(Settings.from_env().home / first_path)
    st.cache_resource.clear()
    at = _page()
    at = _score(at, "Name a colour", ["Red."])
    assert not at.exception
    assert any(f"Version {second} cannot score" in e.value for e in at.error)


def test_disagreements_show_stored_text_as_text(version: int, sqlite_db: Database, seeded: Seeded) -> None:
    # Human labels that contradict each other on every pair guarantee that the model disagrees with some.
    with sqlite_db.write() as s:
        for cid in seeded.comparison_ids:
            add_label(s, comparison_id=cid, outcome="b", source="expert", annotator="eve", idempotency_key=f"rev-{cid}")
    assert rescore_stored(sqlite_db, Settings.from_env(), version) > 0
    at = _page()
    at.text_area(key="inspect_prompt").input("kept across tabs").run()
    assert not at.expander  # the closed tab did not run
    at.session_state["inspect_tab"] = "Model vs human labels"
    at.run()
    assert not at.exception and not at.text_area
    at.slider(key="disagree_limit").set_value(100).run()
    assert len(at.expander) == len(seeded.comparison_ids)  # one of each contradicting pair of labels
    bodies = [m.value for m in at.markdown]
    assert XSS_SCRIPT in bodies or XSS_IMG in bodies
    assert all(not m.proto.allow_html for m in at.markdown)
    at.session_state["inspect_tab"] = "Score responses"
    at.run()
    assert at.text_area(key="inspect_prompt").value == "kept across tabs"


def test_refuses_without_token(app_env, sqlite_db: Database, seeded: Seeded, monkeypatch) -> None:
    monkeypatch.setenv("RMSTUDIO_RESEARCHER_TOKEN", "tok")
    at = _page()
    assert any("for researchers" in w.value for w in at.warning)
    assert not at.text_area and not at.dataframe
