"""Dashboard queries against a real SQLite file with hand-built labels, rankings and cached scores."""
from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import pytest

from db import analytics, version_metrics, versions
from db.models import ModelVersion, ResponseScore
from db.session import Database
from db.store import add_label, add_ranking, get_or_create_comparison, get_or_create_prompt, get_or_create_response
from rm_engine import metrics
from rm_engine.quality.agreement import summarize

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)


def _populate(db: Database) -> dict[str, int]:
    """Two prompts (math, chat), a comparison each, labels from 3 annotators, one 3-way ranking, one version.

    Cached scores: math good=2.0 bad=-1.0; chat x=0.5 y=1.5; ranking r1=3, r2=2, r3=1.
    """
    ids: dict[str, int] = {}
    with db.write() as s:
        pm = get_or_create_prompt(s, "What is 2+2?", category="math")
        pc = get_or_create_prompt(s, "Say hi", category="chat")
        good, bad = get_or_create_response(s, pm, "4"), get_or_create_response(s, pm, "5")
        x, y = get_or_create_response(s, pc, "hi"), get_or_create_response(s, pc, "<script>alert(1)</script>")
        cm = get_or_create_comparison(s, good, bad).comparison
        cc = get_or_create_comparison(s, x, y).comparison
        a_good = "a" if cm.response_a_id == good.id else "b"
        a_x = "a" if cc.response_a_id == x.id else "b"
        other = {"a": "b", "b": "a"}
        # math: ann+bob say good, gpt says bad -> conflict; chat: ann says x, bob tie, gpt says x
        labels = [
            (cm.id, a_good, "crowd", "ann", 0), (cm.id, a_good, "crowd", "bob", 1), (cm.id, other[a_good], "ai", "gpt", 2),
            (cc.id, a_x, "crowd", "ann", 3), (cc.id, "tie", "crowd", "bob", 4), (cc.id, a_x, "ai", "gpt", 5),
        ]
        for i, (cid, outcome, src, ann, k) in enumerate(labels):
            lab, _ = add_label(s, comparison_id=cid, outcome=outcome, source=src, annotator=ann,
                               idempotency_key=f"k{i}", time_spent_ms=1000 * (k + 1))
            lab.created_at = T0 + timedelta(hours=k * 12)
        pr = get_or_create_prompt(s, "Rank these", category="chat")
        r = [get_or_create_response(s, pr, t) for t in ("r1", "r2", "r3")]
        add_ranking(s, prompt_id=pr.id, response_ids=[r[0].id, r[1].id, r[2].id], source="expert", annotator="eve", idempotency_key="rk")
        v = ModelVersion(mode="head", backbone="tiny", path="models/v-x", metrics={"val_accuracy": 0.6, "train_accuracy": 0.9, "per_source": {"crowd": 0.5}})
        s.add(v)
        s.flush()
        scores = {good.id: 2.0, bad.id: -1.0, x.id: 0.5, y.id: 1.5, r[0].id: 3.0, r[1].id: 2.0, r[2].id: 1.0}
        for rid, sc in scores.items():
            s.add(ResponseScore(model_version_id=v.id, response_id=rid, score=sc, std=0.1))
        ids.update(version=v.id, cm=cm.id, cc=cc.id, good=good.id, bad=bad.id, x=x.id, y=y.id)
    return ids


@pytest.fixture
def data(any_db: Database) -> tuple[Database, dict[str, int]]:
    """The populated database, on SQLite and on PostgreSQL."""
    return any_db, _populate(any_db)


def test_empty_database_gives_empty_frames(sqlite_db: Database) -> None:
    with sqlite_db.read() as s:
        assert analytics.labels_over_time(s).empty
        assert analytics.annotator_throughput(s).empty
        assert analytics.labels_per_category(s).empty
        assert analytics.conflicting_labels(s).empty
        assert analytics.label_scores(s, 1).empty
        assert analytics.model_disagreements(s, 1).empty
        assert analytics.ranking_score_items(s, 1).empty
        assert analytics.spearman_inputs(analytics.ranking_score_items(s, 1)) == []
        assert analytics.labelled_prompts(s).empty
        assert analytics.label_count(s) == 0
        assert analytics.chosen_rejected_long(analytics.label_scores(s, 1)).empty


