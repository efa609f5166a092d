"""The Label page's labeling area: one ``st.fragment`` (a verdict reruns it alone, nothing else on the page), with
the prompt (earlier turns folded), the responses in panes that scroll on their own, and the verdict bar pinned at
the bottom of the window whatever the responses' length; every action has a key, listed under the bar.

Layout is this module's own static CSS (``CSS``, the only Markdown rendered with HTML allowed): the panes take the
window's height less the page's header and the bar, code blocks scroll sideways inside them, and on narrow screens
(Streamlit stacks the columns) each pane is capped at half the window. Untrusted text goes through
``app.render.safe_markdown`` only.
"""
from __future__ import annotations

import gc
from collections.abc import Sequence
from datetime import datetime, timezone

import streamlit as st

from app import label_recent as recent
from app import label_session as ls
from app import rank_session as rs
from app.identity import Identity
from app.render import escape_md, safe_markdown
from db.label_history import RecentLabel
from db.labeling import QueueItem

CSS = """<style>
[data-testid="stMainBlockContainer"] { padding-top: 3.2rem; padding-bottom: 0.5rem; }
[data-testid="stMainBlockContainer"] h1 { font-size: 1.75rem; padding: 0.25rem 0; }
.stVerticalBlock.st-key-lbl_prompt { max-height: 20vh; flex: none; overflow-y: auto; }
.st-key-lbl_prompt [data-testid="stChatMessage"] { padding: 0.4rem 0.75rem; }
.st-key-lbl_prompt [data-testid="stExpander"] summary { padding-top: 0.3rem; padding-bottom: 0.3rem; }
.stVerticalBlock[class*="st-key-lbl_pane"] { height: max(10rem, calc(100vh - 23.5rem)); flex: none; overflow-y: auto; }
.stVerticalBlock[class*="st-key-lbl_pane_r1"] { height: max(9rem, calc(100vh - 27rem)); }
.stVerticalBlock[class*="st-key-lbl_pane_r2"] { height: max(7rem, calc(50vh - 13.5rem)); }
[class*="st-key-lbl_pane"] [data-testid="stMarkdownContainer"] { min-width: 0; }
[class*="st-key-lbl_pane"] pre { overflow-x: auto; max-width: 100%; }
[class*="st-key-lbl_pane"] pre code { white-space: pre; }
[data-testid="stLayoutWrapper"]:has(> .st-key-lbl_bar) { position: sticky; bottom: 0; z-index: 90;
  background-color: var(--lbl-bg, #fff); box-shadow: 0 -0.5rem 0.5rem -0.5rem rgba(0, 0, 0, 0.2); }
.st-key-lbl_bar { padding: 0.4rem 0 0.1rem 0; }
.st-key-lbl_bar [data-testid="stCaptionContainer"] { margin-top: -0.6rem; }
@media (prefers-color-scheme: dark) { [data-testid="stLayoutWrapper"]:has(> .st-key-lbl_bar) { --lbl-bg: #0e1117; } }
@media (max-width: 640px) { .stVerticalBlock[class*="st-key-lbl_pane"] { height: 50vh; } }
</style>"""

LEGEND = {
    "pairs": "Keys: **1** A better · **2** B better · **3** tie · **4** both bad · **5** skip · **Q** / **W** slightly /"
             " clearly better (then 1 or 2) · **U** undo · **B** my recent labels · **F** flag",
    "flag": "Keys: **1**-**4** the reason (type a comment first, then Tab) · **Esc** cancel",
    "recent": "Keys: **1**-**4** change the verdict to A better, B better, tie, both bad (**Q** / **W** strength first) ·"
              " **B** older · **N** newer · **Esc** back to labeling",
    "rank": "Keys: **1**-**9** give that response the next rank (1 = best) · **Backspace** take back the last rank · "
            "**Enter** submit · **S** skip · **U** undo my last ranking (its ranks come back)",
}


def freeze_loaded_objects() -> None:
    """Leave every object loaded so far (the libraries' modules, classes and functions) out of Python's garbage
    collections, once per server process (``gc.freeze``).

    Streamlit runs a full collection after every script run, the labeling area's included, holding Python's lock:
    over the ~170,000 objects of the imported libraries that takes 100-150 ms, while the pair just drawn waits to be
    sent to the browser. Frozen objects are still freed as soon as nothing refers to them; only reference cycles among
    them are never collected, and there are none to speak of in loaded code."""
    if gc.get_freeze_count() == 0:
        gc.collect()
        gc.freeze()


def style() -> None:
    """The page's static layout CSS, in a hidden container (it takes no room)."""
    with st.container(key="lbl_css"):
        st.markdown(CSS, unsafe_allow_html=True)


