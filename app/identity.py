"""Who is labeling: an annotator name and a source, remembered across reruns and page reloads.

The identity lives in ``st.session_state`` (reruns) and in the URL's query parameters ``annotator`` and
``source`` (reloads and bookmarks). It is not authentication: anyone may type any name. Researcher rights come
from :mod:`app.auth`.
"""
from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from db.models import Source

_KEY = "rmstudio_identity"
MAX_NAME = 100


@dataclass(frozen=True)
class Identity:
    """An annotator's name and the source their labels are recorded with."""

    name: str
    source: Source


def _valid_name(name: str | None) -> str | None:
    name = (name or "").strip()
    if not name or len(name) > MAX_NAME or any(ord(c) < 32 for c in name):
        return None
    return name


def _from_query() -> Identity | None:
    name = _valid_name(st.query_params.get("annotator"))
    src = st.query_params.get("source", Source.crowd.value)
    if name is None or src not in {s.value for s in Source}:
        return None
    return Identity(name, Source(src))


def current_identity() -> Identity | None:
    """The identity of this browser session, from session state or (after a reload) the URL; None if unset."""
    ident = st.session_state.get(_KEY)
    if ident is None:
        ident = _from_query()
        if ident is not None:
            st.session_state[_KEY] = ident
    if ident is not None and st.query_params.get("annotator") != ident.name:
        # Page switches may drop query parameters: put them back so a reload keeps the identity.
        st.query_params["annotator"] = ident.name
        st.query_params["source"] = ident.source.value
    return ident


def set_identity(name: str, source: Source | str) -> Identity:
    """Remember ``name``/``source`` for this session and in the URL. Raises ValueError on a bad name."""
    clean = _valid_name(name)
    if clean is None:
        raise ValueError(f"annotator name must be 1-{MAX_NAME} printable characters, got {name!r}")
    ident = Identity(clean, Source(source))
    st.session_state[_KEY] = ident
    st.query_params["annotator"] = ident.name
    st.query_params["source"] = ident.source.value
    return ident


def clear_identity() -> None:
    """Forget the identity (the "switch annotator" button)."""
    st.session_state.pop(_KEY, None)
    for k in ("annotator", "source"):
        if k in st.query_params:
            del st.query_params[k]


def identity_form() -> Identity | None:
    """Render the "who are you" form when no identity is set; returns the identity (possibly just set)."""
    ident = current_identity()
    if ident is not None:
        return ident
    st.subheader("Who is labeling?")
    with st.form("identity"):
        name = st.text_input("Your name", max_chars=MAX_NAME, placeholder="e.g. alice")
        source = st.radio(
            "Source",
            [s.value for s in Source],
            index=1,
            horizontal=True,
            help="expert: domain experts; crowd: paid or volunteer labelers; ai: labels produced by a model.",
        )
        ok = st.form_submit_button("Start labeling", type="primary")
    if ok:
        try:
            ident = set_identity(name, source)
        except ValueError as exc:
            st.error(str(exc))
            return None
        st.rerun()
    return None