def test_labels_over_time_and_throughput(data) -> None:
    db, _ = data
    with db.read() as s:
        daily = analytics.labels_over_time(s, "D")
        tp = analytics.annotator_throughput(s, now=T0 + timedelta(days=2, hours=13))
    # crowd at hours 0, 12, 36, 48 -> days 5 (2), 6 (1), 7 (1); ai at hours 24, 60 -> days 6, 7
    assert daily["labels"].sum() == 6
    crowd = daily[daily["source"] == "crowd"]
    assert list(crowd["labels"]) == [2, 1, 1] and list(crowd["cumulative"]) == [2, 3, 4]
    assert list(daily[daily["source"] == "ai"]["cumulative"]) == [1, 2]
    with db.read() as s:
        hourly = analytics.labels_over_time(s, "h")
        weekly = analytics.labels_over_time(s, "W")
    assert len(hourly) == 6 and set(hourly["period"].dt.hour) == {9, 21}
    assert weekly["labels"].sum() == 6 and set(weekly["period"].dt.dayofweek) == {0}  # weeks start on Monday
    row = tp.set_index("annotator").loc["ann"]
    assert row["labels"] == 2 and row["source"] == "crowd"
    assert row["median_seconds"] == pytest.approx(2.5)  # 1 s and 4 s
    assert row["labels_per_hour"] == pytest.approx(2 / 36)  # labels at hour 0 and 36
    gpt = tp.set_index("annotator").loc["gpt"]
    assert gpt["labels_24h"] == 1  # only the hour-60 label is within a day of hour 61


def test_labels_per_category(data) -> None:
    db, _ = data
    with db.read() as s:
        cat = analytics.labels_per_category(s).set_index("category")
    assert cat.loc["math", "labels"] == 3 and cat.loc["chat", "labels"] == 3
    assert cat.loc["math", "prompts"] == 1


def test_label_scores_margins_and_calibration(data) -> None:
    db, ids = data
    with db.read() as s:
        frame = analytics.label_scores(s, ids["version"])
    assert len(frame) == 6
    prefs = frame.dropna(subset=["margin"])
    assert len(prefs) == 5  # the tie has no chosen/rejected
    # humans who chose "4" get margin 3.0; gpt who chose "5" gets -3.0; chat "hi" over "<script>" gets -1.0
    assert sorted(prefs["margin"].round(6)) == [-3.0, -1.0, -1.0, 3.0, 3.0]
    long = analytics.chosen_rejected_long(frame)
    assert len(long) == 10 and set(long["role"]) == {"chosen", "rejected"}
    # the pairs feed the engine's calibration: sigmoid(margin) of the human-chosen side
    cal = metrics.pair_calibration(prefs["chosen_score"], prefs["rejected_score"])
    assert cal["n"] == 10 and 0 < cal["ece"] < 1


def test_conflicts_disagreements_and_agreement(data) -> None:
    db, ids = data
    with db.read() as s:
        conf = analytics.conflicting_labels(s)
        worst = analytics.model_disagreements(s, ids["version"], limit=10)
        multi = analytics.multi_rated_labels(s)
    assert list(conf["comparison_id"]) == [ids["cm"]]  # the chat pair has a tie, not an a-vs-b conflict
    assert conf.iloc[0]["annotators"] == "ann, bob, gpt"
    assert {conf.iloc[0]["n_a"], conf.iloc[0]["n_b"]} == {1, 2}
    assert list(worst["margin"]) == sorted(worst["margin"]) and worst.iloc[0]["margin"] == pytest.approx(-3.0)
    assert worst.iloc[0]["annotator"] == "gpt" and worst.iloc[0]["chosen"] == "5"
    assert set(worst["chosen"]) == {"5", "hi"}  # the "<script>" text came back as stored text
    assert "<script>alert(1)</script>" in set(worst["rejected"])
    assert len(multi) == 6
    summary = summarize(analytics.agreement_records(multi), ties=True)
    assert summary.n_multi_rated == 2 and summary.n_ratings == 6


