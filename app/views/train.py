"""Train (researchers): watch the queue live, start a retrain or a cross-validation, cancel, edit the
automatic-retrain policy, and manage model versions. The queue, the versions, the cross-validation results and the
label count refresh on their own (``app.train_live``, ``app.train_views``); the actions are callbacks in
``app.train_actions``. The queue comes first and the form is short, so a job just enqueued is in view."""
from __future__ import annotations

import streamlit as st

from app import train_actions as act
from app.auth import require_researcher
from app.config_form import render_section
from app.resources import database
from app.train_live import queue_section, versions_section
from app.train_views import cv_section, policy_section

require_researcher()
st.title("Train")
db = database()
K = act.FORM_KEYS
act.show_messages()
queue_section(db)

st.subheader("Start a retrain")
with st.form("train_form"):
    render_section("main", per_row=4)  # a widget per TrainConfig field the form offers, from its metadata
    b1, b2, b3 = st.columns([2, 1, 2], vertical_alignment="bottom")
    b1.form_submit_button("Enqueue training", type="primary", on_click=act.enqueue_training)
    b2.number_input("Folds", min_value=2, max_value=20, value=5, key=K["folds"])
    b3.form_submit_button("Cross-validate these settings", on_click=act.enqueue_cv,
                          help="K models, each trained without one fold of the prompts and scored on it; publishes nothing")
    with st.expander("More settings"):
        render_section("more", per_row=3)

cv_section(db)
policy_section(db)
versions_section(db)
