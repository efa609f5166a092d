"""Who is labeling: an annotator account (``db/annotators.py``), resolved from the address on every run.

* ``?invite=<token>``: a personal link; the annotator and their tier are the ones on record.
* ``?campaign=<token>&PROLIFIC_PID=<id>`` (or ``&worker_id=<id>``): a crowd campaign; the worker becomes a
  crowd-tier annotator on their first visit.
* Neither, with researcher rights (:mod:`app.auth`; always so without a researcher token): the researcher labels as
  the local annotator, named and tiered once (here on first use, or on the Data page's Team tab).
* Neither, without researcher rights: nothing to label with; the page says to ask for a personal link.

Nothing else in the address (``annotator=``, ``source=``) changes the identity or the tier: the page says it
ignored them. The tier is read again on every run, and the account again in every write (a revoked link stops
at once).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import streamlit as st

from app import auth
from app.render import escape_md
from app.resources import database
from db import annotators as team
from db.models import Annotator, Source

_KEY = "rmstudio_identity"
IGNORED_PARAMS = ("annotator", "source")
MAX_NAME = team.MAX_NAME


@dataclass(frozen=True)
class Identity:
    """The annotator of this browser session: account id, name, tier on record, and how it was found
    (``invite``, ``campaign`` or ``local``)."""

    annotator_id: int
    name: str
    tier: Source
    via: str


def _db() -> Any:
    return database()


def _of(ann: Annotator, via: str) -> Identity:
    return Identity(ann.id, ann.name, Source(ann.default_source), via)


def _param(name: str) -> str | None:
    value = st.query_params.get(name)
    return value if value else None


def _from_link() -> Identity | None:
    """The identity a personal or campaign link gives; None without one. Raises ``team.LinkError``."""
    if team.INVITE_PARAM in st.query_params:
        with _db().read() as s:
            return _of(team.annotator_for_link(s, _param(team.INVITE_PARAM)), "invite")
    if team.CAMPAIGN_PARAM in st.query_params:
        token = _param(team.CAMPAIGN_PARAM)
        worker = next((_param(p) for p in team.WORKER_PARAMS if _param(p)), None)
        with _db().read() as s:
            found = team.find_campaign_worker(s, token, worker)
            if found is not None:
                return _of(found, "campaign")
        with _db().write() as s:  # first visit of this worker
            return _of(team.join_campaign(s, token, worker), "campaign")
    return None


def _local() -> Identity | None:
    with _db().read() as s:
        ann = team.local_annotator(s)
        if ann is None:
            return None
        if ann.revoked_at is not None:
            raise team.LinkError(f"{ann.name} is revoked: pick another name below, or invite them again on the "
                                 "Data page's Team tab.")
        return _of(ann, "local")


def current_identity() -> Identity | None:
    """The identity the Label page last resolved in this session (None before): who researcher actions are by."""
    return st.session_state.get(_KEY)


def researcher_name() -> str:
    """Who a researcher's actions are recorded as: the logged-in account's email, else the local annotator's name,
    else ``researcher``."""
    try:
        if auth.oidc_configured() and st.user.is_logged_in and st.user.get("email"):
            return str(st.user.get("email"))
    except Exception:  # noqa: BLE001 - no login configured: st.user raises
        pass
    with _db().read() as s:
        ann = team.local_annotator(s)
        return ann.name if ann is not None else "researcher"


def _note_ignored(ident: Identity) -> None:
    given = {k: st.query_params[k] for k in IGNORED_PARAMS if k in st.query_params}
    if given.get("annotator", ident.name) != ident.name or given.get("source", ident.tier.value) != ident.tier.value:
        shown = ", ".join(f"{k}={escape_md(v[:60])}" for k, v in given.items())
        st.warning(f"The address also says {shown}: ignored. Who you label as and your tier are on record; a "
                   f"researcher assigns them.", icon=":material/info:")


def local_form() -> None:
    """The one-time "who is labeling" form of the researcher's own machine (name and tier, remembered there)."""
    st.subheader("Who is labeling?")
    with st.form("identity"):
        name = st.text_input("Your name", max_chars=MAX_NAME, placeholder="e.g. alice")
        tier = st.radio("Tier", [t.value for t in team.HUMAN_TIERS], index=1, horizontal=True,
                        help="expert: your labels are the gold standard others are measured against; crowd: "
                             "everyone else. Set once for this machine; the Data page's Team tab changes it.")
        ok = st.form_submit_button("Start labeling", type="primary")
    if ok:
        try:
            with _db().write() as s:
                team.set_local_annotator(s, name, tier, by=(name or "").strip() or "researcher")
        except ValueError as exc:
            st.error(escape_md(str(exc)))
            return
        st.rerun()


def identity_gate() -> Identity:
    """The identity of this run, or render why there is none (and what to do) and stop the page."""
    try:
        ident = _from_link()
        if ident is None and auth.researcher_enabled():
            ident = _local()
    except team.LinkError as exc:
        st.error(str(exc), icon=":material/link_off:")
        if auth.researcher_enabled() and team.INVITE_PARAM not in st.query_params \
                and team.CAMPAIGN_PARAM not in st.query_params:
            local_form()
        st.stop()
    if ident is None:
        if auth.researcher_enabled():
            local_form()
        else:
            st.info("Labeling needs your personal link: ask your researcher for one.", icon=":material/link:")
        st.stop()
    st.session_state[_KEY] = ident
    _note_ignored(ident)
    return ident


def switch_local() -> None:
    """Forget who labels on this machine (the "Switch annotator" button of the local identity)."""
    with _db().write() as s:
        team.clear_local_annotator(s)
    st.session_state.pop(_KEY, None)
