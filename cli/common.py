"""Helpers shared by the CLI commands."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable
from typing import Any

from db.bounds import Bound, FieldError
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


def field_flag(p: argparse.ArgumentParser, cls: Any, name: str, *flags: str, **kw: Any) -> None:
    """Add a flag for the numeric field ``name`` of dataclass ``cls`` (``--field-name`` unless ``flags`` are given):
    parsed and checked with the field's declared bound, its help text from the field's metadata unless ``help`` is
    given."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    bound = f.metadata["bound"]
    text = kw.pop("help", None) or f.metadata.get("help") or ""
    limits = bound.describe() + (f", default {kw['default']:g}" if isinstance(kw.get("default"), (int, float)) else "")
    kw["help"] = (f"{text} [{limits}]" if text else limits).replace("%", "%%")
    kw.setdefault("dest", name)
    p.add_argument(*(flags or ("--" + name.replace("_", "-"),)), type=bounded_type(bound), **kw)


def open_db() -> Database:
    return Database(settings().db_url)


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
