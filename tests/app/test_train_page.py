"""The Train page under AppTest against a real SQLite database with data: enqueue, dedupe, live progress,
cancel, retrain policy, versions list and delete, researcher token."""
from __future__ import annotations

import pytest
import torch
from sqlalchemy import select
from streamlit.testing.v1 import AppTest

from db import jobs, policy, versions, workers
from db.config import Settings
from db.models import Job, JobKind, ModelVersion
from db.session import Database
from db.store import add_label
from rm_engine.config import TrainConfig
from rm_engine.training import train_and_publish
from tests.app.conftest import PAGES, Seeded
from tests.tiny_models import build_tiny_encoder

TRAIN = str(PAGES / "train.py")


def _page() -> AppTest:
    return AppTest.from_file(TRAIN, default_timeout=30).run()


def _button(at: AppTest, label: str):
    found = [b for b in at.button if b.label == label]
    assert found, f"no button {label!r}; have {[b.label for b in at.button]}"
    return found[0]


def _jobs(db: Database) -> list[dict]:
    with db.read() as s:
        return [jobs.job_to_dict(j) for j in s.scalars(select(Job).order_by(Job.id))]


def test_enqueues_a_train_job_with_the_chosen_config(app_env, sqlite_db: Database, seeded: Seeded) -> None:
    at = _page()
    assert not at.exception
    assert at.title[0].value == "Train"
    at.selectbox[0].set_value("finetune")
    [pooling] = [b for b in at.selectbox if b.label == "Fine-tune score reads"]
    assert pooling.value == "auto"
    pooling.set_value("rich")
    [lora] = [c for c in at.checkbox if c.label == "LoRA adapters"]
    assert lora.value is False
    lora.check()
    at.number_input[0].set_value(3)  # epochs
    at.number_input[1].set_value(4)  # ensemble size
    at.slider[2].set_value(0.25)  # weight of ai labels
    at.multiselect[0].set_value(["expert", "crowd"])
    _button(at, "Enqueue training").click().run()
    assert not at.exception
    [job] = _jobs(sqlite_db)
    assert job["kind"] == "train" and job["status"] == "queued"
    p = job["params"]
    assert p["mode"] == "finetune" and p["epochs"] == 3 and p["ensemble"] == 4 and p["pooling"] == "rich"
    assert p["lora"] is True and p["lr"] is None  # the worker resolves LoRA's own default rate
    assert p["source_weights"]["ai"] == 0.25 and p["sources"] == ["expert", "crowd"]
    assert any(f"Queued training job #{job['id']}" in m.value for m in at.success)
    # The live queue shows it, with a cancel button.
    assert any(f"#{job['id']} train" in m.value for m in at.markdown)
    # The same settings again: deduplicated while the first is still queued.
    _button(at, "Enqueue training").click().run()
    assert len(_jobs(sqlite_db)) == 1
    assert any("already queued" in m.value for m in at.info)


def test_queue_says_which_workers_would_run_a_job(app_env, sqlite_db: Database, seeded: Seeded) -> None:
    at = _page()
    assert any("No worker is running" in c.value for c in at.caption) and not at.warning  # nothing waits yet
    _button(at, "Enqueue training").click().run()
    assert any("No worker is running, so queued jobs wait" in w.value for w in at.warning)
    with sqlite_db.write() as s:
        workers.beat(s, "GPU-1:41:ab", host="GPU-1", pid=41, device="cuda", kinds=["train"], every_s=10.0)
    at.run()
    assert not at.warning
    [train] = _jobs(sqlite_db)
    # never "idle" while a job it can run waits: the worker line and the job's card say who takes it
    assert any(f"1 worker: GPU-1 (cuda, taking job #{train['id']}, train jobs only)." == c.value for c in at.caption)
    assert any("Waiting for a worker: GPU-1 takes it at its next poll." == c.value for c in at.caption)
    _button(at, "Cross-validate these settings").click().run()
    cv = _jobs(sqlite_db)[-1]
    assert cv["kind"] == "cv"
    assert any("Waiting for a worker: none of the running ones takes cv jobs." == c.value for c in at.caption)
    assert jobs.claim(sqlite_db, "GPU-1:41:ab", 60.0, kinds=["train"]).id == train["id"]
    at.run()
    assert any("1 worker: GPU-1 (cuda, running job #" in c.value for c in at.caption)


def test_invalid_backbone_is_refused_clearly(app_env, sqlite_db: Database, seeded: Seeded) -> None:
    at = _page()
    at.multiselect[0].set_value([])  # no source at all
    _button(at, "Enqueue training").click().run()
    assert any("TrainConfig.sources" in e.value for e in at.error)
    assert _jobs(sqlite_db) == []


