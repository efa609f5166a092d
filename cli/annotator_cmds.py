"""``rmstudio annotators``: the team (accounts, tiers, personal links, crowd campaigns) and each annotator's
estimated reliability.

``rmstudio annotators`` alone lists reliability (as it always did); the subcommands manage the team
(``db/annotators.py``). Changes are recorded as the operating-system user running the command.
"""
from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable
from dataclasses import asdict
from typing import TypeVar

from sqlalchemy.orm import Session

from cli.common import CLIError, open_db, pct, print_json
from db.analytics import agreement_records, multi_rated_labels
from db.annotators import (
    add_annotator,
    campaign_url,
    close_campaign,
    get_annotator,
    invite,
    invite_url,
    label_counts,
    open_campaign,
    revoke,
    set_tier,
    team,
)
from rm_engine.quality.annotators import MIN_LABELS, annotator_quality

T = TypeVar("T")

TIERS = ("expert", "crowd")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``annotators`` and its subcommands ``team``, ``add``, ``set``, ``invite``, ``revoke``, ``campaign``."""
    p = sub.add_parser(
        "annotators", help="the team (add, set, invite, revoke, campaign, team) and each annotator's reliability",
        description="Without a subcommand: one-coin Dawid-Skene accuracy, agreement with the other annotators' "
                    "majority and the loss weight `rmstudio train --annotator-weights` gives each annotator. The "
                    "subcommands manage the team: tiers (expert, crowd) are assigned here, never chosen by labelers.")
    p.add_argument("--min-labels", type=int, default=None, help="decided overlapping labels before an annotator is "
                                                                "measured (default 10)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_reliability)
    acts = p.add_subparsers(dest="action", metavar="ACTION")

    a = acts.add_parser("team", help="every annotator: tier, labels, link state")
    a.add_argument("--json", action="store_true", help="machine-readable output")
    a.set_defaults(func=cmd_team)

    a = acts.add_parser("add", help="add a person with a tier")
    a.add_argument("name")
    a.add_argument("--tier", choices=TIERS, required=True, help="expert or crowd (ai is for machine labelers)")
    a.add_argument("--json", action="store_true", help="print {name, tier} as JSON")
    a.set_defaults(func=cmd_add)

    a = acts.add_parser("set", help="change an annotator's tier (says what happens to their earlier labels)")
    a.add_argument("name")
    a.add_argument("--tier", choices=TIERS, required=True)
    g = a.add_mutually_exclusive_group()
    g.add_argument("--retag", action="store_true", help="their earlier labels and rankings take the new tier")
    g.add_argument("--keep-labels", action="store_true", help="earlier labels keep the tier they were made under")
    a.add_argument("--json", action="store_true", help="machine-readable output")
    a.set_defaults(func=cmd_set)

    a = acts.add_parser("invite", help="a personal link (a new one replaces the old; only its hash is stored)")
    a.add_argument("name")
    a.add_argument("--base-url", default="http://localhost:8501", help="where labelers reach the app "
                                                                       "(default http://localhost:8501)")
    a.add_argument("--json", action="store_true", help='print {"name", "tier", "url"} as JSON')
    a.set_defaults(func=cmd_invite)

    a = acts.add_parser("revoke", help="stop an annotator's link at once (their labels stay)")
    a.add_argument("name")
    a.set_defaults(func=cmd_revoke)

    a = acts.add_parser("campaign", help="open (or close) one shared crowd link: each worker becomes a crowd "
                                         "annotator <campaign>:<id> on first visit")
    a.add_argument("name")
    a.add_argument("--close", action="store_true", help="close the campaign: its link stops working")
    a.add_argument("--base-url", default="http://localhost:8501", help="where workers reach the app")
    a.add_argument("--json", action="store_true", help='print {"campaign", "url"} as JSON')
    a.set_defaults(func=cmd_campaign)


def _write(fn: Callable[[Session, str], T]) -> T:
    """Run ``fn(session, by)`` in one write transaction; a refusal becomes a one-line error."""
    db = open_db()
    try:
        with db.write() as s:
            return fn(s, getpass.getuser())
    except (ValueError, LookupError) as exc:
        raise CLIError(str(exc)) from None
    finally:
        db.dispose()


def cmd_add(args: argparse.Namespace) -> int:
    """Add a person with a tier."""

    name = _write(lambda s, by: add_annotator(s, args.name, args.tier, by=by).name)
    if args.json:
        print_json({"name": name, "tier": args.tier})
    else:
        print(f"added {name} ({args.tier}); `rmstudio annotators invite {name}` makes their personal link")
    return 0


def cmd_set(args: argparse.Namespace) -> int:
    """Change a tier; with earlier labels made under another tier, ask (or require --retag / --keep-labels)."""

    retag: bool | None = True if args.retag else False if args.keep_labels else None
    if retag is None:
        db = open_db()
        try:
            with db.read() as s:
                try:
                    ann = get_annotator(s, args.name)
                except LookupError as exc:
                    raise CLIError(str(exc)) from None
                other = {k: n for k, n in label_counts(s, ann.id).items() if k != args.tier}
        finally:
            db.dispose()
        if not other:
            retag = False  # nothing to re-tag
        else:
            made = ", ".join(f"{n} as {k}" for k, n in sorted(other.items()))
            if not sys.stdin.isatty():
                raise CLIError(f"{args.name} has earlier labels ({made}): pass --retag to re-tag them as "
                               f"{args.tier}, or --keep-labels to keep the tier they were made under")
            answer = input(f"{args.name} has earlier labels ({made}). Re-tag them as {args.tier}? [y/N] ")
            retag = answer.strip().lower() in ("y", "yes")
    done = _write(lambda s, by: set_tier(s, args.name, args.tier, by=by, retag=bool(retag)))
    if args.json:
        print_json(asdict(done))
    elif done.old == done.new:
        print(f"{done.name} is {done.new} already; nothing changed")
    else:
        kept = f"{done.retagged} earlier label(s) re-tagged" if retag else "earlier labels keep their tier"
        print(f"{done.name}: {done.old} -> {done.new} ({kept})")
    return 0


def cmd_invite(args: argparse.Namespace) -> int:
    """Print a new personal link (the token is shown once)."""

    def make(s: Session, by: str) -> tuple[str, str, str]:
        token = invite(s, args.name, by=by)
        ann = get_annotator(s, args.name)
        return ann.name, ann.default_source.value, invite_url(args.base_url, token)

    name, tier, url = _write(make)
    if args.json:
        print_json({"name": name, "tier": tier, "url": url})
    else:
        print(f"personal link of {name} ({tier}); an earlier link of theirs no longer works:\n{url}")
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    """Revoke a personal link."""

    _write(lambda s, by: revoke(s, args.name, by=by))
    print(f"revoked {args.name.strip()}: their link labels nothing from now on (their labels stay)")
    return 0


def cmd_campaign(args: argparse.Namespace) -> int:
    """Open a crowd campaign and print its link, or close it."""

    if args.close:
        _write(lambda s, by: close_campaign(s, args.name, by=by))
        print(f"closed campaign {args.name.strip()}: its link labels nothing from now on")
        return 0
    url = campaign_url(args.base_url, _write(lambda s, by: open_campaign(s, args.name, by=by)))
    if args.json:
        print_json({"campaign": args.name.strip(), "url": url})
    else:
        print(f"campaign link of {args.name.strip()} (an earlier link of it no longer works):\n{url}\n"
              "Prolific appends PROLIFIC_PID when 'URL parameters' is ticked; elsewhere append "
              "&worker_id=<the worker's id>. Each worker becomes a crowd annotator on first visit.")
    return 0


def cmd_team(args: argparse.Namespace) -> int:
    """List every annotator: tier, labels, link state."""

    db = open_db()
    try:
        with db.read() as s:
            members = team(s)
    finally:
        db.dispose()
    if args.json:
        print_json([asdict(m) for m in members])
        return 0
    if not members:
        print("no annotators yet: `rmstudio annotators add NAME --tier expert|crowd`")
        return 0
    print(f"{'annotator':<30}{'tier':<8}{'labels':>8}  link")
    for m in members:
        print(f"{m.name[:29]:<30}{m.tier:<8}{m.labels:>8}  {m.link}")
    return 0


def cmd_reliability(args: argparse.Namespace) -> int:
    """Print each annotator's estimated reliability (rm_engine.quality.annotators)."""

    min_labels = MIN_LABELS if args.min_labels is None else args.min_labels
    if min_labels < 1:
        raise CLIError("--min-labels must be at least 1")
    db = open_db()
    try:
        with db.read() as s:
            quality = annotator_quality(agreement_records(multi_rated_labels(s)), min_labels=min_labels)
    finally:
        db.dispose()
    if args.json:
        print_json([{k: (None if isinstance(v, float) and v != v else v) for k, v in asdict(q).items()}
                    for q in quality])
        return 0
    if not quality:
        print("no pair has decided labels from two or more annotators yet: reliability needs overlap (Data page, "
              "Labeling queue: annotators per pair, agreement share)")
        return 0

    def share(x: float) -> str:
        return pct(None if x != x else x)  # nan: nothing to compare with

    print(f"{'annotator':<20}{'source':<8}{'labels':>7}{'accuracy':>10}{'agrees':>8}{'experts':>9}{'weight':>8}")
    for q in quality:
        weight = f"{q.weight:.2f}" if q.measured else "1*"
        print(f"{q.annotator[:19]:<20}{q.source:<8}{q.labels:>7}{pct(q.accuracy):>10}"
              f"{share(q.agrees_with_others):>8}{share(q.agrees_with_experts):>9}{weight:>8}")
    print("accuracy: Dawid-Skene estimate on pairs labelled by several annotators; agrees / experts: share matching "
          "the majority of the others / of the expert labels; weight: what `rmstudio train --annotator-weights` "
          "gives their labels")
    if any(not q.measured for q in quality):
        print(f"* not weighed: under {min_labels} decided labels on pairs others labelled too, or the labels agree "
              "barely above chance (nothing to weigh by)")
    return 0
