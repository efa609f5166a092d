"""Helpers shared by the CLI commands."""
from __future__ import annotations

import json
import sys
from typing import Any

from db.config import Settings
from db.session import Database


class CLIError(Exception):
    """An error to show the user as one line on stderr (exit code 1)."""


def settings() -> Settings:
    return Settings.from_env()


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
