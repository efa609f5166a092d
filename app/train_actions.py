"""Actions of the Train page, as Streamlit callbacks.

Each callback runs before the page's rerun (so the queue, the policy and the versions list drawn afterwards
already show its effect), writes in one short transaction, and leaves one-line messages (success, info or
error) that the page shows with :func:`show_messages`. Database problems (read-only file, full disk, locked)
become a clear error instead of a traceback.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any, TypeVar

import streamlit as st
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from app.config_form import config_from_state, widget_keys
from app.identity import current_identity
from app.resources import database, settings
from db import jobs, policy, versions
from db.models import JobKind
from db.session import explain_db_error
from rm_engine.config import TrainConfig, check_queueable, policy_train_config
from rm_engine.versions import registry

T = TypeVar("T")
_MSG = "train_messages"
#: Session-state keys of the training form's widgets: one per ``TrainConfig`` field the form offers
#: (``app.config_form``), and the cross-validation's folds.
FORM_KEYS = {**widget_keys(), "folds": "tr_folds"}


def _say(kind: str, text: str) -> None:
    st.session_state.setdefault(_MSG, []).append((kind, text))


def show_messages() -> None:
    """Show (once) what the last actions reported."""
    for kind, text in st.session_state.pop(_MSG, []):
        getattr(st, kind)(text)


def _write(what: str, fn: Callable[[Session], T]) -> T | None:
    """``fn`` in a write transaction; a database problem is reported as "Could not <what>: ..." and gives None."""
    try:
        return database().run_write(fn)
    except SQLAlchemyError as exc:
        _say("error", f"Could not {what}: {explain_db_error(exc)}")
        return None


def config_from_form(state: Any) -> TrainConfig:
    """The ``TrainConfig`` the form describes (raises ``ValueError`` naming the bad field)."""
    return config_from_state(state)


def enqueue_training() -> None:
    """Form callback: validate the settings and enqueue one ``train`` job (the same settings twice while the
    first is still queued are deduplicated)."""
    _enqueue(JobKind.train, "training")


def enqueue_cv() -> None:
    """Form callback: enqueue a ``cv`` job, cross-validating the form's settings over ``FORM_KEYS["folds"]`` prompt
    folds (nothing is published; the Cross-validation section shows the result)."""
    _enqueue(JobKind.cv, "cross-validation", folds=int(st.session_state.get(FORM_KEYS["folds"], 5)))


def _enqueue(kind: JobKind, what: str, **extra: Any) -> None:
    try:  # the worker's own checks (fields, backbone folder), before anything is queued
        cfg = check_queueable(config_from_form(st.session_state), settings())
    except ValueError as exc:
        _say("error", f"Invalid training settings: {exc}")
        return
    params = {**cfg.to_dict(), **extra}
    params.pop("gpus", None)  # the form has no such field: the worker's --gpus decides
    key = f"{kind.value}-" + hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:40]
    ident = current_identity()
    who = ident.name if ident else "researcher"

    def add(s: Session) -> int | None:
        job = jobs.enqueue(s, kind, params, dedupe_key=key, created_by=who)
        return job.id if job is not None else None

    job_id = _write(f"enqueue the {what}", add)
    if job_id is not None:
        _say("success", f"Queued {what} job #{job_id}: the queue below follows it.")
    elif not st.session_state.get(_MSG):
        _say("info", f"The same {what} run is already queued.")


def cancel(job_id: int) -> None:
    """Button callback: cancel a queued job at once, or ask a running one to stop."""
    try:
        status = jobs.request_cancel(database(), job_id)
        st.toast(f"Job #{job_id}: {getattr(status, 'value', status)}")
    except SQLAlchemyError as exc:
        _say("error", f"Could not cancel job #{job_id}: {explain_db_error(exc)}")


def with_flags(train_params: dict[str, Any], **flags: bool) -> dict[str, Any]:
    """``train_params`` with each flag set when true and left out (the default) when false."""
    out = {k: v for k, v in train_params.items() if k not in flags}
    return {**out, **{k: True for k, on in flags.items() if on}}


def save_policy(**changes: Any) -> None:
    """Store the automatic-retrain policy (validated, its training parameters as the worker will check them: a bad
    value is named in the error)."""
    def apply(s: Session) -> policy.RetrainPolicy:
        if "train_params" in changes:
            policy_train_config(changes["train_params"], changes.get("mode", policy.get_policy(s).mode), settings())
        return policy.set_policy(s, **changes)

    try:
        if _write("save the policy", apply) is not None:
            _say("success", "Policy saved.")
    except ValueError as exc:
        _say("error", str(exc))


def delete_version(version_id: int) -> None:
    """Button callback: delete a version's row and cached scores, then its files."""
    try:
        path = _write(f"delete version {version_id}", lambda s: versions.delete_version(s, int(version_id)).path)
    except versions.VersionNotFound as exc:
        _say("error", str(exc))
        return
    if path is None:
        return
    try:
        registry.remove_version_files(settings(), path)
        _say("success", f"Deleted version {version_id}.")
    except (registry.ModelFilesError, OSError) as exc:
        _say("warning", f"Deleted version {version_id}; its files could not be removed ({exc}): the worker's "
                        "orphan sweep removes them later.")
