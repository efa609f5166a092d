"""The Dashboard under AppTest against a real SQLite database: zero, one and many versions (rows inserted with
``db.versions.insert_version``, metrics in the engine's own format), labels from several annotators and sources,
cached scores, a ranking; researcher token."""
from __future__ import annotations

import json
import random

import pytest
from streamlit.testing.v1 import AppTest

from app.coverage_view import SERVED
from db import versions
from db.guidelines import set_guidelines
from db.labeling import QueuePolicy, next_pair, submit_label
from db.served import record_served
from db.session import Database
from db.store import add_label, add_ranking
from rm_engine import metrics
from tests.app.conftest import MAIN, PAGES, XSS_SCRIPT, Seeded, plotly_values

DASH = str(PAGES / "dashboard.py")


def _page(tab: str | None = None) -> AppTest:
    """The dashboard, with one of its lazy tabs (Scores, Agreement, Coverage) open."""
    at = AppTest.from_file(DASH, default_timeout=60)
    if tab is not None:
        at.session_state["dash_tab"] = tab
    return at.run()


def _charts(at: AppTest) -> dict[str, dict]:
    """Plotly figures on the page by title."""
    out = {}
    for el in at.get("plotly_chart"):
        fig = json.loads(el.proto.spec)
        title = fig.get("layout", {}).get("title", {}).get("text", "")
        out[title] = fig
    return out


def _label_everything(db: Database, seeded: Seeded) -> None:
    """Three annotators (two crowd, one ai) label every pair; they disagree on the XSS pair; one ranking."""
    verdicts = {"ann": "a", "bob": "a", "gpt": "b"}
    with db.write() as s:
        for cid in seeded.comparison_ids:
            for name, outcome in verdicts.items():
                if cid != seeded.xss_comparison_ids[0] and name == "gpt":
                    outcome = "a" if cid % 2 else "tie"
                add_label(s, comparison_id=cid, outcome=outcome, source="ai" if name == "gpt" else "crowd",
                          annotator=name, idempotency_key=f"{name}-{cid}", time_spent_ms=2000)
        from sqlalchemy import select

        from db.models import Response

        rids = list(s.scalars(select(Response.id).where(Response.prompt_id == seeded.ranking_prompt_id).order_by(Response.id)))
        add_ranking(s, prompt_id=seeded.ranking_prompt_id, response_ids=rids, source="expert", annotator="eve", idempotency_key="rank-1")