def test_running_job_shows_progress_loss_curve_and_cancels(app_env, sqlite_db: Database, seeded: Seeded) -> None:
    with sqlite_db.write() as s:
        jid = jobs.enqueue(s, JobKind.train, {"mode": "head"}).id
    claimed = jobs.claim(sqlite_db, "test-worker", lease_s=60)
    assert claimed is not None and claimed.id == jid
    progress = {"step": 30, "total": 120, "loss": 0.61, "val_accuracy": 0.58, "eta_s": 12.0, "phase": "train",
                "loss_history": [[i, 0.69 - i / 500] for i in range(0, 31, 5)]}
    assert jobs.heartbeat(sqlite_db, jid, "test-worker", 60, progress=progress).ok
    jobs.append_log(sqlite_db, jid, "features: 120/120 <script>alert(1)</script>")
    at = _page()
    assert not at.exception
    [bar] = at.get("progress")
    assert bar.proto.value == 25  # 30 / 120
    assert "about 12 s left" in bar.proto.text
    assert any("loss 0.6100" in c.value and "val_accuracy 0.5800" in c.value for c in at.caption)
    assert len(at.get("plotly_chart")) >= 1  # the loss curve
    assert at.code[0].value == "features: 120/120 <script>alert(1)</script>"  # the log tail, as plain text
    _button(at, "Cancel").click().run()
    assert not at.exception
    [job] = _jobs(sqlite_db)
    assert job["status"] == "running" and job["cancel_requested"]  # cooperative: the worker stops it
    assert any("(cancel requested)" in m.value for m in at.markdown)


def test_a_finished_job_stays_in_view_with_its_outcome(app_env, sqlite_db: Database, seeded: Seeded) -> None:
    """A job that finished between two refreshes is still seen: its outcome, its version and its loss curve."""
    with sqlite_db.write() as s:
        for cid in seeded.comparison_ids:
            add_label(s, comparison_id=cid, outcome="a", source="crowd", annotator="ann", idempotency_key=f"l-{cid}")
        jid = jobs.enqueue(s, JobKind.train, {"mode": "head"}).id
    assert jobs.claim(sqlite_db, "w1", 60.0).id == jid
    progress = {"phase": "done", "step": 1, "total": 1, "elapsed_s": 2.5, "loss_history": [[1, 0.69], [2, 0.5]]}
    with sqlite_db.write() as s:
        assert jobs.finish(s, jid, "w1", jobs.JobStatus.succeeded, result={"version_id": 42}, progress=progress)
    at = _page()
    assert not at.exception
    assert any(m.value.startswith(f"Last finished: **#{jid} train** succeeded") and "after 2.5 s: version 42." in
               m.value for m in at.markdown)
    [curve] = [e for e in at.expander if e.label == f"Loss curve of job #{jid}"]
    assert len(curve.get("plotly_chart")) == 1
    assert any(c.value == "6 labels since the newest version; the automatic retrain starts at 20." for c in at.caption)
    with sqlite_db.write() as s:
        policy.set_policy(s, enabled=False)
    at.run()
    assert any(c.value == "6 labels since the newest version; automatic retraining is off." for c in at.caption)


def test_queued_job_cancels_at_once(app_env, sqlite_db: Database, seeded: Seeded) -> None:
    with sqlite_db.write() as s:
        jobs.enqueue(s, JobKind.train, {"mode": "head"})
    at = _page()
    _button(at, "Cancel").click().run()
    assert _jobs(sqlite_db)[0]["status"] == "cancelled"


def test_cross_validation_is_queued_and_its_result_shown(app_env, sqlite_db: Database, seeded: Seeded) -> None:
    """"Cross-validate these settings" queues a cv job with the form's settings and folds; a finished one is listed
    with its pooled accuracy and standard error, and its folds are charted against the pooled line."""
    at = _page()
    assert any("No cross-validation yet" in c.value for c in at.caption)
    at.selectbox[0].set_value("finetune")
    at.number_input(key="tr_folds").set_value(7)
    _button(at, "Cross-validate these settings").click().run()
    assert not at.exception
    [job] = _jobs(sqlite_db)
    assert job["kind"] == "cv" and job["params"]["folds"] == 7 and job["params"]["mode"] == "finetune"
    assert any(f"Queued cross-validation job #{job['id']}" in m.value for m in at.success)
    _button(at, "Cross-validate these settings").click().run()
    assert len(_jobs(sqlite_db)) == 1 and any("same cross-validation run is already queued" in m.value for m in at.info)

    folds = [{"fold": 0, "n_held_out": 10, "accuracy": 0.6}, {"fold": 1, "n_held_out": 10, "accuracy": 0.8}]
    result = {"k": 2, "n": 20, "accuracy": 0.7, "std_error": 0.1025, "folds": folds,
              "band": {"band": "decent", "message": "decent: a usable reward model"}, "advice": "Keep labeling."}
    claimed = jobs.claim(sqlite_db, "w1", 30.0, kinds=[JobKind.cv])
    assert claimed is not None and claimed.id == job["id"]
    with sqlite_db.write() as s:
        assert jobs.finish(s, job["id"], "w1", jobs.JobStatus.succeeded, result=result)
    at = _page()
    assert not at.exception
    [table] = [d.value for d in at.dataframe if "± std error" in d.value.columns]
    row = table.iloc[0]
    assert (row["job"], row["mode"], row["folds"], row["held-out pairs"]) == (job["id"], "finetune", 2, 20)
    assert row["accuracy"] == pytest.approx(0.7) and row["band"] == "decent"
    [chart] = [c for c in at.get("plotly_chart") if f"Cross-validation #{job['id']}" in c.proto.spec]
    assert '"y":[0.6,0.8]' in chart.proto.spec.replace(" ", "")
    assert any(f"#{job['id']}: Decent: a usable reward model. Keep labeling." in c.value for c in at.caption)


