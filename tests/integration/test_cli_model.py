"""``rmstudio train / eval / score / models`` in-process (same code path as the console script)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli import main
from db.session import Database
from tests.integration.rm_seed import engine_settings, one_thread, seed_labels, tiny_encoder  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def train_inline(capsys, tiny_encoder: Path, *extra: str) -> dict:
    rc, out, err = run(capsys, "train", "--inline", "--json", "--backbone", str(tiny_encoder), "--max-length", "64",
                       "--epochs", "40", "--lr", "0.01", *extra)
    assert rc == 0, err
    return json.loads(out)


def test_train_inline_models_score_delete(sqlite_db: Database, engine_settings, tiny_encoder: Path, capsys) -> None:
    seed_labels(sqlite_db, 16)
    res = train_inline(capsys, tiny_encoder, "--ensemble", "2", "--source-weights", "crowd=0.5")
    vid = res["model_version"]
    assert res["metrics"]["train"]["accuracy"] is not None and "val" in res["metrics"]
    assert "score_hist" not in res["metrics"]["train"]  # bulky histograms stay in the database
    assert res["metrics"]["train"]["length_bias"]["n"] > 0  # stored with every version's metrics
    assert res["metrics"]["temperature"]["fitted_on"] == "val"  # too few validation pairs here: no T
    assert res["metrics"]["temperature"]["n"] == res["metrics"]["val"]["n"]
    assert res["config"]["source_weights"]["crowd"] == 0.5 and res["config"]["ensemble"] == 2

    rc, out, _ = run(capsys, "models", "--json")
    rows = json.loads(out)
    assert rc == 0 and rows[0]["id"] == vid
    assert {"id", "created_at", "mode", "backbone", "metrics"} <= set(rows[0])

    rc, out, _ = run(capsys, "score", "--model", str(vid), "--prompt", "how do I bake bread?", "--response",
                     "happy to help, step by step", "--response", "ugh, not answering that", "--json")
    scored = json.loads(out)
    assert rc == 0 and scored["model_version"] == vid and len(scored["scores"]) == 2
    assert {"raw", "z", "sigmoid", "percentile", "std"} <= set(scored["scores"][0])

    batch = Path(engine_settings.home) / "batch.jsonl"
    batch.write_text(json.dumps({"prompt": "p1", "responses": ["a", "b"]}) + "\n" + json.dumps({"prompt": "p2", "response": "c"}) + "\n")
    rc, out, _ = run(capsys, "score", "--file", str(batch), "--json")
    assert rc == 0 and [s["response"] for s in json.loads(out)["scores"]] == ["a", "b", "c"]
    batch.write_text('{"prompt": 3}\n')
    rc, _, err = run(capsys, "score", "--file", str(batch))
    assert rc == 1 and "batch.jsonl:1: field 'prompt'" in err

    rc, out, _ = run(capsys, "models", "delete", str(vid), "--json")
    assert rc == 0 and json.loads(out) == {"deleted": vid, "files_removed": True}
    rc, _, err = run(capsys, "score", "--prompt", "p", "--response", "r")
    assert rc == 1 and "no model version exists yet" in err


def test_rich_finetune_version_trains_scores_and_evaluates(sqlite_db: Database, engine_settings, tiny_encoder: Path,
                                                            capsys, tmp_path: Path) -> None:
    """``--mode finetune --pooling rich``: the version records the pooling and the probe that started its head; its
    files score through ``rmstudio score`` and ``rmstudio eval`` as any other version's."""
    seed_labels(sqlite_db, 16)
    rc, out, err = run(capsys, "train", "--inline", "--json", "--mode", "finetune", "--pooling", "rich", "--backbone",
                       str(tiny_encoder), "--max-length", "64", "--epochs", "2", "--lr", "0.001")
    assert rc == 0, err
    res = json.loads(out)
    assert res["config"]["pooling"] == "rich" and res["config"]["head_init"] == "probe"
    rc, out, err = run(capsys, "score", "--model", str(res["model_version"]), "--prompt", "how do I bake bread?",
                       "--response", "happy to help, step by step", "--response", "ugh, not answering that", "--json")
    assert rc == 0, err
    raw = [s["raw"] for s in json.loads(out)["scores"]]
    assert len(raw) == 2 and raw[0] != raw[1]
    f = tmp_path / "eval.jsonl"
    f.write_text(json.dumps({"prompt": "how to fix a bike", "response_a": "ugh, not answering that",
                             "response_b": "happy to help, step by step", "winner": "b"}) + "\n")
    rc, out, err = run(capsys, "eval", str(f), "--json")
    assert rc == 0 and json.loads(out)["n"] == 1, err


