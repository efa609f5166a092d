"""Train (researchers): start a retrain, watch the queue live, cancel, edit the automatic-retrain policy, and
manage model versions. The actions are callbacks in ``app.train_actions``."""
from __future__ import annotations

from functools import partial

import streamlit as st

from app import charts
from app import train_actions as act
from app.auth import require_researcher
from app.resources import database, settings
from app.train_views import cv_section, policy_section
from app.use_model import use_section
from db import jobs, version_metrics, versions, workers
from rm_engine import export
from rm_engine.config import DEFAULT_SOURCE_WEIGHTS, SOURCES, default_lrs_text

require_researcher()
st.title("Train")
db = database()
K = act.FORM_KEYS
act.show_messages()

with st.expander("Start a retrain", expanded=True), st.form("train_form"):
    c1, c2, c3, c4 = st.columns(4)
    c1.selectbox("Mode", ["head", "finetune"], key=K["mode"],
                 help="head: frozen backbone, cached features (fast on CPU); finetune: the whole backbone (GPU).")
    c2.text_input("Backbone", "minilm", key=K["backbone"],
                  help="`minilm` or a model folder under RMSTUDIO_HOME / RMSTUDIO_MODEL_DIRS")
    c3.number_input("Epochs (0 = mode default)", min_value=0, max_value=10_000, value=0, key=K["epochs"])
    c4.number_input("Ensemble size", min_value=1, max_value=16, value=1, key=K["ensemble"])
    pool_col, lr_col, lora_col = st.columns([2, 1, 1], vertical_alignment="bottom")
    pool_col.selectbox("Fine-tune score reads", ["auto", "cls", "mean", "rich"], key=K["pooling"],
                       help="finetune, encoders: auto = the backbone's own pooling (mean for MiniLM); rich = head "
                            "mode's features of prompt+response, response and prompt, trained end to end (~2.5x "
                            "slower, its head starts from a linear probe; on HH-harmless within noise of mean pooling).")
    lr_col.number_input("Learning rate (0 = default)", min_value=0.0, max_value=1.0, value=0.0, step=1e-5,
                        format="%g", key=K["lr"],
                        help=default_lrs_text())
    lora_col.checkbox("LoRA adapters", key=K["lora"],
                      help="finetune: train low-rank adapters and the score head instead of every weight (peft; its "
                           "own default learning rate). Smaller saved versions, ~3x faster on CPU for MiniLM.")
    wcols = st.columns(3)
    for i, src in enumerate(SOURCES):
        wcols[i].slider(f"Weight of {src} labels", 0.0, 2.0, DEFAULT_SOURCE_WEIGHTS[src], 0.05, key=K[f"w_{src}"])
    src_col, len_col, ann_col = st.columns([2, 1, 1], vertical_alignment="bottom")
    src_col.multiselect("Train on sources", list(SOURCES), default=list(SOURCES), key=K["sources"])
    len_col.checkbox("Absorb length preference", key=K["length_covariate"],
                     help="a learned coefficient on response length takes the labels' length "
                          "preference, and is left out of the served score, so a policy cannot gain reward by "
                          "padding or cutting its answers (Dashboard: length bias)")
    ann_col.checkbox("Weight by annotator reliability", key=K["annotator_weights"],
                     help="each label weighs as much as its annotator is reliable, estimated from the pairs "
                          "several annotators labelled (Dashboard, Agreement tab: annotator reliability); "
                          "annotators without enough overlap keep weight 1")
    b1, b2, b3 = st.columns([2, 1, 2], vertical_alignment="bottom")
    b1.form_submit_button("Enqueue training", type="primary", on_click=act.enqueue_training)
    b2.number_input("Folds", min_value=2, max_value=20, value=5, key=K["folds"])
    b3.form_submit_button("Cross-validate these settings", on_click=act.enqueue_cv,
                          help="K models, each trained without one fold of the prompts and scored on it; publishes nothing")