def test_policy_editor_saves(app_env, sqlite_db: Database, seeded: Seeded) -> None:
    with sqlite_db.write() as s:
        policy.set_policy(s, train_params={"epochs": 3})
    at = _page()
    at.toggle[0].set_value(False)
    inputs = [n for n in at.number_input if "trigger" in n.label]
    inputs[0].set_value(55)
    at.checkbox(key="policy_annotator_weights").check()
    _button(at, "Save policy").click().run()
    assert not at.exception
    with sqlite_db.read() as s:
        pol = policy.get_policy(s)
    assert pol.enabled is False and pol.min_new_labels == 55
    assert pol.train_params == {"epochs": 3, "annotator_weights": True}  # other parameters kept
    at.checkbox(key="policy_annotator_weights").uncheck()
    _button(at, "Save policy").click().run()
    with sqlite_db.read() as s:
        assert policy.get_policy(s).train_params == {"epochs": 3}


def _insert_versions(db: Database, n: int) -> list[int]:
    out = []
    for i in range(n):
        with db.write() as s:
            v = versions.insert_version(
                s, mode="head", backbone="minilm", path=f"models/v-test{i}", config={"mode": "head"},
                metrics={"train": {"accuracy": 0.8 + i / 100}, "val": {"accuracy": 0.6 + i / 100}},
            )
            out.append(v.id)
    return out


def test_versions_list_and_delete(app_env, sqlite_db: Database, seeded: Seeded) -> None:
    ids = _insert_versions(sqlite_db, 2)
    at = _page()
    assert not at.exception
    table = at.dataframe[-1].value
    assert sorted(table["version"]) == sorted(ids)
    assert set(table["val_accuracy"].round(2)) == {0.6, 0.61}
    assert "files_in_db" not in table  # no copies in the database (SQLite's default): no column
    [download] = at.get("download_button")  # these rows have no files
    assert download.proto.disabled and any("config.json is unreadable" in c.value for c in at.caption)
    delete = _button(at, "Delete version")
    assert delete.disabled  # needs the confirmation first
    [victim_box] = [b for b in at.selectbox if b.label == "Version to delete"]
    victim_box.set_value(ids[0])
    [confirm] = [c for c in at.checkbox if c.label.startswith("Yes, delete it")]
    confirm.check().run()
    _button(at, "Delete version").click().run()
    assert not at.exception
    with sqlite_db.read() as s:
        left = [v.id for v in s.scalars(select(ModelVersion))]
    assert left == [ids[1]]
    assert any(f"Deleted version {ids[0]}" in m.value for m in at.success)
    assert list(at.dataframe[-1].value["version"]) == [ids[1]]  # the list drawn after the delete is current


def _label_all_with_tiny_backbone(db: Database, seeded: Seeded, home) -> None:
    """Label every seeded pair ('a' wins) and build a tiny encoder at ``home/tiny``."""
    torch.set_num_threads(1)
    build_tiny_encoder(home / "tiny", hidden=32, layers=1)
    with db.write() as s:
        for cid in seeded.comparison_ids:
            add_label(s, comparison_id=cid, outcome="a", source="crowd", annotator="ann", idempotency_key=f"l-{cid}")


