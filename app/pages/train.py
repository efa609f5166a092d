"""Train page (placeholder: owned by RESEARCH, to be replaced)."""
from __future__ import annotations

import streamlit as st

from app.auth import require_researcher

require_researcher()
st.title("Train")
st.info("This page is being built.")
