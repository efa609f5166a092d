"""RM Studio web app: one ``st.navigation`` app. Run with ``rmstudio serve`` or ``streamlit run app/main.py``.

Labelers see only the Label page; researchers (see :mod:`app.auth`) also see Train, Dashboard, Inspect and Data.
"""
from __future__ import annotations

import sys
from pathlib import Path

# `streamlit run app/main.py` puts app/ (not the repository root) on sys.path; make `import app.*` work.
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import streamlit as st  # noqa: E402

from app import auth, label_view  # noqa: E402

# The favicon is a file of the package: an emoji or material icon would make the browser fetch it from a CDN, and
# the app must work offline.
st.set_page_config(page_title="RM Studio", page_icon=Path(__file__).resolve().parent / "assets" / "favicon.png",
                   layout="wide")

_PAGES = Path(__file__).resolve().parent / "views"

label = st.Page(_PAGES / "label.py", title="Label", icon=":material/thumbs_up_down:", default=True)
pages = [label]
if auth.researcher_enabled():
    pages += [
        st.Page(_PAGES / "train.py", title="Train", icon=":material/model_training:"),
        st.Page(_PAGES / "dashboard.py", title="Dashboard", icon=":material/monitoring:"),
        st.Page(_PAGES / "inspect.py", title="Inspect", icon=":material/search:"),
        st.Page(_PAGES / "data.py", title="Data", icon=":material/database:"),
    ]

nav = st.navigation(pages)

with st.sidebar:
    if auth.auth_required():
        if auth.researcher_enabled():
            if auth.oidc_configured():
                st.button("Log out", on_click=st.logout)
            elif st.button("Lock researcher pages"):
                auth.sign_out()
                st.rerun()
        else:
            with st.expander("Researcher sign-in"):
                auth.researcher_sign_in("sidebar")

nav.run()
# Every page's first run loaded the libraries: keep them out of the collection Streamlit runs after each rerun.
label_view.freeze_loaded_objects()
