"""The Data page's Team tab (researchers): who labels on this machine, annotators and their tiers, personal links,
crowd campaigns. The logic is ``db/annotators.py``; every change is audited as the researcher (``review_view.act``).
"""
from __future__ import annotations

from urllib.parse import urlsplit

import pandas as pd
import streamlit as st

from app.render import escape_md
from app.resources import database
from app.review_view import act
from db import annotators as team

LINK = "team_link"  # (what, url) of the link made last: shown until the next action
MSG = "team_msg"
TIERS = [t.value for t in team.HUMAN_TIERS]
KEEP, RETAG = "keep", "retag"


def _say(kind: str, text: str) -> None:
    st.session_state[MSG] = (kind, text)


def _context_base() -> str:
    """The app's address as this browser reached it (scheme and host)."""
    parts = urlsplit(getattr(st.context, "url", None) or "")
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else "http://localhost:8501"


def _base_url() -> str:
    """Where links point: the address typed on the tab, else the one this browser used."""
    return (st.session_state.get("team_base_url") or "").strip() or _context_base()


def on_add() -> None:
    name, tier = st.session_state.get("team_add_name", ""), st.session_state.get("team_add_tier", "crowd")
    if act("add the annotator", lambda s, by: team.add_annotator(s, name, tier, by=by))[0]:
        _say("success", f"Added {escape_md(name.strip())} as {tier}. Create their personal link below.")
        st.session_state["team_pick"] = name.strip()
        _forget_tier()


def on_tier(name: str) -> None:
    tier, how = st.session_state.get("team_tier"), st.session_state.get("team_retag")
    if how not in (KEEP, RETAG):
        _say("error", "Say what happens to their earlier labels first.")
        return
    ok, done = act("change the tier", lambda s, by: team.set_tier(s, name, tier, by=by, retag=how == RETAG))
    if ok:
        _forget_tier()
        again = f", {done.retagged} earlier label(s) re-tagged" if how == RETAG else ", earlier labels keep their tier"
        _say("success", f"{escape_md(name)}: {done.old} -> {done.new}{again}.")


def on_invite(name: str) -> None:
    ok, token = act("create the link", lambda s, by: team.invite(s, name, by=by))
    if ok:
        st.session_state[LINK] = (f"Personal link of {escape_md(name)} (shown once; an earlier link of theirs stops "
                                  "working)",
                                  team.invite_url(_base_url(), str(token)))
        st.session_state.pop(MSG, None)


def on_revoke(name: str) -> None:
    if act("revoke", lambda s, by: team.revoke(s, name, by=by))[0]:
        st.session_state.pop(LINK, None)
        _say("success", f"{escape_md(name)}'s link is revoked: it labels nothing from now on.")


def on_campaign() -> None:
    name = st.session_state.get("team_campaign_name", "")
    ok, token = act("open the campaign", lambda s, by: team.open_campaign(s, name, by=by))
    if ok:
        st.session_state[LINK] = (f"Campaign link of {escape_md(name.strip())}: Prolific appends `PROLIFIC_PID` when you tick "
                                  "'URL parameters'; elsewhere append `&worker_id=<the worker's id>`",
                                  team.campaign_url(_base_url(), str(token)))
        st.session_state.pop(MSG, None)


def on_close(name: str) -> None:
    if act("close the campaign", lambda s, by: team.close_campaign(s, name, by=by))[0]:
        _say("success", f"Campaign {escape_md(name)} is closed: its link labels nothing from now on.")


def on_local() -> None:
    name, tier = st.session_state.get("team_me_name", ""), st.session_state.get("team_me_tier", "crowd")
    if act("set who labels here", lambda s, by: team.set_local_annotator(s, name, tier, by=by))[0]:
        _say("success", f"On this machine you label as {escape_md(name.strip())} ({tier}).")


def _messages() -> None:
    if msg := st.session_state.get(MSG):
        getattr(st, msg[0])(msg[1])
    if link := st.session_state.get(LINK):
        st.markdown(link[0])  # names in it are escaped
        st.code(link[1], language=None)