@st.fragment(run_every=2)
def live_queue() -> None:
    """Queued and running jobs with live progress, loss curve, log tail and a cancel button."""
    with db.read() as s:
        active = [jobs.job_to_dict(j) for j in jobs.active_jobs(s)]
        recent = [jobs.job_to_dict(j) for j in jobs.list_jobs(s, 8)]
        logs = {j["id"]: [ln.line for ln in jobs.job_logs(s, j["id"], limit=6)] for j in active if j["status"] == "running"}
        live = workers.live_workers(s)
    st.subheader("Queue")
    if live:
        st.caption(workers.describe(live) + ".")
    else:
        (st.warning if any(j["status"] == "queued" for j in active) else st.caption)(
            "No worker is running, so queued jobs wait: start one with `rmstudio worker` (or `rmstudio serve`, the "
            "app and a worker together).")
    if not active:
        st.caption("No job is queued or running.")
    for j in active:
        p = j["progress"] or {}
        with st.container(border=True):
            head = st.columns([5, 1])
            head[0].markdown(f"**#{j['id']} {j['kind']}**: {j['status']}"
                             + (" (cancel requested)" if j["cancel_requested"] else ""))
            head[1].button("Cancel", key=f"cancel_{j['id']}", disabled=j["cancel_requested"], on_click=act.cancel,
                           args=(j["id"],))
            step, total = p.get("step"), p.get("total")
            if step is not None and total:
                eta = f", about {p['eta_s']:.0f} s left" if isinstance(p.get("eta_s"), (int, float)) else ""
                st.progress(min(1.0, float(step) / float(total)), text=f"{p.get('phase', 'step')} {step}/{total}{eta}")
            stats = {k: p[k] for k in ("loss", "val_accuracy") if isinstance(p.get(k), (int, float))}
            if stats:
                st.caption(" · ".join(f"{k} {v:.4f}" for k, v in stats.items()))
            if p.get("loss_history"):
                st.plotly_chart(charts.loss_curve(p["loss_history"]), key=f"loss_{j['id']}")
            if logs.get(j["id"]):
                st.code("\n".join(logs[j["id"]]), language=None)
    with st.expander("Recent jobs"):
        st.dataframe([{k: j[k] for k in ("id", "kind", "status", "attempts", "error", "created_by", "created_at",
                                         "finished_at")} for j in recent], hide_index=True)


live_queue()

cv_section(db)
policy_section(db)

st.subheader("Model versions")
with db.read() as s:
    rows = versions.list_versions(s)
    table = version_metrics.versions_frame(rows, versions.archived_versions(s))
    labels = {v.id: versions.version_label(v) for v in rows}
    members = {v.id: export.member_choices(v.mode, v.ensemble_size) for v in rows}
if table.empty:
    st.info("No model version yet: enqueue a training above, or run `rmstudio train`.")
else:
    st.dataframe(table, hide_index=True)
    e1, e2 = st.columns([3, 1], vertical_alignment="bottom")
    chosen = e1.selectbox("Version to export", list(labels), format_func=labels.get, key="export_version",
                          help="For RL trainers without RM Studio: a Hugging Face folder (safetensors, tokenizer, "
                               "model card) that AutoModelForSequenceClassification loads; `rmstudio models export`")
    member = (e1.selectbox("Ensemble member", members[chosen], key=f"export_member_{chosen}",
                           format_func=lambda k: "all (their mean)" if k is None else f"member {k}")
              if members[chosen] else None)
    refusal = export.export_refusal(db, settings(), chosen, member, max_bytes=export.ARCHIVE_MAX_BYTES)
    e2.download_button("Download .zip", data=partial(export.export_archive, db, settings(), chosen, member=member),
                       file_name=export.archive_name(chosen, member) + ".zip", mime="application/zip",
                       disabled=refusal is not None, on_click="ignore", icon=":material/download:")
    if refusal:
        st.caption(refusal)
    use_section(chosen)
    d1, d2 = st.columns([3, 1])
    victim = d1.selectbox("Version to delete", list(labels), format_func=labels.get)
    confirm = d1.checkbox("Yes, delete it (its files are removed and cached scores dropped)", key="confirm_delete")
    d2.button("Delete version", disabled=not confirm, on_click=act.delete_version, args=(victim,))