def test_a_finetuned_version_can_be_downloaded(app_env, sqlite_db: Database, seeded: Seeded, home) -> None:
    _label_all_with_tiny_backbone(sqlite_db, seeded, home)
    cfgs = [TrainConfig(mode="finetune", backbone=str(home / "tiny"), epochs=1, device="cpu", max_length=64,
                        val_fraction=0.0, **kw) for kw in ({"ensemble": 2}, {"pooling": "rich"})]
    ens, rich = (train_and_publish(sqlite_db, Settings.from_env(), c).id for c in cfgs)
    at = _page()
    assert "files_in_db" not in at.dataframe[-1].value
    with sqlite_db.write() as s:
        versions.put_archive(s, ens, b"zip", "0" * 64)
    at.run()
    assert dict(zip(at.dataframe[-1].value["version"], at.dataframe[-1].value["files_in_db"])) == {ens: True,
                                                                                                 rich: False}
    [box] = [b for b in at.selectbox if b.label == "Version to export"]
    assert box.value == rich  # newest first
    assert not at.get("download_button")[0].proto.disabled  # rich pooling exports with its rich head
    box.set_value(ens).run()
    [member] = [b for b in at.selectbox if b.label == "Ensemble member"]
    assert member.options == ["member 0", "member 1"]  # a fine-tuned ensemble is not one model
    member.set_value(1).run()
    [download] = at.get("download_button")
    assert not at.exception and not download.proto.disabled
    assert not any("pooling" in c.value or "member" in c.value for c in at.caption)


def test_a_head_ensemble_downloads_whole_or_one_member(app_env, sqlite_db: Database, seeded: Seeded, home) -> None:
    _label_all_with_tiny_backbone(sqlite_db, seeded, home)
    cfg = TrainConfig(mode="head", backbone=str(home / "tiny"), ensemble=3, epochs=5, max_length=64, val_fraction=0.0)
    vid = train_and_publish(sqlite_db, Settings.from_env(), cfg).id
    at = _page()
    assert any(f"rmstudio reward-server --model {vid}" in c.value for c in at.code)  # "Use this version"
    [member] = [b for b in at.selectbox if b.label == "Ensemble member"]
    assert member.options == ["all (their mean)", "member 0", "member 1", "member 2"] and member.value is None
    [download] = at.get("download_button")
    assert not at.exception and not download.proto.disabled
    assert not any("member" in c.value or "refus" in c.value for c in at.caption)
    member.set_value(2).run()
    [download] = at.get("download_button")
    assert not at.exception and not download.proto.disabled


def test_no_versions_teaches(app_env, sqlite_db: Database, seeded: Seeded) -> None:
    at = _page()
    assert any("No model version yet" in i.value for i in at.info)
    assert any("No job is queued or running" in c.value for c in at.caption)


def test_refuses_without_token(app_env, sqlite_db: Database, seeded: Seeded, monkeypatch) -> None:
    monkeypatch.setenv("RMSTUDIO_RESEARCHER_TOKEN", "tok")
    at = _page()
    assert not at.exception
    assert not [b for b in at.button if b.label in ("Enqueue training", "Save policy", "Delete version")]
    assert any("for researchers" in w.value for w in at.warning)
    assert _jobs(sqlite_db) == []


def test_database_errors_are_explained(app_env, sqlite_db: Database, seeded: Seeded, monkeypatch) -> None:
    from sqlalchemy.exc import OperationalError

    def readonly(*_a, **_k):
        raise OperationalError("INSERT INTO jobs", {}, Exception("attempt to write a readonly database"))

    monkeypatch.setattr(jobs, "enqueue", readonly)
    at = _page()
    _button(at, "Enqueue training").click().run()
    assert not at.exception
    assert any("Could not enqueue the training: the database is read-only" in e.value for e in at.error)
    assert _jobs(sqlite_db) == []


def test_learning_rate_field_sets_the_rate_and_zero_leaves_the_default(app_env, sqlite_db: Database,
                                                                       seeded: Seeded) -> None:
    at = _page()
    at.selectbox[0].set_value("finetune")
    [lr] = [n for n in at.number_input if n.label == "Learning rate (0 = mode default)"]
    assert lr.value == 0.0
    _button(at, "Enqueue training").click().run()
    [lr] = [n for n in at.number_input if n.label == "Learning rate (0 = mode default)"]
    lr.set_value(5e-5)
    _button(at, "Enqueue training").click().run()
    assert not at.exception and not at.error
    assert [j["params"]["lr"] for j in _jobs(sqlite_db)] == [None, 5e-5]  # a new rate is a new job, not a duplicate


@pytest.mark.parametrize("mode,label,param", [
    ("head", "Absorb length preference", "length_covariate"),
    ("finetune", "Absorb length preference", "length_covariate"),
    ("head", "Weight by annotator reliability", "annotator_weights"),
])
def test_training_option_checkboxes(app_env, sqlite_db: Database, seeded: Seeded, mode: str, label: str,
                                    param: str) -> None:
    at = _page()
    at.selectbox[0].set_value(mode)
    [box] = [c for c in at.checkbox if c.label == label]
    assert box.value is False
    box.check()
    _button(at, "Enqueue training").click().run()
    assert not at.exception
    assert [(j["params"]["mode"], j["params"][param]) for j in _jobs(sqlite_db)] == [(mode, True)]