def test_ranking_spearman_and_scored_responses(data) -> None:
    db, ids = data
    with db.read() as s:
        items = analytics.ranking_score_items(s, ids["version"])
        table = analytics.scored_responses(s, ids["version"])
        prompts = analytics.labelled_prompts(s)
        n = analytics.label_count(s)
    assert list(items["rank"]) == [1, 2, 3] and list(items["score"]) == [3.0, 2.0, 1.0]
    sp = metrics.spearman_per_prompt(analytics.spearman_inputs(items))
    assert sp["n_prompts"] == 1 and sp["mean"] == pytest.approx(1.0)
    assert list(table["score"]) == sorted(table["score"], reverse=True) and len(table) == 7
    assert set(prompts["text"]) == {"What is 2+2?", "Say hi", "Rank these"}
    assert n == 6


def test_versions_frame_tolerates_missing_metrics(data) -> None:
    db, _ = data
    with db.write() as s:
        s.add(ModelVersion(mode="head", backbone="tiny", path="models/v-y", metrics={}))
    with db.read() as s:
        from sqlalchemy import select

        vs = list(s.scalars(select(ModelVersion).order_by(ModelVersion.id)))
        ids = [v.id for v in vs]
        f = version_metrics.versions_frame(vs)
        recipes = [versions.recipe(v.mode, v.config) for v in vs]
    assert list(f["version"]) == ids and list(f["recipe"]) == recipes and recipes[-1] == "head"  # no config: the mode
    assert f.loc[0, "val_accuracy"] == pytest.approx(0.6) and math.isnan(f.loc[1, "val_accuracy"])
    assert "per_source" not in f.columns  # nested metrics are not flattened into columns


@pytest.mark.parametrize("mode,config,expected", [
    ("head", {"head": "mlp", "features": "pair", "lr": 0.003}, "mlp head, pair features, lr 0.003"),
    ("head", {}, "head"),
    ("head", {"features": "rich", "length_covariate": True, "lr": 0.003}, "linear head, rich features, length covariate, lr 0.003"),
    ("finetune", {"lora": False, "pooling": "auto", "lr": 2e-5}, "full fine-tune, lr 2e-05"),
    ("finetune", {"lora": True, "lora_r": 8, "pooling": "rich", "lr": None}, "LoRA r8, pooling rich"),
    ("finetune", {"lora": False, "packing": True, "lr": 1e-5}, "full fine-tune, packed, lr 1e-05"),
    ("finetune", {"lora": True, "lora_r": 16, "length_covariate": True, "lr": 2e-4}, "LoRA r16, length covariate, lr 0.0002"),
])
def test_version_recipe_names_how_it_was_trained(mode: str, config: dict, expected: str) -> None:
    assert versions.recipe(mode, config) == expected
    v = ModelVersion(id=1, mode=mode, backbone="minilm", path="models/v-1", config=config, metrics={})
    assert versions.version_summary(v)["recipe"] == expected


@pytest.mark.parametrize("ensemble,metrics,expected", [
    (1, {"val": {"accuracy": 0.6187}}, "v7 · LoRA r16, lr 0.0002 · val 61.9% · 2026-11-27 10:11"),
    (3, {"train": {"accuracy": 0.9}}, "v7 · LoRA r16, lr 0.0002 · ensemble of 3 · no validation · 2026-11-27 10:11"),
])
def test_version_label_tells_versions_apart(ensemble: int, metrics: dict, expected: str) -> None:
    import datetime as dt

    v = ModelVersion(id=7, mode="finetune", backbone="minilm", path="models/v-7", ensemble_size=ensemble,
                     config={"lora": True, "lora_r": 16, "lr": 2e-4}, metrics=metrics,
                     created_at=dt.datetime(2026, 11, 27, 10, 11, 42))
    assert versions.version_label(v) == expected


