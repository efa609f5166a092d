"""Numeric settings: each field's range is declared where the field is, and one check applies it everywhere.

A settings dataclass declares ``field(default=..., metadata=bounded(lo, hi, integer=..., help=...))`` and calls
:func:`check_fields` in its ``__post_init__``; the command line parses flags with :meth:`Bound.parse` of the same
bound and forms use its limits. So a value is refused the same way whether it comes from a flag, an environment
variable, a form, a stored policy or a queued job's parameters: not a number, not finite (NaN, inf) or out of
range, with a :class:`FieldError` naming the field and the value. Fields of a fixed set of words declare
``metadata=choice("a", "b", help=...)`` (:class:`Choice`) and switches ``metadata=switch(help=...)`` (:class:`Switch`):
the same check, the same parsing of text, the same help.

Stdlib only: every layer (``db``, ``rm_engine``, ``app``) imports it.
"""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class FieldError(ValueError):
    """A setting's value refused: ``field`` (its name), ``value`` and ``reason``; the text is one line
    ``"<label>: <reason> (got <value>)"``."""

    def __init__(self, label: str, reason: str, value: Any, *, field: str | None = None) -> None:
        self.field = field or label
        self.label, self.reason, self.value = label, reason, value
        super().__init__(f"{label}: {reason} (got {value!r})")


@dataclass(frozen=True)
class Bound:
    """The values a numeric setting accepts: finite, ``lo``/``hi`` (each included unless ``lo_open``/
    ``hi_open``), whole numbers when ``integer``; None too when ``optional``."""

    lo: float | None = None
    hi: float | None = None
    integer: bool = False
    lo_open: bool = False
    hi_open: bool = False
    optional: bool = False

    def describe(self) -> str:
        """The accepted values in words, e.g. ``"a whole number from 1 to 64"``, ``"a number > 0 and <= 10"``."""
        kind = "a whole number" if self.integer else "a finite number"
        lo, hi = self.lo, self.hi
        if lo is not None and hi is not None and not self.lo_open and not self.hi_open:
            return f"{kind} from {_num(lo)} to {_num(hi)}"
        parts = []
        if lo is not None:
            parts.append(f"{'>' if self.lo_open else '>='} {_num(lo)}")
        if hi is not None:
            parts.append(f"{'<' if self.hi_open else '<='} {_num(hi)}")
        return f"{kind} {' and '.join(parts)}".strip()

    def contains(self, value: Any) -> bool:
        """Whether ``value`` (already a number) is accepted as it is."""
        try:
            self.check(value)
        except FieldError:
            return False
        return True

    def check(self, value: Any, label: str = "value", *, field: str | None = None) -> Any:
        """``value`` as the setting's type (``int`` or ``float``; None when optional), or :class:`FieldError`.

        Text is not parsed here (use :meth:`parse`): a string where a number belongs is refused, as are
        booleans. Whole floats (``3.0``, as JSON may carry them) become ints for integer settings."""
        if value is None and self.optional:
            return None
        why = f"must be {self.describe()}"
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise FieldError(label, why, value, field=field)
        x = float(value)
        if not math.isfinite(x):
            raise FieldError(label, why, value, field=field)
        if self.integer:
            if isinstance(value, numbers.Integral):
                out: int | float = int(value)
            elif x.is_integer():
                out = int(x)
            else:
                raise FieldError(label, why, value, field=field)
        else:
            out = x
        if self.lo is not None and (out < self.lo or (self.lo_open and out == self.lo)):
            raise FieldError(label, why, value, field=field)
        if self.hi is not None and (out > self.hi or (self.hi_open and out == self.hi)):
            raise FieldError(label, why, value, field=field)
        return out

    def parse(self, text: str, label: str = "value", *, field: str | None = None) -> Any:
        """Text (a flag, an environment variable) -> the checked number, or :class:`FieldError` naming ``label``."""
        raw = str(text).strip()
        try:
            value: Any = int(raw) if self.integer else float(raw)
        except ValueError:
            try:  # "3.0" or "1e3" for an integer setting
                value = float(raw)
            except ValueError:
                raise FieldError(label, f"must be {self.describe()}", text, field=field) from None
        try:
            return self.check(value, label, field=field)
        except FieldError as exc:
            raise FieldError(label, exc.reason, text, field=field) from None


