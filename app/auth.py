"""Researcher rights.

* ``RMSTUDIO_RESEARCHER_TOKEN`` set: researcher pages ask for the token and refuse without it.
* An OIDC provider configured in Streamlit secrets (an ``[auth]`` section): researcher pages need ``st.login``
  (and the token too, when one is set).
* Neither: the app runs open for a single user (laptop mode): every page is available, except to a session opened
  through a labeler's personal or campaign link (``?invite=``, ``?campaign=``), which gets the Label page only.

The token is compared in constant time and kept only in this browser session's state (never in the URL).
"""
from __future__ import annotations

import hmac

import streamlit as st

from app.resources import settings

_KEY = "rmstudio_researcher_ok"


def _token() -> str | None:
    return settings().researcher_token


def oidc_configured() -> bool:
    """Whether Streamlit secrets hold an ``[auth]`` section (an OIDC provider for ``st.login``)."""
    try:
        return "auth" in st.secrets
    except Exception:  # noqa: BLE001 - no secrets file at all, or one Streamlit cannot parse
        return False


def _logged_in() -> bool:
    try:
        return bool(st.user.is_logged_in)
    except Exception:  # noqa: BLE001 - no login configured: st.user raises
        return False


def auth_required() -> bool:
    """Whether researcher pages are protected at all (a token or an OIDC provider is configured)."""
    return _token() is not None or oidc_configured()


def _labeler_link() -> bool:
    return "invite" in st.query_params or "campaign" in st.query_params


def researcher_enabled() -> bool:
    """Whether this session may see researcher pages and take destructive actions."""
    if oidc_configured() and not _logged_in():
        return False
    token = _token()
    if token is None:  # logged in through the provider, or open mode (where a labeler's link gets no rights)
        return oidc_configured() or not _labeler_link()
    return bool(st.session_state.get(_KEY))


def check_token(candidate: str) -> bool:
    """Compare ``candidate`` with the configured token in constant time; remember success in the session."""
    token = _token()
    ok = token is not None and hmac.compare_digest(candidate.encode("utf-8"), token.encode("utf-8"))
    if ok:
        st.session_state[_KEY] = True
    return ok


def sign_out() -> None:
    """Drop researcher rights in this session."""
    st.session_state.pop(_KEY, None)


def researcher_sign_in(where: str = "main") -> None:
    """Render the sign-in controls (OIDC login button and/or token form) for a session without rights."""
    if oidc_configured() and not _logged_in():
        st.button("Log in (researchers)", on_click=st.login, key=f"login_{where}")
        return
    if _token() is None:
        return
    with st.form(f"researcher_token_{where}"):
        cand = st.text_input("Researcher access token", type="password")
        ok = st.form_submit_button("Unlock researcher pages")
    if ok:
        if check_token(cand):
            st.rerun()
        st.error("Wrong researcher token.")


def require_researcher() -> None:
    """Stop the page unless this session has researcher rights (showing how to get them)."""
    if researcher_enabled():
        return
    st.warning("This page is for researchers. Enter the researcher access token to continue.", icon=":material/lock:")
    researcher_sign_in("page")
    st.stop()
