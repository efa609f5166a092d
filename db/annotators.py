"""Annotator accounts: tiers assigned by researchers, personal links, crowd campaigns, the local researcher.

* A researcher adds each annotator with a **tier** (``expert`` or ``crowd``; ``ai`` is for machine labelers and
  imports, never for people). Labels made in the app are stored with the tier on record at the time
  (``labels.source``). Changing a tier says whether the earlier labels are re-tagged, and is audited.
* A **personal link** carries a secret token (``secrets.token_urlsafe``); only its sha256 is stored. Opening it
  labels as that annotator with that tier: nothing else in the address can change either. Revoking clears the
  hash (the link stops working at once) and bars the annotator from labeling in the app until invited again.
* A **campaign** is one shared link for a crowd platform: each worker who opens it with their id (Prolific's
  ``PROLIFIC_PID``, or ``worker_id``) becomes a crowd-tier annotator named ``<campaign>:<id>`` on first visit.
* Without a researcher token (a single user on their own machine) the person at the keyboard labels as the
  **local annotator**, named and tiered once (app setting ``local_annotator``).

Every function takes an open ``Session`` and never commits: the caller owns the transaction.
"""
from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlencode

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from db.models import Annotator, Campaign, Label, Ranking, Source, utcnow
from db.policy import get_setting, set_setting
from db.review import audit

HUMAN_TIERS = (Source.expert, Source.crowd)
INVITE_PARAM = "invite"  # the personal link's query parameter
CAMPAIGN_PARAM = "campaign"
WORKER_PARAMS = ("PROLIFIC_PID", "worker_id")  # where a campaign link finds the worker's id, first match wins
LOCAL_KEY = "local_annotator"
MAX_NAME = 100
_WORKER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")

__all__ = [
    "CAMPAIGN_PARAM", "HUMAN_TIERS", "INVITE_PARAM", "LOCAL_KEY", "LinkError", "TeamMember", "TierChange",
    "WORKER_PARAMS", "active_annotator", "add_annotator", "annotator_for_link", "campaign_url", "campaigns",
    "clear_local_annotator", "close_campaign", "find_campaign_worker", "get_annotator", "hash_token", "human_tier", "invite", "invite_url",
    "join_campaign", "label_counts", "local_annotator", "open_campaign", "revoke", "set_local_annotator", "set_tier",
    "team", "valid_name", "valid_worker_id",
]


class LinkError(Exception):
    """A link that labels nothing: unknown, revoked, closed, or missing the worker's id. The message says which."""


def hash_token(token: str) -> str:
    """The stored form of a link's secret."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def valid_name(name: str | None) -> str:
    """``name`` stripped; ValueError unless 1-100 printable characters."""
    clean = (name or "").strip()
    if not clean or len(clean) > MAX_NAME or any(ord(c) < 32 or ord(c) == 127 for c in clean):
        raise ValueError(f"an annotator name must be 1-{MAX_NAME} printable characters, got {name!r}")
    return clean


def human_tier(tier: Source | str) -> Source:
    """A person's tier: ``expert`` or ``crowd``; ValueError otherwise (``ai`` included: it is not for people)."""
    try:
        t = Source(tier)
    except ValueError:
        t = None
    if t not in HUMAN_TIERS:
        raise ValueError(f"a person's tier is expert or crowd (ai is for machine labelers and imports), got {tier!r}")
    return t  # type: ignore[return-value]


def get_annotator(session: Session, name: str) -> Annotator:
    """The annotator called ``name``; LookupError naming it otherwise."""
    found = session.scalar(select(Annotator).where(Annotator.name == (name or "").strip()))
    if found is None:
        raise LookupError(f"no annotator named {name!r}; add one first (Data page, Team tab, or "
                          f"`rmstudio annotators add NAME --tier expert|crowd`)")
    return found


def add_annotator(session: Session, name: str, tier: Source | str, *, by: str) -> Annotator:
    """Add a person to the team with ``tier`` (expert or crowd). ValueError if the name is taken."""
    clean, t = valid_name(name), human_tier(tier)
    if session.scalar(select(Annotator.id).where(Annotator.name == clean)) is not None:
        raise ValueError(f"annotator {clean!r} exists already; change their tier with `set` (Team tab: Change tier)")
    ann = Annotator(name=clean, default_source=t, created_at=utcnow())
    session.add(ann)
    session.flush()
    audit(session, by, "add", annotator_id=ann.id, detail={"tier": t.value})
    return ann


@dataclass(frozen=True)
class TierChange:
    """What :func:`set_tier` did: the tier before and after, and how many earlier labels and rankings it re-tagged."""

    name: str
    old: str
    new: str
    retagged: int


def label_counts(session: Session, annotator_id: int) -> dict[str, int]:
    """An annotator's labels and rankings per stored source (what a tier change could re-tag)."""
    out: dict[str, int] = {}
    for model in (Label, Ranking):
        for src, n in session.execute(select(model.source, func.count()).where(model.annotator_id == annotator_id)
                                      .group_by(model.source)):
            key = Source(src).value
            out[key] = out.get(key, 0) + int(n)
    return out