def test_length_covariate_in_both_modes(sqlite_db: Database, engine_settings,
                                                                       tiny_encoder: Path, capsys) -> None:
    seed_labels(sqlite_db, 16)
    res = train_inline(capsys, tiny_encoder, "--length-covariate")
    [beta] = res["metrics"]["training"]["length_coef"]
    assert isinstance(beta, float) and res["config"]["length_covariate"] is True
    rc, out, _ = run(capsys, "models")
    assert rc == 0 and "length covariate" in out.splitlines()[0]
    rc, out, err = run(capsys, "train", "--inline", "--json", "--mode", "finetune", "--backbone", str(tiny_encoder),
                       "--max-length", "64", "--epochs", "1", "--length-covariate")
    assert rc == 0, err
    [beta] = json.loads(out)["metrics"]["training"]["length_coef"]
    assert isinstance(beta, float)


def test_eval_file_is_not_stored(sqlite_db: Database, engine_settings, tiny_encoder: Path, capsys, tmp_path: Path) -> None:
    seed_labels(sqlite_db, 16)
    train_inline(capsys, tiny_encoder)
    f = tmp_path / "eval.jsonl"
    lines = [
        {"prompt": "how to bake bread", "response_a": "a clear, kind and correct reply", "response_b": "whatever, that is dumb",
         "winner": "a", "source": "expert"},
        {"prompt": "how to fix a bike", "response_a": "ugh, not answering that", "response_b": "happy to help, step by step",
         "winner": "b"},
        {"prompt": "how to run", "response_a": "glad you asked, the answer is", "response_b": "a safe and useful explanation",
         "winner": "tie"},
        {"prompt": "tips for tea", "responses": ["happy to help", "ok fine", "you are an idiot for asking"], "ranking": [1, 2, 3]},
    ]
    f.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    from db.versions import count_responses

    with sqlite_db.read() as s:
        before = count_responses(s)
    rc, out, err = run(capsys, "eval", str(f), "--json")  # one file, one format: the ranking line is invalid
    assert rc == 0 and json.loads(out)["invalid_rows"] == 1 and json.loads(out)["n"] == 2, err
    rc, out, err = run(capsys, "eval", str(f))
    assert rc == 0 and "1 invalid row(s) left out; the first: eval.jsonl:4: field 'response_a'" in out, out
    rc, out, err = run(capsys, "eval", str(f), "--format", "mixed", "--json")
    assert rc == 0, err
    res = json.loads(out)
    assert res["n"] == 5  # 2 comparisons + 3 ranking pairs; the tie is counted apart
    assert res["tie_pairs"] == 1 and 0.0 <= res["accuracy"] <= 1.0 and res["tie_rate"] is not None
    assert set(res["per_source"]) == {"crowd", "expert"} and res["spearman"]["n_prompts"] == 1
    # words per response: the chosen one is longer in both comparisons and in 1 of the ranking's 3 pairs
    lb = res["length_bias"]
    assert (lb["n"], lb["n_chosen_longer"], lb["n_chosen_shorter"]) == (5, 3, 2)
    assert lb["labels_prefer_longer"] == pytest.approx(0.6) and lb["flag"] is None  # 5 pairs: too few to judge
    with sqlite_db.read() as s:
        assert count_responses(s) == before