def team_tab() -> None:
    """The Team tab."""
    with database().read() as s:
        me = team.local_annotator(s)
        me_name, me_tier = (me.name, me.default_source.value) if me is not None else (None, None)
        members = team.team(s)
        camps = team.campaigns(s)
    _messages()
    st.markdown("**You** on this machine: " + (f"**{escape_md(me_name)}** ({me_tier} tier)" if me_name else
                                                "not set yet")
                + ". Labelers elsewhere label through their personal link or a campaign link.")
    with st.expander("Who labels on this machine", expanded=me_name is None):
        c = st.columns([2, 2, 1], vertical_alignment="bottom")
        c[0].text_input("Name", value=me_name or "", key="team_me_name", max_chars=team.MAX_NAME)
        c[1].radio("Tier", TIERS, index=TIERS.index(me_tier) if me_tier in TIERS else 1, key="team_me_tier",
                   horizontal=True)
        c[2].button("Save", on_click=on_local, key="team_me_save")

    st.markdown("**Add an annotator**")
    c = st.columns([2, 2, 1], vertical_alignment="bottom")
    c[0].text_input("Name", key="team_add_name", max_chars=team.MAX_NAME, placeholder="e.g. alice")
    c[1].radio("Tier", TIERS, index=1, key="team_add_tier", horizontal=True,
               help="expert: the gold standard others are measured against, weighed more in training; crowd: "
                    "everyone else. ai is for machine labelers and imports only.")
    c[2].button("Add", on_click=on_add, key="team_add", type="primary")

    if members:
        st.dataframe(pd.DataFrame([m.__dict__ for m in members]), hide_index=True, key="team_table")
        _manage(members)
    _campaigns(camps)
    st.text_input("App address for links", key="team_base_url", placeholder=_context_base(),
                  help="where labelers reach this app; links are built on it")


def _forget_tier() -> None:
    """Another annotator picked: their tier controls start from their own tier, with nothing asked yet."""
    for k in ("team_tier", "team_retag"):
        st.session_state.pop(k, None)


def _manage(members: list[team.TeamMember]) -> None:
    people = [m for m in members if m.link != "machine or import"] or members
    names = [m.name for m in people]
    if st.session_state.get("team_pick") not in names:
        st.session_state["team_pick"] = names[0]
    name = st.selectbox("Annotator", names, key="team_pick", on_change=_forget_tier)
    m = next(p for p in people if p.name == name)
    c = st.columns(3)
    with c[0]:
        tier = st.radio("Tier", TIERS, index=TIERS.index(m.tier) if m.tier in TIERS else 1, key="team_tier",
                        horizontal=True)
        if tier != m.tier:
            st.radio(f"Their {m.labels} earlier label(s), made as {m.tier}", [KEEP, RETAG], index=None,
                     key="team_retag", format_func=lambda h: {KEEP: f"keep {m.tier}", RETAG: f"re-tag as {tier}"}[h])
            st.button("Change tier", on_click=on_tier, args=(name,), key="team_set_tier")
    c[1].button("Create personal link", on_click=on_invite, args=(name,), key="team_invite",
                icon=":material/link:", disabled=m.tier not in TIERS)
    c[2].button("Revoke link", on_click=on_revoke, args=(name,), key="team_revoke", icon=":material/link_off:",
                disabled=m.link == "revoked")


def _campaigns(camps: list[dict[str, object]]) -> None:
    st.markdown("**Crowd campaigns**: one shared link; each worker (Prolific's `PROLIFIC_PID` or `worker_id` in "
                "the address) becomes a crowd annotator `<campaign>:<id>` on first visit, never an expert.")
    c = st.columns([2, 1], vertical_alignment="bottom")
    c[0].text_input("Campaign name", key="team_campaign_name", placeholder="e.g. prolific-march")
    c[1].button("Open campaign link", on_click=on_campaign, key="team_campaign_open")
    if camps:
        st.dataframe(pd.DataFrame(camps), hide_index=True, key="team_campaigns")
        open_ = [str(x["name"]) for x in camps if x["open"]]
        if open_:
            c = st.columns([2, 1], vertical_alignment="bottom")
            pick = c[0].selectbox("Open campaign", open_, key="team_campaign_pick")
            c[1].button("Close campaign", on_click=on_close, args=(pick,), key="team_campaign_close")