def set_tier(session: Session, name: str, tier: Source | str, *, by: str, retag: bool) -> TierChange:
    """Give an annotator a new tier (recorded: who, when, from, to). ``retag``: their earlier labels and rankings
    take the new tier too; otherwise they keep the tier they were made under."""
    ann = get_annotator(session, name)
    new = human_tier(tier)
    old = Source(ann.default_source)
    if old is new:
        return TierChange(ann.name, old.value, new.value, 0)
    n = 0
    if retag:
        for model in (Label, Ranking):
            res = session.execute(update(model).where(model.annotator_id == ann.id, model.source != new)
                                  .values(source=new).returning(model.id))
            n += len(res.all())
    ann.default_source = new
    audit(session, by, "tier", annotator_id=ann.id,
          detail={"from": old.value, "to": new.value, "retag": retag, "retagged": n})
    return TierChange(ann.name, old.value, new.value, n)


def invite(session: Session, name: str, *, by: str) -> str:
    """A new personal link token for ``name`` (an earlier link stops working; a revoked annotator may label again).
    Returns the token: it is shown once, only its hash is kept."""
    ann = get_annotator(session, name)
    if Source(ann.default_source) is Source.ai:
        raise ValueError(f"{ann.name!r} is an ai annotator (a machine labeler or an import): people get links; "
                         f"give them a tier with `set` first")
    token = secrets.token_urlsafe(32)
    ann.token_hash, ann.invited_at, ann.revoked_at = hash_token(token), utcnow(), None
    audit(session, by, "invite", annotator_id=ann.id)
    return token


def revoke(session: Session, name: str, *, by: str) -> None:
    """Stop ``name``'s personal link at once and bar them from labeling in the app (their labels stay)."""
    ann = get_annotator(session, name)
    ann.token_hash, ann.revoked_at = None, utcnow()
    audit(session, by, "revoke", annotator_id=ann.id)


def _with_query(base_url: str, params: dict[str, str]) -> str:
    base = (base_url or "").strip().split("?")[0].split("#")[0].rstrip("/")
    if not base:
        raise ValueError("the app's address is needed to build a link (e.g. http://localhost:8501)")
    return f"{base}/?{urlencode(params)}"


def invite_url(base_url: str, token: str) -> str:
    """The personal link: the app's address with ``?invite=<token>``."""
    return _with_query(base_url, {INVITE_PARAM: token})


def annotator_for_link(session: Session, token: str | None) -> Annotator:
    """The annotator whose personal link carries ``token``; LinkError when none (unknown or revoked)."""
    if token:
        found = session.scalar(select(Annotator).where(Annotator.token_hash == hash_token(token)))
        if found is not None and found.revoked_at is None:
            return found
    raise LinkError("This link does not work: it was revoked or never existed. Ask your researcher for a new one.")


def active_annotator(session: Session, annotator_id: int) -> Annotator:
    """The annotator, checked again before each write from the app; LinkError once revoked."""
    ann = session.get(Annotator, annotator_id)
    if ann is None or ann.revoked_at is not None:
        raise LinkError("Your access was revoked: nothing more is stored. Ask your researcher for a new link.")
    return ann


# ----------------------------------------------------------------------------------------------- campaigns


def open_campaign(session: Session, name: str, *, by: str) -> str:
    """Open (or reopen, with a new link) the crowd campaign ``name``; returns its token (only the hash is kept)."""
    clean = valid_name(name)
    if ":" in clean:
        raise ValueError(f"a campaign name cannot contain ':' (it separates campaign and worker), got {name!r}")
    camp = session.scalar(select(Campaign).where(Campaign.name == clean))
    if camp is None:
        camp = Campaign(name=clean, created_by=by, created_at=utcnow())
        session.add(camp)
    token = secrets.token_urlsafe(32)
    camp.token_hash, camp.closed_at = hash_token(token), None
    session.flush()
    audit(session, by, "campaign_open", detail={"campaign": clean})
    return token


def close_campaign(session: Session, name: str, *, by: str) -> None:
    """Close a campaign: its link stops working for new and returning workers alike."""
    camp = session.scalar(select(Campaign).where(Campaign.name == (name or "").strip()))
    if camp is None:
        raise LookupError(f"no campaign named {name!r}")
    camp.token_hash, camp.closed_at = None, utcnow()
    audit(session, by, "campaign_close", detail={"campaign": camp.name})


def campaign_url(base_url: str, token: str) -> str:
    """The campaign link; the platform appends the worker's id (Prolific: ``&PROLIFIC_PID=...``)."""
    return _with_query(base_url, {CAMPAIGN_PARAM: token})


def campaigns(session: Session) -> list[dict[str, object]]:
    """Every campaign: ``name``, ``open``, ``workers`` (annotators it created), ``created``."""
    counts = dict(session.execute(select(Annotator.campaign_id, func.count()).where(Annotator.campaign_id.is_not(None))
                                  .group_by(Annotator.campaign_id)).all())
    return [{"name": c.name, "open": c.closed_at is None and c.token_hash is not None, "workers": int(counts.get(c.id, 0)),
             "created": c.created_at} for c in session.scalars(select(Campaign).order_by(Campaign.id))]