def test_eval_reports_calibration_on_the_file(sqlite_db: Database, engine_settings, tiny_encoder: Path, capsys,
                                              tmp_path: Path) -> None:
    """``rmstudio eval``: the temperature that fits the file, and the ECE under the version's own temperature."""
    from db.config import Settings
    from db.models import ModelVersion
    from rm_engine import metrics as M
    from rm_engine.serving.scoring import RewardModel
    from tests.integration.rm_seed import BAD, GOOD

    seed_labels(sqlite_db, 16)
    vid = train_inline(capsys, tiny_encoder)["model_version"]
    with sqlite_db.write() as s:  # as if enough validation pairs had fitted T = 2
        row = s.get(ModelVersion, vid)
        row.metrics = {**row.metrics, "temperature": {**row.metrics["temperature"], "temperature": 2.0}}
    pairs = [(f"new question {i}", f"{GOOD[i % len(GOOD)]} on item {i}", f"{BAD[i % len(BAD)]} item {i}")
             for i in range(24)]
    f = tmp_path / "eval.jsonl"
    f.write_text("".join(json.dumps({"prompt": p, "response_a": b, "response_b": g, "winner": "b"}) + "\n"
                         for p, g, b in pairs))
    rc, out, err = run(capsys, "eval", str(f), "--json")
    assert rc == 0, err
    t = json.loads(out)["temperature"]
    model = RewardModel.load(sqlite_db, Settings.from_env(), vid)
    rc_ = model.rewards([(p, None, good) for p, good, _ in pairs])
    rr_ = model.rewards([(p, None, bad) for p, _, bad in pairs])
    assert t["n"] == 24 and t["temperature"] == pytest.approx(M.fit_temperature(rc_, rr_), rel=1e-4)
    assert t["version_temperature"] == 2.0
    assert t["ece_version_temperature"] == pytest.approx(M.pair_calibration(rc_ / 2, rr_ / 2)["ece"], abs=1e-6)
    assert t["ece_before"] == pytest.approx(M.pair_calibration(rc_, rr_)["ece"], abs=1e-6)
    rc, out, err = run(capsys, "eval", str(f))
    assert rc == 0 and f"the temperature that fits this file is T = {t['temperature']:.3g}" in out
    assert f"under the version's own T = 2: ECE {t['ece_version_temperature']:.3f}" in out


def test_train_queues_a_job_without_inline(sqlite_db: Database, engine_settings, tiny_encoder: Path, capsys) -> None:
    rc, out, err = run(capsys, "train", "--json", "--backbone", str(tiny_encoder), "--ensemble", "3")
    assert rc == 0, err
    job = json.loads(out)
    assert job["job_id"] is not None
    from db.models import Job

    with sqlite_db.read() as s:
        row = s.get(Job, job["job_id"])
        assert row.kind.value == "train" and row.params["ensemble"] == 3 and row.created_by == "cli"


@pytest.mark.parametrize("argv,needle", [
    (("train", "--inline", "--source-weights", "robots=1"), "unknown source"),
    (("train", "--inline", "--backbone", "/etc"), "outside the allowed model folders"),
    (("train", "--inline", "--gpus", "2"), "--gpus: more than 1 data-parallel process needs mode='finetune'"),
    (("score", "--prompt", "p"), "--response"),
    (("models", "delete"), "needs a version id"),
])
def test_clear_errors(sqlite_db: Database, engine_settings, capsys, argv, needle: str) -> None:
    seed_labels(sqlite_db, 4)
    rc, _, err = run(capsys, *argv)
    assert rc == 1 and needle in err and "Traceback" not in err


@pytest.mark.parametrize("mode,extra", [("head", ("--epochs", "40", "--lr", "0.01")),
                                        ("finetune", ("--epochs", "1", "--lr", "0.001"))])
