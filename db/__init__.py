"""RM Studio data layer: schema, sessions, label/job/version stores, import and export.

This package never imports torch or streamlit.
"""
from db.config import Settings
from db.session import Database

__all__ = ["Settings", "Database"]
