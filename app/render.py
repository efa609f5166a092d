"""Rendering untrusted text (prompts, responses, annotator and file names) safely.

Nothing here passes ``unsafe_allow_html``: Streamlit then shows raw HTML (``<script>``, ``<img onerror=...>``)
as text. On top of that, Markdown links and autolinks to ``javascript:``, ``vbscript:``, ``data:`` and
``file:`` URLs are escaped so that they show as their literal text instead of a link. Fenced code blocks are
left untouched (they render as code anyway).
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import streamlit as st

_SCHEMES = r"(?:javascript|vbscript|data|file)"
_INLINE_LINK = re.compile(r"\[([^\]\n]*)\]\(\s*(<?\s*" + _SCHEMES + r"\s*:)", re.IGNORECASE)
_REF_DEF = re.compile(r"^(\s{0,3})\[([^\]\n]+)\]:(\s*<?\s*" + _SCHEMES + r"\s*:)", re.IGNORECASE | re.MULTILINE)
_AUTOLINK = re.compile(r"<(\s*" + _SCHEMES + r"\s*:)", re.IGNORECASE)
_FENCE = re.compile(r"(^ {0,3}(?:```|~~~).*?(?:^ {0,3}(?:```|~~~)[^\n]*$|\Z))", re.MULTILINE | re.DOTALL)
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#+\-.!|~$])")


def defang_links(text: str) -> str:
    """Escape Markdown links whose target uses a script-capable URL scheme, outside fenced code blocks."""
    parts = _FENCE.split(text)
    for i in range(0, len(parts), 2):  # even parts are outside fences
        p = _INLINE_LINK.sub(lambda m: "\\[" + m.group(1) + "\\]\\(" + m.group(2), parts[i])
        p = _REF_DEF.sub(lambda m: m.group(1) + "\\[" + m.group(2) + "\\]:" + m.group(3), p)
        parts[i] = _AUTOLINK.sub(lambda m: "\\<" + m.group(1), p)
    return "".join(parts)


def escape_md(text: str) -> str:
    """Escape every Markdown special character: the text shows literally (names, file names, short labels)."""
    return _MD_SPECIAL.sub(r"\\\1", text.replace("\n", " "))


def safe_markdown(text: str, **kw: object) -> None:
    """Render untrusted Markdown (code blocks included) with HTML shown as text and script links defanged."""
    st.markdown(defang_links(text), unsafe_allow_html=False, **kw)  # type: ignore[arg-type]


def show_conversation(history: Sequence[tuple[str, str]], prompt: str) -> None:
    """Earlier turns as chat messages, then the prompt as the last user message."""
    for role, content in history:
        with st.chat_message("assistant" if role in ("assistant", "bot", "gpt", "model") else "user"):
            safe_markdown(content)
    with st.chat_message("user"):
        safe_markdown(prompt)


def pct(x: float | None) -> str:
    """A share for display: ``61.9%``, or ``n/a`` when unknown (None or NaN)."""
    return "n/a" if x is None or x != x else f"{x:.1%}"
