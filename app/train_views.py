"""Sections of the Train page kept out of its script: the automatic-retrain policy form with the live count of
labels since the newest version, and the cross-validation results (``cv`` jobs, refreshed on their own). Thin:
database reads through ``db``, writes through ``app.train_actions``."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from app import charts
from app import train_actions as act
from app.train_live import SECTION_REFRESH_S
from db import jobs, policy
from db.models import JobKind, JobStatus
from db.session import Database

#: Cross-validation results listed (newest first).
CV_SHOWN = 5


def policy_section(db: Database) -> None:
    """The automatic-retrain policy: its switch, trigger, pause, rescoring and annotator weighting."""
    st.subheader("Automatic retraining")
    with db.read() as s:
        pol = policy.get_policy(s)
    pending_labels(db)
    with st.form("policy_form"):
        p1, p2, p3, p4 = st.columns(4)
        enabled = p1.toggle("Enabled", value=pol.enabled)
        pmode = p2.selectbox("Mode", list(policy.TRAIN_MODES), index=list(policy.TRAIN_MODES).index(pol.mode))
        min_new = p3.number_input("New labels that trigger a retrain", min_value=1, value=int(pol.min_new_labels))
        interval = p4.number_input("Minimum seconds between retrains", min_value=0.0, value=float(pol.min_interval_s))
        r1, r2 = st.columns(2)
        rescore = r1.checkbox("Rescore stored responses after each new version", value=pol.rescore)
        weigh = r2.checkbox("Retrain with annotator reliability weights",
                            value=bool(pol.train_params.get("annotator_weights")), key="policy_annotator_weights")
        if st.form_submit_button("Save policy"):
            act.save_policy(enabled=enabled, mode=pmode, min_new_labels=int(min_new), min_interval_s=float(interval),
                            rescore=rescore, train_params=act.with_flags(pol.train_params, annotator_weights=weigh))
            act.show_messages()


@st.fragment(run_every=SECTION_REFRESH_S)
def pending_labels(db: Database) -> None:
    """How many labels arrived since the newest version, and whether that starts an automatic retrain."""
    with db.read() as s:
        pol = policy.get_policy(s)
        pending = policy.labels_since_last_version(s)
    when = (f"; the automatic retrain starts at {pol.min_new_labels}" if pol.enabled
            else "; automatic retraining is off")
    st.caption(f"{pending} labels since the newest version{when}.")


@st.fragment(run_every=SECTION_REFRESH_S)
def cv_section(db: Database) -> None:
    """Finished cross-validations: pooled held-out accuracy with its standard error per run, and the newest run's
    folds as a chart."""
    with db.read() as s:
        done = [jobs.job_to_dict(j) for j in jobs.list_jobs(s, CV_SHOWN, kinds=[JobKind.cv],
                                                              statuses=[JobStatus.succeeded])]
    st.subheader("Cross-validation")
    if not done:
        st.caption("No cross-validation yet. \"Cross-validate these settings\" above trains them once per fold of "
                   "the prompts and scores each fold with the model that did not see it: a steadier accuracy "
                   "estimate than one validation split, and nothing is published (`rmstudio cv` does the same).")
        return
    st.dataframe(pd.DataFrame([_row(j) for j in done]), hide_index=True)
    newest = done[0]["result"] or {}
    st.plotly_chart(charts.cv_folds(newest, f"Cross-validation #{done[0]['id']}: held-out accuracy per fold"),
                    key="cv_folds")
    band = (newest.get("band") or {}).get("message", "")
    st.caption(f"#{done[0]['id']}: {band[:1].upper()}{band[1:]}. {newest.get('advice', '')}")


def _row(job: dict) -> dict:
    r, p = job["result"] or {}, job["params"] or {}
    se = r.get("std_error")
    return {"job": job["id"], "mode": p.get("mode"), "backbone": p.get("backbone"), "folds": r.get("k"),
            "held-out pairs": r.get("n"), "accuracy": r.get("accuracy"),
            "± std error": None if se is None else round(se, 4), "band": (r.get("band") or {}).get("band"),
            "finished": job.get("finished_at")}
