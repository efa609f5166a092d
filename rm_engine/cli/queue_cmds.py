"""``rmstudio queue``: the labeling-queue policy (what the Data page's "Labeling queue" tab edits) from a shell."""
from __future__ import annotations

import argparse
import dataclasses

from rm_engine.cli.common import CLIError, open_db, pct, print_json


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``queue`` subcommand."""
    p = sub.add_parser("queue", help="show or set the labeling-queue policy (overlap, agreement share, control "
                                     "pairs, active learning)")
    p.add_argument("--labels-per-pair", dest="target_overlap", type=int, help="labels every pair gets first")
    p.add_argument("--agreement-share", dest="agreement_share", type=float,
                   help="share of pairs (0..1) labelled by --agreement-overlap annotators")
    p.add_argument("--agreement-overlap", dest="agreement_overlap", type=int, help="annotators per pair in that share")
    p.add_argument("--control-share", dest="control_share", type=float,
                   help="share (0..0.5) of each labeler's pairs drawn from expert-labelled ones (control pairs)")
    al = p.add_mutually_exclusive_group()
    al.add_argument("--active-learning", dest="active_learning", action="store_true", default=None,
                    help="prefer pairs the newest scored model is least sure about")
    al.add_argument("--no-active-learning", dest="active_learning", action="store_false")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_queue)


FIELDS = ("target_overlap", "agreement_share", "agreement_overlap", "control_share", "active_learning")


def cmd_queue(args: argparse.Namespace) -> int:
    """Print the queue policy; with options, store the changed one first (validated: a bad value is named)."""
    from db.labeling import load_queue_policy, save_queue_policy

    changes = {f: getattr(args, f) for f in FIELDS if getattr(args, f) is not None}
    db = open_db()
    try:
        if changes:
            def write(s):  # noqa: ANN001, ANN202 - a Session
                save_queue_policy(s, dataclasses.replace(load_queue_policy(s), **changes))

            try:
                db.run_write(write)
            except ValueError as exc:
                raise CLIError(str(exc)) from None
        with db.read() as s:
            policy = load_queue_policy(s)
    finally:
        db.dispose()
    if args.json:
        print_json(policy.to_dict())
        return 0
    print(f"labels per pair: {policy.target_overlap}; {pct(policy.agreement_share)} of pairs get "
          f"{policy.agreement_overlap} (agreement); control pairs: {pct(policy.control_share)} of each labeler's "
          f"pairs; active learning: {'on' if policy.active_learning else 'off'}")
    return 0
