"""The ``rmstudio`` command line. Each module in ``COMMAND_MODULES`` registers its own subcommands."""
from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from collections.abc import Sequence
from typing import Any, NoReturn

from cli.common import CLIError
from db.bounds import FieldError
from db.session import explain_db_error

COMMAND_MODULES = (
    "cli.data_cmds",  # import, export, stats, guidelines
    "cli.annotator_cmds",  # annotators (team, add, set, invite, revoke, campaign; reliability)
    "cli.model_cmds",  # train, eval, score
    "cli.plan_cmds",  # plan-memory
    "cli.version_cmds",  # models (list, delete, export, share)
    "cli.job_cmds",  # worker, jobs, policy, serve
    "cli.demo_cmds",  # seed-demo
    "cli.cache_cmds",  # cache, cache compact, cache prune
    "cli.reward_cmds",  # reward-server, served
    "cli.queue_cmds",  # queue
    "cli.cv_cmds",  # cv
)


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, like every other error of ``rmstudio``, with where to look next
    (subcommands' parsers are of this class too: ``add_subparsers`` takes the parent's class)."""

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:  # type: ignore[override]
        ns, extras = self.parse_known_args(args, namespace)
        if extras:  # reported by the subcommand that was given them, not by `rmstudio`
            self._innermost(ns).error(f"unrecognized arguments: {' '.join(extras)}")
        return ns

    def _innermost(self, ns: argparse.Namespace) -> argparse.ArgumentParser:
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                chosen = action.choices.get(getattr(ns, action.dest, None) or "")
                if isinstance(chosen, Parser):
                    return chosen._innermost(ns)
        return self

    def _get_values(self, action: argparse.Action, arg_strings: list[str]) -> Any:
        value = super()._get_values(action, arg_strings)
        if action.nargs is None and action.option_strings and not arg_strings and isinstance(value, list):
            # argparse drops a lone "--" value (``--lease=--``) and hands the command an empty list, unchecked
            raise argparse.ArgumentError(action, "expected one argument")
        return value

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}; see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``rmstudio`` parser with every subcommand."""
    parser = Parser(prog="rmstudio", description="RM Studio: preference labels to reward models.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def _flag_of(parser: Parser, args: argparse.Namespace, field: str) -> str | None:
    """The flag of the command that set ``field`` (None when no flag of it did)."""
    if getattr(args, field, None) is None:
        return None
    return next((max(a.option_strings, key=len) for a in parser._innermost(args)._actions
                 if a.dest == field and a.option_strings), None)


def _one_line(exc: BaseException) -> str:

    msg = str(exc).strip()
    if exc.__class__.__module__.startswith("sqlalchemy"):
        msg = explain_db_error(exc)
    return (msg.splitlines()[0] if msg else type(exc).__name__)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    assert isinstance(parser, Parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed
        return exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
        return int(rc or 0)
    except KeyboardInterrupt:
        print("rmstudio: interrupted", file=sys.stderr)
        return 130
    except CLIError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"rmstudio {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except FieldError as exc:  # a setting refused by its own check: named by the flag it came from
        if args.debug:
            traceback.print_exc()
        flag = _flag_of(parser, args, exc.field)
        text = f"{flag}: {exc.reason} (got {exc.value!r})" if flag else str(exc)
        print(f"rmstudio {args.command}: error: {text}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - one readable line, the traceback only with --debug
        if args.debug:
            traceback.print_exc()
        print(f"rmstudio {args.command}: error: {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
