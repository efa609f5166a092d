"""The Train page's live sections, each an ``st.fragment`` that reruns on its own (no full-page rerun): the job
queue with the workers that run it (every ``QUEUE_REFRESH_S``: a running job's progress, loss curve and log tail;
the newest finished job, so that a short job's outcome is seen too) and the model versions' table (every
``SECTION_REFRESH_S``; export and delete below it are drawn with the page). What the queue says about workers
comes from :func:`worker_status`, a pure function of ``db.workers.live_workers`` and the active jobs."""
from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from functools import partial
from typing import Any

import pandas as pd
import streamlit as st

from app import charts
from app import train_actions as act
from app.render import escape_md
from app.resources import settings
from app.use_model import use_section
from db import jobs, version_metrics, versions, workers
from db.session import Database
from rm_engine.versions import export

QUEUE_REFRESH_S = 2.0
SECTION_REFRESH_S = 5.0
RECENT_JOBS = 8
_OFFERED = "train_versions_offered"  # the version ids the export and delete choices were drawn with
NO_WORKER = ("No worker is running, so queued jobs wait: start one with `rmstudio worker` (or `rmstudio serve`, the "
             "app and a worker together).")


def worker_status(live: Sequence[dict[str, Any]], active: Sequence[dict[str, Any]]) -> tuple[str, dict[int, str]]:
    """The workers as one line (``db.workers.describe``: none is "idle" while a job it could run waits), and for
    each queued job what it waits for."""
    _, waits = workers.worker_status(live, active)
    return (workers.describe(live, active) + "." if live else NO_WORKER), waits


def _ago(iso: str | None, now: datetime | None = None) -> str:
    if not iso:
        return ""
    then = datetime.fromisoformat(iso)
    then = then if then.tzinfo else then.replace(tzinfo=timezone.utc)
    s = max(0.0, ((now or datetime.now(timezone.utc)) - then).total_seconds())
    return f"{s:.0f} s ago" if s < 120 else f"{s / 60:.0f} min ago" if s < 7200 else f"{s / 3600:.0f} h ago"


def outcome_line(job: dict[str, Any], now: datetime | None = None) -> str:
    """A finished job for people: ``#7 train succeeded 4 s ago after 3.1 s: version 5.``"""
    p, r = job["progress"] or {}, job["result"] or {}
    took = f" after {p['elapsed_s']:.1f} s" if isinstance(p.get("elapsed_s"), (int, float)) else ""
    what = ""
    if r.get("version_id") is not None:
        what = f": version {r['version_id']}"
    elif isinstance(r.get("accuracy"), (int, float)):
        what = f": pooled held-out accuracy {r['accuracy']:.1%}"
    elif job["error"]:
        what = f": {escape_md(str(job['error']).splitlines()[0][:200])}"  # the error may quote stored text
    return f"**#{job['id']} {job['kind']}** {job['status']} {_ago(job['finished_at'], now)}{took}{what}."


def _job_card(j: dict[str, Any], wait: str | None, log: Sequence[str]) -> None:
    p = j["progress"] or {}
    with st.container(border=True):
        head = st.columns([5, 1])
        head[0].markdown(f"**#{j['id']} {j['kind']}**: {j['status']}"
                         + (" (cancel requested)" if j["cancel_requested"] else ""))
        head[1].button("Cancel", key=f"cancel_{j['id']}", disabled=j["cancel_requested"], on_click=act.cancel,
                       args=(j["id"],))
        if wait:
            st.caption(wait[:1].upper() + wait[1:] + ".")
        step, total = p.get("step"), p.get("total")
        if step is not None and total:
            eta = f", about {p['eta_s']:.0f} s left" if isinstance(p.get("eta_s"), (int, float)) else ""
            st.progress(min(1.0, float(step) / float(total)), text=f"{p.get('phase', 'step')} {step}/{total}{eta}")
        stats = {k: p[k] for k in ("loss", "val_accuracy") if isinstance(p.get(k), (int, float))}
        if stats:
            st.caption(" · ".join(f"{k} {v:.4f}" for k, v in stats.items()))
        if p.get("loss_history"):
            st.plotly_chart(charts.loss_curve(p["loss_history"]), key=f"loss_{j['id']}")
        if log:
            st.code("\n".join(log), language=None)