def valid_worker_id(worker_id: str | None) -> str:
    """A platform's worker id: 1-64 letters, digits, ``_ . @ -``; LinkError otherwise."""
    wid = (worker_id or "").strip()
    if not _WORKER_ID.fullmatch(wid):
        raise LinkError("This campaign link needs your worker id in the address "
                        f"({' or '.join(WORKER_PARAMS)}: 1-64 letters, digits, '_', '.', '@' or '-').")
    return wid


def _campaign(session: Session, token: str | None) -> Campaign:
    camp = session.scalar(select(Campaign).where(Campaign.token_hash == hash_token(token))) if token else None
    if camp is None or camp.closed_at is not None:
        raise LinkError("This campaign link does not work: the campaign is closed or never existed.")
    return camp


def find_campaign_worker(session: Session, token: str | None, worker_id: str | None) -> Annotator | None:
    """The annotator a campaign link names, if their first visit already created them (read only)."""
    camp, wid = _campaign(session, token), valid_worker_id(worker_id)
    ann = session.scalar(select(Annotator).where(Annotator.campaign_id == camp.id, Annotator.worker_id == wid))
    if ann is not None and ann.revoked_at is not None:
        raise LinkError("Your access was revoked. Contact the study's researcher.")
    return ann


def join_campaign(session: Session, token: str | None, worker_id: str | None) -> Annotator:
    """The crowd-tier annotator of this campaign worker, created on their first visit (never an expert)."""
    found = find_campaign_worker(session, token, worker_id)
    if found is not None:
        return found
    camp, wid = _campaign(session, token), valid_worker_id(worker_id)
    name = f"{camp.name}:{wid}"
    if session.scalar(select(Annotator.id).where(Annotator.name == name)) is not None:
        raise LinkError(f"The name {name!r} belongs to another annotator; ask the researcher.")
    ann = Annotator(name=name, default_source=Source.crowd, campaign_id=camp.id, worker_id=wid, created_at=utcnow())
    session.add(ann)
    session.flush()
    audit(session, name, "join", annotator_id=ann.id, detail={"campaign": camp.name})
    return ann


# ----------------------------------------------------------------------------------------------- local researcher


def local_annotator(session: Session) -> Annotator | None:
    """The annotator the researcher labels as on their own machine (no researcher token), None until chosen."""
    value = get_setting(session, LOCAL_KEY)
    if not isinstance(value, dict) or not isinstance(value.get("annotator_id"), int):
        return None
    return session.get(Annotator, value["annotator_id"])


def set_local_annotator(session: Session, name: str, tier: Source | str, *, by: str | None = None) -> Annotator:
    """Label as ``name`` on this machine: added with ``tier`` if new; an existing person keeps the tier on record
    (ValueError when it differs from ``tier``: change it on the Team tab, which asks about earlier labels)."""
    clean, t = valid_name(name), human_tier(tier)
    ann = session.scalar(select(Annotator).where(Annotator.name == clean))
    if ann is None:
        ann = add_annotator(session, clean, t, by=by or clean)
    elif Source(ann.default_source) is not t:
        raise ValueError(f"{clean!r} is on record as {Source(ann.default_source).value}: change their tier on the "
                         f"Data page's Team tab (it asks about their earlier labels), or pick another name")
    set_setting(session, LOCAL_KEY, {"annotator_id": ann.id})
    return ann


def clear_local_annotator(session: Session) -> None:
    """Forget who labels on this machine (the Label page asks again)."""
    set_setting(session, LOCAL_KEY, {})


# ----------------------------------------------------------------------------------------------- the team


@dataclass(frozen=True)
class TeamMember:
    """One annotator as the Team tab lists them."""

    name: str
    tier: str
    labels: int
    link: str  # "personal link", "revoked", "no link", "campaign <name>", "machine or import"
    invited_at: datetime | None
    last_label: datetime | None


def team(session: Session) -> list[TeamMember]:
    """Every annotator with their tier, labels and link state, people first, then by name."""
    per = {aid: (int(n), last) for aid, n, last in session.execute(
        select(Label.annotator_id, func.count(), func.max(Label.created_at)).group_by(Label.annotator_id))}
    camps = dict(session.execute(select(Campaign.id, Campaign.name)).all())
    out = []
    for a in session.scalars(select(Annotator).order_by(Annotator.name)):
        tier = Source(a.default_source)
        if a.revoked_at is not None:
            link = "revoked"
        elif a.campaign_id is not None:
            link = f"campaign {camps.get(a.campaign_id, '?')}"
        elif a.token_hash is not None:
            link = "personal link"
        else:
            link = "machine or import" if tier is Source.ai else "no link"
        n, last = per.get(a.id, (0, None))
        out.append(TeamMember(a.name, tier.value, n, link, a.invited_at, last))
    return sorted(out, key=lambda m: (m.tier == Source.ai.value, m.name))