def test_version_labels_are_newest_first(data) -> None:
    db, _ = data
    with db.write() as s:
        s.add(ModelVersion(mode="head", backbone="tiny", path="models/v-new", metrics={}))
    with db.read() as s:
        labels = versions.version_labels(s)
        ids = [v.id for v in versions.list_versions(s)]
    assert len(ids) >= 2 and list(labels) == ids and ids == sorted(ids, reverse=True)
    assert all(text.startswith(f"v{i} · ") for i, text in labels.items())


def test_version_length_bias_rows_and_verdict() -> None:
    lb = {"n": 10, "n_chosen_longer": 6, "n_chosen_shorter": 4, "labels_prefer_longer": 0.6, "model_prefers_longer": 0.9,
          "accuracy_chosen_longer": 0.8, "accuracy_chosen_shorter": None, "flag": True, "message": "val says"}
    frame, verdict = version_metrics.version_length_bias({"train": {"length_bias": {**lb, "message": "train says"}},
                                                          "val": {"length_bias": lb}})
    val = frame[frame["split"] == "val"].set_index("measure")
    assert list(val.index) == ["labels prefer longer", "model prefers longer", "accuracy, chosen longer"]  # None left out
    assert val.loc["accuracy, chosen longer", "n"] == 6 and val.loc["model prefers longer", "n"] == 10
    assert verdict["message"] == "val says" and set(frame["split"]) == {"train", "val"}
    only_train = version_metrics.version_length_bias({"train": {"length_bias": {**lb, "message": "train says"}}})[1]
    assert only_train["message"] == "train says"
    empty, none = version_metrics.version_length_bias({"val": {"accuracy": 0.6}})
    assert empty.empty and none == {}


def test_version_metric_formats() -> None:
    nested = {"train": {"accuracy": 0.9, "n": 80, "per_source": {"crowd": {"accuracy": 0.85, "n": 50}}},
              "val": {"accuracy": 0.6, "n": 20, "tie_rate": 0.0, "per_source": {"crowd": {"accuracy": 0.5, "n": 10}}}}
    flat = {"train_accuracy": 0.7, "val_accuracy": 0.65}
    aliased = {"splits": {"validation": {"accuracy": 0.55}}}
    acc = version_metrics.version_accuracy([(1, nested), (2, flat), (3, aliased), (4, {}), (5, None)])
    got = {(v, s): a for v, s, a in zip(acc["version"], acc["split"], acc["accuracy"])}
    assert got == {(1, "train"): 0.9, (1, "val"): 0.6, (2, "train"): 0.7, (2, "val"): 0.65, (3, "val"): 0.55}
    groups = version_metrics.version_groups(nested, "per_source")
    assert sorted(zip(groups["split"], groups["group"], groups["accuracy"])) == [("train", "crowd", 0.85), ("val", "crowd", 0.5)]
    assert version_metrics.version_groups(flat, "per_category").empty


def test_data_fingerprint_changes_with_labels_and_scores(data) -> None:
    db, ids = data
    with db.read() as s:
        before = analytics.data_fingerprint(s)
    assert before[:2] == (6, max(before[1], 6))
    with db.write() as s:
        add_label(s, comparison_id=ids["cm"], outcome="tie", source="expert", annotator="zed", idempotency_key="new")
    with db.read() as s:
        after_label = analytics.data_fingerprint(s)
    assert after_label != before and after_label[0] == 7
    with db.write() as s:
        s.query(ResponseScore).filter(ResponseScore.response_id == ids["good"]).delete()
    with db.read() as s:
        assert analytics.data_fingerprint(s)[6] == after_label[6] - 1


def test_samples_keep_the_newest(data) -> None:
    db, ids = data
    with db.read() as s:
        full = analytics.label_scores(s, ids["version"])
        newest = analytics.label_scores(s, ids["version"], limit=2)
        multi = analytics.multi_rated_labels(s, max_comparisons=1)
        tp = analytics.annotator_throughput(s, median_sample=1)
    assert list(newest["label_id"]) == list(full["label_id"])[-2:]
    assert set(multi["comparison_id"]) == {max(ids["cm"], ids["cc"])} and len(multi) == 3
    assert tp["median_seconds"].notna().sum() == 1  # only the newest label's annotator has a sampled time