@st.fragment
def labeling(ident: Identity, mode: str) -> None:
    """The labeling area; its buttons rerun this fragment only."""
    if ls.revoked():  # the account was revoked: the whole page runs again and says so
        st.rerun()
    if err := st.session_state.get(ls.ERROR):
        st.error(err)
    if note := st.session_state.pop(ls.NOTICE, None):
        st.toast(note)
    if mode == "rank":
        _rank_area(ident)
    elif (rec := recent.showing()) is not None:
        _recent_area(rec, ident)
    else:
        _pair_area(ident)


def _top(caption: str) -> None:
    with st.container(horizontal=True, gap="medium"):
        st.caption(caption)
        st.caption(ls.progress_line())


def _conversation(history: Sequence[tuple[str, str]], prompt: str) -> None:
    with st.container(key="lbl_prompt"):
        if history:
            with st.expander(f"Earlier turns ({len(history)})", icon=":material/forum:"):
                for role, content in history:
                    with st.chat_message("assistant" if role in ("assistant", "bot", "gpt", "model") else "user"):
                        safe_markdown(content)
        with st.chat_message("user"):
            safe_markdown(prompt)


def _panes(left: str, right: str) -> None:
    cols = st.columns(2, gap="small")
    for col, name, text in ((cols[0], "A", left), (cols[1], "B", right)):
        with col.container(border=True, key=f"lbl_pane_{name.lower()}"):
            st.markdown(f"**Response {name}**")
            safe_markdown(text)


def _strength_buttons(key: str) -> None:
    for name, k in ls.STRENGTH_KEYS.items():
        st.button(name.capitalize(), key=f"lbl_str_{name}", shortcut=k, on_click=ls.on_strength, args=(key, name),
                  type="primary" if st.session_state.get(key) == name else "secondary")


def _verdicts(on_click: object, args: tuple[object, ...], suffix: str, current: str | None = None) -> None:
    for choice, label in ls.VERDICTS.items():
        kind = "primary" if (choice == current if current else choice in ("left", "right")) else "secondary"
        st.button(label, key=f"{choice}_{suffix}", shortcut=ls.VERDICT_KEYS[choice], on_click=on_click,  # type: ignore[arg-type]
                  args=(choice, *args), type=kind)


def _pair_area(ident: Identity) -> None:
    item = ls.current_item(ident)
    if item is None:
        st.caption(ls.progress_line())
        st.success("Nothing left for you to label under the current queue policy. Thank you!")
        with st.container(horizontal=True):
            st.button("Undo my last label", on_click=ls.on_undo, args=(ident,), shortcut="u", key="undo_empty")
            st.button("My recent labels", on_click=recent.on_back, args=(ident,), shortcut="b", key="back_empty")
        return
    # no queue reason nor label count: control pairs (already labelled by an expert) must look like any other
    _top(f"Pair #{item.comparison_id}" + (f" · {escape_md(item.category)}" if item.category else ""))
    _conversation(item.history, item.prompt)
    _panes(item.left_text, item.right_text)
    with st.container(key="lbl_bar"):
        if ls.flagging(item):
            _flag_bar(item, ident)
        else:
            with st.container(horizontal=True, gap="small"):
                _verdicts(ls.on_choice, (item, ident), item.key)
                st.button("Skip", on_click=ls.on_skip, args=(item, ident), shortcut="5", key="lbl_skip")
                _strength_buttons(ls.strength_key(item))
                st.button("Undo", on_click=ls.on_undo, args=(ident,), shortcut="u", key="lbl_undo",
                          icon=":material/undo:")
                st.button("My labels", on_click=recent.on_back, args=(ident,), shortcut="b", key="lbl_back",
                          icon=":material/history:")
                st.button("Flag", on_click=ls.on_flag_mode, args=(item,), shortcut="f", key="lbl_flagmode",
                          icon=":material/flag:")
            st.caption(LEGEND["pairs"])
    if item.n_responses >= 3 and rs.has_rankable_prompts():
        st.caption("This prompt has more responses: rank them all in 'Rank 3+ responses' mode.")
    ls.prefetch(ident)  # while the labeler reads: the next verdict then has nothing to query


