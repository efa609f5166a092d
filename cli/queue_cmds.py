"""``rmstudio queue``: the labeling-queue policy (what the Data page's "Labeling queue" tab edits) from a shell."""
from __future__ import annotations

import argparse
import dataclasses

from cli.common import CLIError, field_flag, open_db, pct, print_json
from db.bounds import FieldError
from db.labeling import load_queue_policy, save_queue_policy
from db.queue_policy import QueuePolicy


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``queue`` subcommand."""
    p = sub.add_parser("queue", help="show or set the labeling-queue policy (overlap, agreement share, control "
                                     "pairs, active learning)")
    field_flag(p, QueuePolicy, "target_overlap", "--labels-per-pair", metavar="N")
    field_flag(p, QueuePolicy, "agreement_share", metavar="X",
               help="share of pairs labelled by --agreement-overlap annotators")
    field_flag(p, QueuePolicy, "agreement_overlap", metavar="N")
    field_flag(p, QueuePolicy, "control_share", metavar="X")
    al = p.add_mutually_exclusive_group()
    al.add_argument("--active-learning", dest="active_learning", action="store_true", default=None,
                    help="prefer pairs the newest scored model is least sure about")
    al.add_argument("--no-active-learning", dest="active_learning", action="store_false")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_queue)


FIELDS = ("target_overlap", "agreement_share", "agreement_overlap", "control_share", "active_learning")


def cmd_queue(args: argparse.Namespace) -> int:
    """Print the queue policy; with options, store the changed one first (validated: a bad value is named)."""

    changes = {f: getattr(args, f) for f in FIELDS if getattr(args, f) is not None}
    db = open_db()
    try:
        if changes:
            def write(s):  # noqa: ANN001, ANN202 - a Session
                save_queue_policy(s, dataclasses.replace(load_queue_policy(s), **changes))

            try:
                db.run_write(write)
            except FieldError:  # named by its flag (cli.main)
                raise
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
