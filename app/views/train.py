"""Train (researchers): watch the queue live, start a retrain or a cross-validation, cancel, edit the
automatic-retrain policy, and manage model versions. The queue, the versions, the cross-validation results and the
label count refresh on their own (``app.train_live``, ``app.train_views``); the actions are callbacks in
``app.train_actions``. The queue comes first and the form is short, so a job just enqueued is in view."""
from __future__ import annotations

import streamlit as st

from app import train_actions as act
from app.auth import require_researcher
from app.resources import database
from app.train_live import queue_section, versions_section
from app.train_views import cv_section, policy_section
from rm_engine.config import DEFAULT_SOURCE_WEIGHTS, SOURCES, default_lrs_text

require_researcher()
st.title("Train")
db = database()
K = act.FORM_KEYS
act.show_messages()
queue_section(db)

st.subheader("Start a retrain")
with st.form("train_form"):
    c1, c2, c3, c4 = st.columns(4)
    c1.selectbox("Mode", ["head", "finetune"], key=K["mode"],
                 help="head: frozen backbone, cached features (fast on CPU); finetune: the whole backbone (GPU).")
    c2.text_input("Backbone", "minilm", key=K["backbone"],
                  help="`minilm` or a model folder under RMSTUDIO_HOME / RMSTUDIO_MODEL_DIRS")
    c3.number_input("Epochs (0 = mode default)", min_value=0, max_value=10_000, value=0, key=K["epochs"])
    c4.number_input("Ensemble size", min_value=1, max_value=16, value=1, key=K["ensemble"])
    b1, b2, b3 = st.columns([2, 1, 2], vertical_alignment="bottom")
    b1.form_submit_button("Enqueue training", type="primary", on_click=act.enqueue_training)
    b2.number_input("Folds", min_value=2, max_value=20, value=5, key=K["folds"])
    b3.form_submit_button("Cross-validate these settings", on_click=act.enqueue_cv,
                          help="K models, each trained without one fold of the prompts and scored on it; publishes nothing")
    with st.expander("More settings: pooling, learning rate, LoRA, sources and their weights, length, annotators"):
        pool_col, lr_col, lora_col = st.columns([2, 1, 1], vertical_alignment="bottom")
        pool_col.selectbox("Fine-tune score reads", ["auto", "cls", "mean", "rich"], key=K["pooling"],
                           help="finetune, encoders: auto = the backbone's own pooling (mean for MiniLM); rich = head "
                                "mode's features of prompt+response, response and prompt, trained end to end (~2.5x "
                                "slower, its head starts from a linear probe; on HH-harmless within noise of mean "
                                "pooling).")
        lr_col.number_input("Learning rate (0 = default)", min_value=0.0, max_value=1.0, value=0.0, step=1e-5,
                            format="%g", key=K["lr"], help=default_lrs_text())
        lora_col.checkbox("LoRA adapters", key=K["lora"],
                          help="finetune: train low-rank adapters and the score head instead of every weight (peft; "
                               "its own default learning rate). Smaller saved versions, ~3x faster on CPU for MiniLM.")
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

cv_section(db)
policy_section(db)
versions_section(db)
