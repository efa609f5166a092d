"""What the researchers' pages say where they have nothing to show, or show a value that needs a word: what
would fill an empty chart or table, with a link to the page that does, and plain notes on odd values."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import streamlit as st
from streamlit.errors import StreamlitAPIException

from rm_engine.metrics import TEMPERATURE_BOUNDS, accuracy_std_error

_VIEWS = Path(__file__).resolve().parent / "views"


def page_link(page: str, label: str | None = None) -> None:
    """A link to another page of the app (``page``: its script under ``app/views``, e.g. ``"data.py"``, titled
    like the file in the navigation of ``app/main.py``). Where that page is not in the navigation (a labeler's
    session, or one page run on its own) the label shows as text."""
    if not (_VIEWS / page).is_file():
        raise ValueError(f"no page {page!r} under app/views")
    title = page.removesuffix(".py").capitalize()
    text = label or f"Open the {title} page"
    try:
        st.page_link(f"views/{page}", label=text, icon=":material/arrow_forward:")
    except StreamlitAPIException:  # not registered in this session's navigation
        st.caption(f"{text} (the **{title}** page).")


def nothing_yet(message: str, page: str | None = None, label: str | None = None) -> None:
    """An empty chart's or table's place: what would fill it (``message``) and a link to where that is done."""
    st.info(message, icon=":material/info:")
    if page is not None:
        page_link(page, label)


def temperature_note(temp: Mapping[str, Any]) -> str:
    """One line on a version's fitted temperature (``rm_engine.metrics.temperature_calibration``), saying what a
    value at either bound of the fit means; empty when none was fitted."""
    t, n = temp.get("temperature"), temp.get("n")
    if not t:
        return ""
    before, after = temp.get("ece_before"), temp.get("ece_after")
    ece = (f"; ECE {before:.3f} -> {after:.3f} there" if isinstance(before, (int, float))
           and isinstance(after, (int, float)) else "")
    line = (f"Temperature {t:.2f} fitted on {n} validation pairs: calibrated P(a over b) = sigmoid(margin / T){ece}.")
    low, high = TEMPERATURE_BOUNDS
    if t >= high * 0.999:
        line += (f" {high:g} is the fit's upper limit: on these pairs the margins predict the labels no better than "
                 "chance (or the wrong way), so every calibrated probability is close to 50%. More or cleaner "
                 "labels, or another recipe, change that; the uncalibrated scores still rank responses.")
    elif t <= low * 1.001:
        line += (f" {low:g} is the fit's lower limit: every validation pair was ranked the right way, so the "
                 "margins could be scaled up without end; with more validation pairs the value becomes finite.")
    return line


def validation_noise(val_acc: float | None, n_val: int | None) -> str:
    """How far one validation split can be trusted, and where a steadier estimate comes from."""
    se = accuracy_std_error(val_acc, n_val)
    if se is None or n_val is None:
        return ""
    few = f" Only {n_val} validation pairs: these numbers are noisy." if n_val < 30 else ""
    cv = (" For a steadier estimate, cross-validate over all pairs (the Train page's \"Cross-validate these "
          "settings\", or `rmstudio cv --folds 10`)." if se > 0.02 else "")
    return f" ±{100 * se:.1f} points (one standard error on {n_val} pairs).{few}{cv}"