def test_cv_holds_every_pair_out_once_and_publishes_nothing(sqlite_db: Database, engine_settings, tiny_encoder: Path,
                                                           capsys, mode: str, extra: tuple[str, ...]) -> None:
    """``rmstudio cv``: K models, each scored on the prompts it did not train on; test-split labels stay out;
    the pooled accuracy is the held-out pairs' own count; no version is written."""
    seed_labels(sqlite_db, 16, test_prompts=4)
    rc, out, err = run(capsys, "cv", "--folds", "4", "--json", "--mode", mode, "--backbone", str(tiny_encoder),
                       "--max-length", "64", *extra)
    assert rc == 0, err
    res = json.loads(out)
    folds = res["folds"]
    assert res["k"] == 4 and len(folds) == 4 and res["n_pairs"] == 16 and res["n_prompts"] == 16
    assert [f["n_held_out"] for f in folds] == [4, 4, 4, 4]  # 16 prompts, one pair each, dealt evenly
    assert all(f["n_train"] == 12 for f in folds) and res["n"] == 16
    right = sum(round(f["accuracy"] * f["n_held_out"]) for f in folds)
    assert res["accuracy"] == pytest.approx(right / 16)
    assert res["fold_min"] <= res["accuracy"] <= res["fold_max"]
    assert res["config"]["mode"] == mode and res["size_tier"] == "under 1,000" and "DPO" in res["advice"]
    rc, out, _ = run(capsys, "models", "--json")
    assert rc == 0 and json.loads(out) == []


def test_cv_text_output_and_bad_fold_counts(sqlite_db: Database, engine_settings, tiny_encoder: Path, capsys) -> None:
    seed_labels(sqlite_db, 6)
    rc, out, err = run(capsys, "cv", "--folds", "3", "--backbone", str(tiny_encoder), "--max-length", "64",
                       "--epochs", "20")
    assert rc == 0, err
    assert "fold 1/3: held-out accuracy" in out and "fold 3/3" in out and "cross-validated accuracy" in out
    assert "over 6 held-out pairs (3 folds of 6 prompts" in out
    assert "standard errors above chance (50%)" in out or "not distinguishable from chance" in out
    rc, _, err = run(capsys, "cv", "--folds", "1", "--backbone", str(tiny_encoder))
    assert rc == 2 and "argument --folds: must be a whole number from 2 to 20 (got '1')" in err
    rc, _, err = run(capsys, "cv", "--folds", "8", "--backbone", str(tiny_encoder))
    assert rc == 1 and "8 folds need at least 8 prompts with labelled pairs, found 6" in err


def test_cv_vs_compares_two_settings_on_the_same_pairs(sqlite_db: Database, engine_settings, tiny_encoder: Path,
                                                       capsys) -> None:
    """``rmstudio cv --vs FIELD=VALUE``: both settings on the same folds, compared pair by pair."""
    seed_labels(sqlite_db, 12)
    base = ("cv", "--folds", "3", "--backbone", str(tiny_encoder), "--max-length", "64", "--epochs", "30")
    rc, out, err = run(capsys, *base, "--vs", "head=mlp", "--vs", "weight-decay=0.5", "--json")
    assert rc == 0, err
    res = json.loads(out)
    a, b, d = res["a"], res["b"], res["paired"]
    assert a["config"]["head"] == "linear" and b["config"]["head"] == "mlp" and b["config"]["weight_decay"] == 0.5
    assert [f["n_held_out"] for f in a["folds"]] == [f["n_held_out"] for f in b["folds"]]  # the same folds
    assert d["n"] == a["n"] == b["n"] == 12
    assert d["difference"] == pytest.approx(b["accuracy"] - a["accuracy"])
    assert d["b_only"] - d["a_only"] == round(12 * d["difference"])
    rc, out, err = run(capsys, *base, "--vs", "head=mlp")
    assert rc == 0, err
    assert "A fold 1/3" in out and "B fold 3/3" in out and "B - A:" in out and "pairs only A ranked right" in out
    rc, _, err = run(capsys, *base, "--vs", "head=mlp", "--queue")
    assert rc == 1 and "--vs runs here" in err
    rc, _, err = run(capsys, *base, "--vs", "epochs=many")
    assert rc == 1 and "--vs: epochs: must be a whole number from 1 to 1000000 (got 'many')" in err
    seed_labels(sqlite_db, 12, seed=1, source="ai")  # a second label on each pair, from another source
    rc, _, err = run(capsys, *base, "--vs", "sources=crowd")
    assert rc == 1 and "measure different pairs" in err