def _flag_bar(item: QueueItem, ident: Identity) -> None:
    st.markdown("**Flag this pair: why can't you judge it?** It goes to the researchers' review.")
    with st.container(horizontal=True, gap="small", vertical_alignment="center"):
        for i, reason in enumerate(ls.FLAG_REASONS, start=1):
            st.button(ls.FLAG_TEXT[reason], key=f"flag_{reason}_{item.key}", shortcut=str(i), on_click=ls.on_flag,
                      args=(item, ident, reason), type="primary")
        st.text_input("Comment (optional)", key=ls.flag_comment_key(item), label_visibility="collapsed",
                      placeholder="Comment (optional)", width=320)
        st.button("Cancel", key=f"flagcancel_{item.key}", shortcut="Esc", on_click=ls.on_flag_mode, args=(None,))
    st.caption(LEGEND["flag"])


def _ago(at: datetime) -> str:
    s = (datetime.now(timezone.utc) - (at if at.tzinfo else at.replace(tzinfo=timezone.utc))).total_seconds()
    return "just now" if s < 60 else f"{s / 60:.0f} min ago" if s < 3600 else at.strftime("%Y-%m-%d %H:%M UTC")


def _recent_area(rec: RecentLabel, ident: Identity) -> None:
    n, of = recent.position()
    strength = f" ({recent.STRENGTH_NAMES[rec.strength]})" if rec.strength else ""
    _top(f"Pair #{rec.comparison_id}" + (f" · {escape_md(rec.category)}" if rec.category else ""))
    st.markdown(f":material/history: My label {n} of the last {of}, {_ago(rec.created_at)}: "
                f"**{ls.VERDICTS[rec.choice]}**{strength}" + (" (changed)" if rec.changed else "")
                + ". A new verdict replaces it.")
    _conversation(rec.history, rec.prompt)
    _panes(rec.left_text, rec.right_text)
    with st.container(key="lbl_bar"):
        with st.container(horizontal=True, gap="small"):
            _verdicts(recent.on_change, (rec, ident), f"r{rec.label_id}", current=rec.choice)
            _strength_buttons(recent.strength_key(rec))
            st.button("Older", key=f"older_{rec.label_id}", shortcut="b", on_click=recent.on_back, args=(ident,),
                      icon=":material/arrow_back:", disabled=n >= of)
            st.button("Newer", key=f"newer_{rec.label_id}", shortcut="n", on_click=recent.on_forward,
                      icon=":material/arrow_forward:")
            st.button("Back to labeling", key=f"leave_{rec.label_id}", shortcut="Esc", on_click=recent.on_leave,
                      icon=":material/keyboard_return:")
        st.caption(LEGEND["recent"])


def _rank_area(ident: Identity) -> None:
    task = rs.current_task(ident)
    if task is None:
        st.caption(ls.progress_line())
        st.success("No prompt left for you to rank. Thank you!")
        st.button("Undo my last ranking", on_click=rs.on_rank_undo, args=(ident,), shortcut="u", key="rundo_empty")
        return
    k = len(task.texts)
    _top(f"Prompt #{task.prompt_id}" + (f" · {escape_md(task.category)}" if task.category else ""))
    _conversation(task.history, task.prompt)
    rows = 1 if k <= 3 else 2
    for i, text in enumerate(task.texts):
        if i % 3 == 0:  # rows of up to three: reading order is Tab order
            cols = st.columns(min(3, k), gap="small")
        with cols[i % 3]:
            with st.container(border=True, key=f"lbl_pane_r{rows}_{i}"):
                st.button(f"Response {i + 1}", key=f"lbl_pick_{i}", on_click=rs.on_rank_next,
                          args=(task, i), type="tertiary", shortcut=str(i + 1) if i < rs.MAX_KEYED else None)
                safe_markdown(text)
            st.segmented_control(f"Rank of Response {i + 1}", rs.rank_options(k), key=rs.rank_key(task, i),
                                 on_change=rs.forget_rank_refusal, label_visibility="collapsed")
    missing = rs.rank_problem(rs.chosen_ranks(task))
    with st.container(key="lbl_bar"):
        with st.container(horizontal=True, gap="small", vertical_alignment="center"):
            # Never disabled: a click right after the last rank choice arrives while that choice's rerun runs, and a
            # button disabled in the render being replaced would swallow it. on_rank checks the ranks and says why.
            st.button("Submit ranking", on_click=rs.on_rank, args=(task, ident), type="primary", shortcut="Enter",
                      key=f"ranksubmit_{task.key}")
            st.button("Take back", on_click=rs.on_rank_back, args=(task,), shortcut="Backspace",
                      key="lbl_rankback")
            st.button("Skip", on_click=rs.on_rank_skip, args=(task, ident), shortcut="s", key="lbl_rankskip")
            st.button("Undo", on_click=rs.on_rank_undo, args=(ident,), shortcut="u", key="lbl_rankundo",
                      icon=":material/undo:")
            if missing:
                st.caption(missing)
        st.caption(LEGEND["rank"])
