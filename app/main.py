"""RM Studio web app: one ``st.navigation`` app. Run with ``rmstudio serve`` or ``streamlit run app/main.py``."""
from __future__ import annotations

import streamlit as st

st.set_page_config(page_title="RM Studio", page_icon=":material/balance:", layout="wide")

st.title("RM Studio")
st.write("The app is being built. Use `rmstudio --help` meanwhile.")
