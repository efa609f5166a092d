"""Helpers shared by the CLI commands."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable
from typing import Any

from db.bounds import Bound, Choice, FieldError, Switch, rule_of
from db.config import Settings
from db.session import Database


class CLIError(Exception):
    """An error to show the user as one line on stderr (exit code 1)."""


def settings() -> Settings:
    """The settings from the environment (a bad value: a CLIError naming the variable)."""
    try:
        return Settings.from_env()
    except ValueError as exc:
        raise CLIError(str(exc)) from None


def bounded_type(bound: Bound) -> Callable[[str], Any]:
    """An argparse ``type`` parsing a flag's text with ``bound`` (finite, in range), so that a bad value is refused
    in one line naming the flag before anything runs."""

    def parse(text: str) -> Any:
        try:
            return bound.parse(text)
        except FieldError as exc:
            raise argparse.ArgumentTypeError(f"{exc.reason} (got {text!r})") from None

    parse.__name__ = "whole number" if bound.integer else "number"
    return parse


#: TCP ports a server may listen on.
PORT = Bound(1, 65535, integer=True)


def field_flag(p: argparse.ArgumentParser | argparse._ArgumentGroup, cls: Any, name: str, *flags: str,
               **kw: Any) -> None:
    """Add a flag for field ``name`` of dataclass ``cls`` (``--field-name`` unless ``flags`` are given), built from
    the field's metadata: a number parsed and checked with its declared bound (its range in the help), a choice
    offering its words, a switch as ``--name`` / ``--no-name``, anything else as text; the help text and metavar
    from the metadata unless given. A flag not given leaves None under the field's name (``dest``), unless a
    ``default`` is given."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    rule = rule_of(f)
    text = kw.pop("help", None) or f.metadata.get("help") or ""
    kw.setdefault("dest", name)
    flags = flags or ("--" + name.replace("_", "-"),)
    if isinstance(rule, Switch):
        kw.setdefault("default", None)
        p.add_argument(*flags, action=argparse.BooleanOptionalAction, help=text.replace("%", "%%"), **kw)
        return
    if f.metadata.get("metavar") and not isinstance(rule, Choice):
        kw.setdefault("metavar", f.metadata["metavar"])
    if isinstance(rule, Choice):
        kw["choices"] = rule.values
    elif isinstance(rule, Bound):
        limits = rule.describe() + (f", default {kw['default']:g}" if isinstance(kw.get("default"), (int, float)) else "")
        text = f"{text} [{limits}]" if text else limits
        kw["type"] = bounded_type(rule)
    p.add_argument(*flags, help=text.replace("%", "%%"), **kw)


def open_db(s: Settings | None = None) -> Database:
    """The command's database: ``Database(settings.db_url)`` of ``s``, or of the environment's settings (the one way
    a program opens its database; the command disposes of it when done)."""
    return Database((s or settings()).db_url)


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str, ensure_ascii=False)
    sys.stdout.write("\n")


def progress(iterable: Any = None, *, total: int | None = None, desc: str = "", unit: str = "it", disable: bool = False) -> Any:
    """A progress bar on stderr (stdout stays clean for --json)."""
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stderr, disable=disable, dynamic_ncols=True)


def pct(x: float | None) -> str:
    """A share as a percentage with one decimal, ``n/a`` when unknown."""
    return "n/a" if x is None else f"{x * 100:.1f}%"
