"""Resources shared by every page and session of the app.

``database()`` is one :class:`db.session.Database` per database URL and server process
(``st.cache_resource``); it is thread-safe, so all sessions share it. ``settings()`` reads the environment on
each call (cheap) so tests that change ``RMSTUDIO_DB`` get a fresh database.
"""
from __future__ import annotations

import streamlit as st

from db.config import Settings
from db.session import Database

__all__ = ["database", "settings", "empty_state_hint"]


def settings() -> Settings:
    """The process settings (``RMSTUDIO_HOME``, ``RMSTUDIO_DB``, token, upload cap)."""
    return Settings.from_env()


@st.cache_resource(show_spinner="Opening the database...")
def _database(url: str) -> Database:
    return Database(url)


def database() -> Database:
    """The shared, migrated database of this server process."""
    return _database(settings().db_url)


def empty_state_hint() -> None:
    """Explain how to get data into a fresh database (shown by pages that have nothing to show)."""
    st.info(
        "The database is empty. Load the built-in demo data with `rmstudio seed-demo`, "
        "or import your own preference data on the **Data** page (or `rmstudio import FILE`).",
        icon=":material/school:",
    )