@dataclass(frozen=True)
class Choice:
    """The words a setting accepts (``values``)."""

    values: tuple[str, ...]

    def describe(self) -> str:
        """The accepted values in words, e.g. ``"one of head, finetune"``."""
        return f"one of {', '.join(self.values)}"

    def check(self, value: Any, label: str = "value", *, field: str | None = None) -> str:
        """``value`` when it is one of the words, else :class:`FieldError`."""
        if not isinstance(value, str) or value not in self.values:
            raise FieldError(label, f"must be {self.describe()}", value, field=field)
        return value

    def parse(self, text: str, label: str = "value", *, field: str | None = None) -> str:
        """Text (a flag, an environment variable) -> the checked word (surrounding blanks ignored)."""
        return self.check(str(text).strip(), label, field=field)


_TRUTH = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


@dataclass(frozen=True)
class Switch:
    """An on/off setting: ``True`` or ``False``; as text ``1, 0, true, false, yes, no, on, off``."""

    def describe(self) -> str:
        """The accepted values in words."""
        return "true or false (1, 0, yes, no, on, off)"

    def check(self, value: Any, label: str = "value", *, field: str | None = None) -> bool:
        """``value`` when it is a ``bool``, else :class:`FieldError`."""
        if not isinstance(value, bool):
            raise FieldError(label, "must be true or false", value, field=field)
        return value

    def parse(self, text: str, label: str = "value", *, field: str | None = None) -> bool:
        """Text -> the boolean, or :class:`FieldError` naming ``label``."""
        try:
            return _TRUTH[str(text).strip().lower()]
        except KeyError:
            raise FieldError(label, f"must be {self.describe()}", text, field=field) from None


def choice(*values: str, help: str = "", **extra: Any) -> dict[str, Any]:
    """Field metadata of a setting that is one of ``values``: ``{"choice": Choice(values), "help": help, **extra}``."""
    return {"choice": Choice(tuple(values)), "help": help, **extra}


def switch(*, help: str = "", **extra: Any) -> dict[str, Any]:
    """Field metadata of an on/off setting: ``{"switch": Switch(), "help": help, **extra}``."""
    return {"switch": Switch(), "help": help, **extra}


#: The metadata keys of a field's rule (:class:`Bound`, :class:`Choice`, :class:`Switch`).
RULES = ("bound", "choice", "switch")


def rule_of(f: dataclasses.Field) -> Bound | Choice | Switch | None:  # type: ignore[type-arg]
    """The rule declared on dataclass field ``f`` (None when it declares none)."""
    return next((f.metadata[k] for k in RULES if k in f.metadata), None)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


def bounded(lo: float | None = None, hi: float | None = None, *, integer: bool = False, lo_open: bool = False,
            hi_open: bool = False, optional: bool = False, help: str = "", **extra: Any) -> dict[str, Any]:
    """Field metadata of a numeric setting: ``{"bound": Bound(...), "help": help, **extra}``."""
    return {"bound": Bound(lo, hi, integer, lo_open, hi_open, optional), "help": help, **extra}


def bound_of(cls: Any, name: str) -> Bound:
    """The :class:`Bound` declared on field ``name`` of dataclass ``cls`` (``KeyError`` when it has none)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f.metadata["bound"]
    raise KeyError(f"{getattr(cls, '__name__', cls)} has no field {name!r}")


def help_of(cls: Any, name: str) -> str:
    """The ``help`` text declared on field ``name`` of dataclass ``cls`` ("" when none)."""
    return next((f.metadata.get("help", "") for f in dataclasses.fields(cls) if f.name == name), "")


def check_fields(obj: Any, label: Callable[[str], str]) -> None:
    """Check every field of the (possibly frozen) dataclass instance ``obj`` that declares a rule (a bound, a choice,
    a switch), storing the normalised value (``int``/``float``); the first bad one raises :class:`FieldError`
    labelled ``label(field name)``."""
    for f in dataclasses.fields(obj):
        rule = rule_of(f)
        if rule is None:
            continue
        value = rule.check(getattr(obj, f.name), label(f.name), field=f.name)
        object.__setattr__(obj, f.name, value)


def finite_json(obj: Any) -> Any:
    """``obj`` (JSON-like: dicts, lists, tuples, numbers, text) with every NaN or infinite float replaced by None,
    which JSON can represent (PostgreSQL refuses ``NaN`` in JSON; SQLite would store text no JSON parser reads)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


def json_dumps(obj: Any) -> str:
    """The database's JSON serializer: ``json.dumps`` with non-finite floats stored as null (:func:`finite_json`)."""
    try:
        return json.dumps(obj, allow_nan=False)
    except ValueError:
        return json.dumps(finite_json(obj), allow_nan=False)