def _engine_metrics(train_acc_target: float, val_acc_target: float, seed: int) -> dict:
    """Metrics in the trainer's format (``rm_engine.metrics.split_metrics`` per split), near the targets."""
    rng = random.Random(seed)

    def split(acc: float, n: int) -> dict:
        rc = [rng.gauss(1.0, 1.0) for _ in range(n)]
        rr = [x - (1 if i < acc * n else -1) * abs(rng.gauss(1.0, 0.3)) for i, x in enumerate(rc)]
        # lengths in words: the model always scores the longer response higher (a length-driven model)
        longer_c = [c > r for c, r in zip(rc, rr)]
        lengths = ([30 if x else 5 for x in longer_c], [5 if x else 30 for x in longer_c])
        return metrics.split_metrics(rc, rr, sources=["crowd", "ai"] * (n // 2), categories=["code", "geo"] * (n // 2),
                                     lengths=lengths)

    m = {"train": split(train_acc_target, 40), "val": split(val_acc_target, 20), "test": {}}
    m["overfitting"] = metrics.overfitting_flag(m["train"]["accuracy"], m["val"]["accuracy"])
    m["temperature"] = {"fitted_on": "val", **metrics.temperature_calibration([1.0] * 15 + [-1.0] * 5, [0.0] * 20)}
    return m


def _insert_version(db: Database, m: dict, scores: dict[int, float] | None = None) -> int:
    with db.write() as s:
        v = versions.insert_version(s, mode="head", backbone="minilm", path=f"models/v-{random.random()}", config={},
                                    metrics=m, norm_stats={"mean": 1.0, "std": 2.0, "quantiles": []})
        if scores:
            versions.store_response_scores(s, v.id, {rid: (sc, 0.1) for rid, sc in scores.items()})
        return v.id


def _all_response_ids(db: Database) -> list[int]:
    from sqlalchemy import select

    from db.models import Response

    with db.read() as s:
        return list(s.scalars(select(Response.id).order_by(Response.id)))


def test_empty_database_teaches(app_env, sqlite_db: Database) -> None:
    at = _page()
    assert not at.exception
    assert any("rmstudio seed-demo" in i.value for i in at.info)
    assert any("Scores appear once a model version exists" in i.value for i in at.info)


def _in_app(tab: str) -> AppTest:
    """The dashboard inside the whole app (``app/main.py``'s navigation), so that links to other pages resolve."""
    at = AppTest.from_file(MAIN, default_timeout=60)
    at.session_state["dash_tab"] = tab
    at.switch_page("views/dashboard.py")
    return at.run()


def _links(at: AppTest) -> dict[str, str]:
    """Links to other pages on the page: label -> the page's URL path."""
    return {el.proto.label: el.proto.page for el in at.get("page_link")}


def _one_annotator(db: Database, seeded: Seeded) -> None:
    with db.write() as s:
        for cid in seeded.comparison_ids:
            add_label(s, comparison_id=cid, outcome="a", source="crowd", annotator="ann", idempotency_key=f"o-{cid}")


@pytest.mark.parametrize("tab,says,link", [
    ("Scores", "Scores appear once a model version exists", ("Train a model version", "train")),
    ("Agreement", "No pair has been labelled by two people yet", ("Set the labeling queue's overlap", "data")),
    ("Coverage", "No labelled prompt yet", ("Label pairs", "")),  # the default page: the root URL
])
@pytest.mark.parametrize("data", ["empty", "labels of one annotator"])
def test_empty_tabs_say_what_fills_them_and_link_there(app_env, sqlite_db: Database, seeded: Seeded, data: str,
                                                       tab: str, says: str, link: tuple[str, str]) -> None:
    """No blank chart and no table of None: each empty part says what would fill it and links to where that is
    done (the agreement tab to the Data page's labeling-queue overlap)."""
    if data != "empty":
        _one_annotator(sqlite_db, seeded)
    at = _in_app(tab)
    assert not at.exception
    if data == "empty" or tab != "Coverage":  # labels give the Coverage tab its categories
        assert any(i.value.startswith(says) for i in at.info), [i.value for i in at.info]
        assert _links(at)[link[0]] == link[1]
    titles = " | ".join(_charts(at))
    if data == "empty":
        assert any("rmstudio seed-demo" in i.value for i in at.info)
        assert _links(at)["Import preference data"] == "data"
        assert titles == ""  # nothing to draw: no chart at all
        assert not at.dataframe
    else:
        assert any(i.value.startswith("No model version yet") for i in at.info)
        assert _links(at)["Start a training"] == "train"
        assert "Accuracy per model version" not in titles  # no empty accuracy chart
        if tab == "Agreement":
            assert "agreement" not in titles.lower() and not at.dataframe  # no blank charts, no tables of None
            assert any("Labeling queue" in i.value and "Labels per pair" in i.value for i in at.info)
        if tab == "Coverage":
            assert "Labels per category" in titles and not any("No labelled prompt" in i.value for i in at.info)


def test_a_version_without_cached_scores_or_rankings(app_env, sqlite_db: Database, seeded: Seeded) -> None:
    """Scores of a version not rescored yet: no empty histograms; calibration from its validation pairs; the
    Spearman and length-bias places say what fills them; a temperature at the fit's limit is explained."""
    _one_annotator(sqlite_db, seeded)
    m = _engine_metrics(0.6, 0.5, seed=7)
    m["temperature"] = {"fitted_on": "val", "temperature": 100.0, "n": 20, "ece_before": 0.21, "ece_after": 0.02}
    del m["val"]["length_bias"], m["train"]["length_bias"]
    vid = _insert_version(sqlite_db, m)
    at = _in_app("Scores")
    assert not at.exception
    assert any(i.value.startswith(f"No cached scores for version {vid} yet") for i in at.info)
    titles = set(_charts(at))
    assert not titles & {"Scores of chosen vs rejected responses", "Margin distribution", "Normalized scores",
                         "Spearman per ranked prompt", f"v{vid} length bias (words)"}
    assert "Calibration on validation pairs" in " ".join(titles)  # recorded at training time
    [temp] = [c.value for c in at.caption if c.value.startswith("Temperature 100.00 fitted on 20 validation pairs")]
    assert "upper limit" in temp and "no better than chance" in temp
    assert any("no ranking with cached scores yet" in c.value for c in at.caption)
    assert _links(at)["Rank responses"] == ""  # the Label page, the default one
    assert any(f"not recorded for version {vid}" in c.value for c in at.caption)


def test_zero_versions_with_labels(app_env, sqlite_db: Database, seeded: Seeded) -> None:
    _label_everything(sqlite_db, seeded)
    at = _page("Agreement")
    assert not at.exception
    assert any("No model version yet" in i.value for i in at.info)
    assert [m.value for m in at.metric][:2] == ["18", "0"]
    charts = _charts(at)
    assert "Labels per hour by source" in charts and "Annotator throughput" in charts  # all labelled just now
    [bars] = charts["Dataset size"]["data"]
    assert dict(zip(bars["y"], plotly_values(bars["x"]))) == {"all": 18, "crowd": 12, "ai": 6}
    # 18 labels (no both_bad; ties count for tie-aware losses) plus a 4-way ranking: 18 + 6 = 24 training pairs
    assert any("24 training pairs: size tier **under 1,000**" in c.value for c in at.caption)
    # Agreement: every pair is multi-rated; with ties differs from without ties.
    overall = at.dataframe[0].value
    assert set(overall["ties"]) == {"with ties", "without ties"}
    assert (overall["items"] == 6).all()
    # Reliability: gpt, who alone says b on one pair, is the least reliable; 6 pairs are too few to weigh anyone
    reliability = next(d.value for d in at.dataframe if "agrees_with_others" in d.value.columns)
    assert list(reliability["annotator"])[-1] == "gpt" and set(reliability["annotator"]) == {"ann", "bob", "gpt"}
    assert reliability["weight"].isna().all() and "Annotator reliability" in " ".join(charts)
    # Conflicting labels: the XSS pair (crowd a vs ai b) is listed with its text as plain data.
    conflicts = next(d.value for d in at.dataframe if "n_both_bad" in d.value.columns)
    assert list(conflicts["comparison_id"]) == [seeded.xss_comparison_ids[0]]
    assert XSS_SCRIPT in set(conflicts["response_a"]) | set(conflicts["response_b"])
    assert all(not m.proto.allow_html for m in at.markdown)
    assert not any("by guidelines revision" in m.value for m in at.markdown)  # no label made under guidelines


def test_agreement_by_guidelines_revision(app_env, sqlite_db: Database, seeded: Seeded) -> None:
    """Labels made in the app under guidelines revision 1 (two annotators agreeing on every pair) against the older
    ones (no revision): the Agreement tab shows alpha per revision."""
    _label_everything(sqlite_db, seeded)
    with sqlite_db.write() as s:
        set_guidelines(s, "Correctness first.")
    for name in ("gia", "hal"):
        with sqlite_db.write() as s:
            while (item := next_pair(s, name, QueuePolicy(target_overlap=9))) is not None:
                want = "a" if item.comparison_id % 2 else "b"  # both annotators agree, pair by pair
                submit_label(s, item, "left" if item.left == want else "right", annotator=name, source="expert")
    at = _page("Agreement")
    assert any("by guidelines revision" in m.value for m in at.markdown)
    [table] = [d.value for d in at.dataframe if "guidelines" in d.value.columns]
    rev1 = table[table["guidelines"] == "revision 1"]
    assert set(rev1["ties"]) == {"with ties", "without ties"} and (rev1["items"] == 6).all()
    assert list(rev1["krippendorff_alpha"]) == pytest.approx([1.0, 1.0])  # they agreed on every pair
    assert set(table["guidelines"]) == {"none", "revision 1"}


def test_one_version(app_env, sqlite_db: Database, seeded: Seeded) -> None:
    _label_everything(sqlite_db, seeded)
    rids = _all_response_ids(sqlite_db)
    m = _engine_metrics(0.8, 0.65, seed=1)
    vid = _insert_version(sqlite_db, m, {r: float(i % 5) for i, r in enumerate(rids)})
    at = _page()
    assert not at.exception
    vals = {x.label: x.value for x in at.metric}
    assert vals[f"Validation accuracy (v{vid})"] == f"{m['val']['accuracy']:.1%}"
    assert vals["Training accuracy"] == f"{m['train']['accuracy']:.1%}"
    band = metrics.accuracy_band(m["val"]["accuracy"])["band"]
    se = metrics.accuracy_std_error(m["val"]["accuracy"], 20)
    assert any(f"Validation accuracy band **{band}**" in c.value and "Only 20 validation pairs" in c.value
               and f"±{100 * se:.1f} points (one standard error on 20 pairs)" in c.value and "rmstudio cv" in c.value
               for c in at.caption)
    charts = _charts(at)
    acc = {t["name"]: plotly_values(t["y"]) for t in charts["Accuracy per model version"]["data"]}
    assert acc["val"] == [pytest.approx(m["val"]["accuracy"])] and acc["train"] == [pytest.approx(m["train"]["accuracy"])]
    per_source = charts[f"v{vid} accuracy per source"]["data"]
    assert {t["name"] for t in per_source} == {"train", "val"}
    # Scores: the sortable table has raw, z and sigmoid from the version's stored statistics (mean 1, std 2).
    table = next(d.value for d in at.dataframe if "raw" in d.value.columns)
    assert len(table) == len(rids)
    assert (table["z"] - (table["raw"] - 1.0) / 2.0).abs().max() < 1e-9
    assert table["sigmoid"].between(0, 1).all()
    assert "Normalized scores" in charts and "Margin distribution" in charts
    assert any(t.startswith("Calibration") for t in charts)
    # A ranking of 4 responses with cached scores gives one Spearman value.
    assert len(plotly_values(charts["Spearman per ranked prompt"]["data"][0]["x"])) == 1
    # margins +1 on 15 pairs, -1 on 5: T = 1 / ln 3 = 0.91
    assert any(c.value.startswith("Temperature 0.91 fitted on 20 validation pairs") for c in at.caption)
    # Length bias: labels prefer the longer response as often as the model is right, the model always does.
    bars = {t["name"]: dict(zip((x.replace("<br>", " ") for x in t["x"]), plotly_values(t["y"])))
            for t in charts[f"v{vid} length bias (words)"]["data"]}
    assert bars["val"]["model prefers longer"] == 1.0 and bars["val"]["accuracy, chosen shorter"] == 0.0
    assert bars["val"]["labels prefer longer"] == pytest.approx(m["val"]["accuracy"])
    assert any(w.value.startswith("Length bias: the model prefers the longer response in 100% of pairs, the labels "
                                  f"in {m['val']['accuracy']:.0%}") for w in at.warning)


def test_many_versions_with_old_and_missing_metrics(app_env, sqlite_db: Database, seeded: Seeded) -> None:
    _label_everything(sqlite_db, seeded)
    _insert_version(sqlite_db, {})  # an old version without metrics
    _insert_version(sqlite_db, {"train_accuracy": 0.7, "val_accuracy": 0.6})  # an older flat format
    _insert_version(sqlite_db, _engine_metrics(0.75, 0.7, seed=2))
    last = _insert_version(sqlite_db, _engine_metrics(1.0, 0.55, seed=3))  # overfits
    at = _page()
    assert not at.exception
    assert [m.value for m in at.metric][1] == "4"
    assert any("Overfitting" in w.value for w in at.warning)
    acc = {t["name"]: plotly_values(t["x"]) for t in _charts(at)["Accuracy per model version"]["data"]}
    assert acc["val"] == ["2", "3", str(last)]  # the version without metrics is left out, not a crash
    assert any("No cached scores" in i.value for i in at.info)
    assert not at.file_uploader  # lazy tabs: the closed Coverage panel did not run


def test_only_the_open_tab_runs(app_env, sqlite_db: Database, seeded: Seeded) -> None:
    _label_everything(sqlite_db, seeded)
    at = _page("Agreement")
    assert any("Cohen's kappa" in m.value for m in at.markdown) and not at.file_uploader
    at.session_state["dash_tab"] = "Coverage"
    at.run()
    assert at.file_uploader and not any("Cohen's kappa" in m.value for m in at.markdown)


def test_refuses_without_token(app_env, sqlite_db: Database, seeded: Seeded, monkeypatch) -> None:
    _label_everything(sqlite_db, seeded)
    monkeypatch.setenv("RMSTUDIO_RESEARCHER_TOKEN", "tok")
    at = _page()
    assert not at.exception
    assert any("for researchers" in w.value for w in at.warning)
    assert not at.get("plotly_chart") and not at.dataframe and not at.metric


def test_coverage_of_uploaded_prompts(app_env, sqlite_db: Database, seeded: Seeded) -> None:
    _label_everything(sqlite_db, seeded)
    at = _page("Coverage")
    assert at.file_uploader(key="coverage_upload").proto.max_upload_size_mb == 200
    at.radio(key="coverage_method").set_value("tfidf")
    at.file_uploader(key="coverage_upload").upload(
        "downstream.txt", b"what is the capital of France\nexplain quantum chromodynamics\n<script>x</script> boil an egg\n"
    ).run()
    assert not at.exception
    covered = next(m for m in at.metric if m.label == "Covered")
    assert covered.value == "66.7%"
    table = next(d.value for d in at.dataframe if "nearest_labelled" in d.value.columns)
    assert table.iloc[0]["prompt"] == "explain quantum chromodynamics" and not table.iloc[0]["covered"]
    assert "What is the capital of France?" in set(table["nearest_labelled"])
    cats = _charts(at)["Labels per category"]["data"][0]
    assert dict(zip(cats["x"], plotly_values(cats["y"]))) == {"geography": 6, "code": 3, "security": 6, "cooking": 3}


def test_coverage_of_the_prompts_the_reward_server_scored(app_env, sqlite_db: Database, seeded: Seeded) -> None:
    _label_everything(sqlite_db, seeded)
    at = _page("Coverage")
    assert at.radio(key="coverage_source").options == ["an uploaded file"]  # nothing served yet
    with sqlite_db.write() as s:  # as `rmstudio reward-server` records them
        record_served(s, ["what is the capital of France", "explain quantum chromodynamics"] * 2)
    at = _page("Coverage")
    at.radio(key="coverage_method").set_value("tfidf")
    at.radio(key="coverage_source").set_value(SERVED).run()
    assert not at.exception and not at.file_uploader  # no upload needed
    assert any("2 distinct prompts, 4 responses scored" in c.value for c in at.caption)
    assert next(m for m in at.metric if m.label == "Covered").value == "50.0%"
    table = next(d.value for d in at.dataframe if "nearest_labelled" in d.value.columns)
    assert set(table["prompt"]) == {"what is the capital of France", "explain quantum chromodynamics"}


def test_coverage_upload_errors_name_the_line(app_env, sqlite_db: Database, seeded: Seeded) -> None:
    _label_everything(sqlite_db, seeded)
    at = _page("Coverage")
    at.file_uploader(key="coverage_upload").upload("p.jsonl", b'{"prompt": "ok"}\n{broken\n').run()
    assert not at.exception
    assert any("p.jsonl, line 2: invalid JSON" in e.value for e in at.error)


def test_coverage_upload_over_the_cap_is_refused(app_env, sqlite_db: Database, seeded: Seeded, monkeypatch) -> None:
    monkeypatch.setenv("RMSTUDIO_MAX_UPLOAD_MB", "1")
    at = _page("Coverage")
    at.file_uploader(key="coverage_upload").upload("big.txt", b"x" * (1024 * 1024 + 10)).run()
    assert not at.exception
    assert any("uploads are limited to 1 MB" in e.value for e in at.error)
    assert not any(m.label == "Covered" for m in at.metric)


def test_new_labels_and_versions_appear_on_the_next_refresh(app_env, sqlite_db: Database, seeded: Seeded) -> None:
    """The cached loaders are keyed by the data fingerprint: new data shows on the next run, not stale numbers."""
    at = _page()
    assert any("rmstudio seed-demo" in i.value for i in at.info)
    _label_everything(sqlite_db, seeded)
    at.run()
    assert [m.value for m in at.metric][:2] == ["18", "0"]
    vid = _insert_version(sqlite_db, _engine_metrics(0.8, 0.7, seed=4))
    at.run()
    assert [m.value for m in at.metric][1] == "1"
    assert any(m.label == f"Validation accuracy (v{vid})" for m in at.metric)


def test_scores_of_a_deleted_version_render_empty(app_env, sqlite_db: Database, seeded: Seeded) -> None:
    from app import dashboard_data

    _label_everything(sqlite_db, seeded)
    vid = _insert_version(sqlite_db, _engine_metrics(0.8, 0.7, seed=5), {r: 1.0 for r in _all_response_ids(sqlite_db)})
    with sqlite_db.write() as s:
        versions.delete_version(s, vid)
    got = dashboard_data.scores.__wrapped__(sqlite_db.url, (0,), vid)
    assert got["table"].empty and got["margins"].empty and got["calibration"]["ece"] is None
