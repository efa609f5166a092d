"""Data page (researchers): being built."""
from __future__ import annotations

import streamlit as st

from app.auth import require_researcher

require_researcher()
st.title("Data")