@st.fragment(run_every=QUEUE_REFRESH_S)
def queue_section(db: Database) -> None:
    """Queued and running jobs (progress, loss curve, log tail, cancel), the workers, the newest finished job."""
    with db.read() as s:
        active = [jobs.job_to_dict(j) for j in jobs.active_jobs(s)]
        recent = [jobs.job_to_dict(j) for j in jobs.list_jobs(s, RECENT_JOBS)]
        logs = {j["id"]: [ln.line for ln in jobs.job_logs(s, j["id"], limit=6)] for j in active if j["status"] == "running"}
        live = workers.live_workers(s)
    st.subheader("Queue")
    line, waits = worker_status(live, active)
    (st.warning if not live and waits else st.caption)(line)
    if not active:
        st.caption("No job is queued or running.")
    for j in active:
        _job_card(j, waits.get(j["id"]), logs.get(j["id"], []))
    done = next((j for j in recent if j["status"] not in ("queued", "running")), None)
    if done is not None:
        st.markdown("Last finished: " + outcome_line(done))
        history = (done["progress"] or {}).get("loss_history")
        if history:
            with st.expander(f"Loss curve of job #{done['id']}"):
                st.plotly_chart(charts.loss_curve(history), key=f"loss_done_{done['id']}")
    if not recent:
        return
    with st.expander("Recent jobs"):
        rows = [{k: j[k] for k in ("id", "kind", "status", "attempts", "error", "created_by", "created_at",
                                   "finished_at")} for j in recent]
        blank = ["error", "created_by", "created_at", "finished_at"]  # "", not None: no error, not finished yet
        st.dataframe(pd.DataFrame(rows).fillna(dict.fromkeys(blank, "")), hide_index=True)


def versions_section(db: Database) -> None:
    """The model versions: their live table, then export as a .zip, RL usage snippets and delete. The controls
    stay out of the refreshing fragment: a rerun while a download is prepared would drop the file it serves."""
    with db.read() as s:
        rows = versions.list_versions(s)
        labels = {v.id: versions.version_label(v) for v in rows}
        members = {v.id: export.member_choices(v.mode, v.ensemble_size) for v in rows}
    st.session_state[_OFFERED] = list(labels)
    versions_table(db)
    if labels:
        _version_actions(db, labels, members)


@st.fragment(run_every=SECTION_REFRESH_S)
def versions_table(db: Database) -> None:
    """Every version with its metrics; a version published or deleted since the controls below were drawn is
    named, with a button that redraws them."""
    st.subheader("Model versions")
    with db.read() as s:
        rows = versions.list_versions(s)
        table = version_metrics.versions_frame(rows, versions.archived_versions(s))
        ids = [v.id for v in rows]
    if table.empty:
        st.info("No model version yet: enqueue a training above, or run `rmstudio train`.")
    else:
        shown = table.dropna(axis=1, how="all")
        st.dataframe(shown, hide_index=True)
        if gone := [c for c in table.columns if c not in shown.columns]:
            st.caption(f"Not recorded for any version, so left out: {', '.join(gone)} (e.g. no test split, or no "
                       "validation pairs).")
    offered = st.session_state.get(_OFFERED, [])
    new, gone_ids = [v for v in ids if v not in offered], [v for v in offered if v not in ids]
    if new or gone_ids:
        c1, c2 = st.columns([3, 1], vertical_alignment="center")
        parts = [f"{what} {', '.join(f'v{v}' for v in ids)}" for what, ids in (("new", new), ("deleted", gone_ids))
                 if ids]
        c1.caption("Since this page was drawn: " + "; ".join(parts) + " (export and delete below do not know yet).")
        if c2.button("Update the choices", key="versions_update"):
            st.rerun()


def _version_actions(db: Database, labels: dict[int, str], members: dict[int, list[int | None]]) -> None:
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
