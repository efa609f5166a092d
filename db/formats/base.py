"""The record every importer produces, the errors they raise, and the field checks they share.

A format module turns one source record (a JSON object or a table row, as a ``dict``) into an
``ImportRecord`` or raises ``RowProblem(field, message)``; the reader adds the file name and line.

Messages that name an import option write it as ``option("map")``: the command line shows ``--map``, the Data
page "Field mapping" (``RowError.describe(ui=True)``), so each interface speaks its own language.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["comparison", "ranking", "unlabeled"]
OUTCOMES = ("a", "b", "tie", "both_bad")
SOURCES = ("expert", "crowd", "ai")
SPLITS = ("train", "test")
DEFAULT_SOURCE = "crowd"
DEFAULT_ANNOTATOR = "unknown"

# Column sizes of db/models.py: checked here so that PostgreSQL never rejects a row half-way through an import.
MAX_ANNOTATOR = 200
MAX_CATEGORY = 100
MAX_MODEL = 200
MAX_KEY = 128
MAX_ORIGIN = 300


@dataclass
class ImportRecord:
    """One judgment (or one set of unjudged responses) read from a file, validated and normalized.

    ``winner`` is relative to ``responses[0]`` / ``responses[1]`` (what the file showed first / second);
    ``ranks`` (1 = best, equal = tie) is aligned with ``responses``. ``key`` identifies the source record:
    the hash of the format name and the record's canonical content (or the record's own ``key`` field when a
    native export carries one), so importing the same record twice adds nothing.
    """

    line: int
    kind: Kind
    prompt: str
    history: list[dict[str, str]] | None
    category: str | None
    responses: list[str]
    models: list[str | None]
    winner: str | None
    ranks: list[int] | None
    source: str
    annotator: str
    strength: int | None
    split: str
    extra: dict[str, Any]
    key: str
    # Beyond the pinned contract: provenance carried by native exports so that round trips are exact.
    origin: str | None = None
    time_spent_ms: int | None = None
    origin_given: bool = False  # the record has an "origin" field (even null): keep it instead of "import:<file>"


_OPT = "\x1f"  # brackets an option's name in a message; never in user text (``display_name`` escapes it)
OPTION_NAMES: dict[str, tuple[str, str]] = {  # option -> (command line, Data page)
    "format": ("--format", "Format"),
    "map": ("--map", "Field mapping"),
    "winner-values": ("--winner-values", "Verdict values"),
    "winner-scale": ("--winner-scale", "Verdict scale"),
    "source": ("--source", "Default source"),
    "annotator": ("--annotator", "Default annotator"),
    "category": ("--category", "Default category"),
    "split": ("--split", "Split"),
    "skip-invalid": ("--skip-invalid", "Skip invalid rows"),
}


def option(name: str) -> str:
    """An import option inside a message, shown as the interface names it (``--map`` or "Field mapping")."""
    return f"{_OPT}{name}{_OPT}"


def render(text: str, *, ui: bool = False) -> str:
    """A message with its options named for the command line (default) or for the Data page (``ui``)."""
    if _OPT not in text:
        return text
    parts = text.split(_OPT)
    return "".join(OPTION_NAMES.get(p, (p, p))[ui] if i % 2 else p for i, p in enumerate(parts))


def display_name(name: Any) -> str:
    """A field or column name as it can be printed: control characters, NUL and lone surrogates escaped."""
    s = str(name)
    if s.isprintable():
        return s
    return "".join(c if c.isprintable() or c == " " else (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}") for c in s)


@dataclass(frozen=True)
class RowError:
    """A row that cannot be imported: where it is and what is wrong with it.

    ``field`` and ``message`` may name import options (``option``); ``str()`` shows them as the command line
    does, ``describe(ui=True)`` as the Data page does.
    """

    file: str
    line: int
    field: str
    message: str

    def describe(self, *, ui: bool = False) -> tuple[str, str]:
        """``(field, message)`` with options named for the command line or the Data page."""
        return render(self.field, ui=ui), render(self.message, ui=ui)

    def __str__(self) -> str:
        field, message = self.describe()
        return f"{self.file}:{self.line}: field '{field}': {message}"


class FormatError(Exception):
    """A file that cannot be imported as asked. ``str()`` is ``FILE:LINE: field 'X': message``.

    ``field`` and ``message`` are as the command line shows them; ``row_error`` keeps them for either interface.
    """

    def __init__(self, file: str, line: int, field: str, message: str) -> None:
        self.file, self.line, self._field, self._message = file, line, field, message
        self.field, self.message = render(field), render(message)
        super().__init__(f"{file}:{line}: field '{self.field}': {self.message}")

    @classmethod
    def from_row(cls, err: RowError, suffix: str = "") -> FormatError:
        return cls(err.file, err.line, err.field, err.message + suffix)

    @property
    def row_error(self) -> RowError:
        return RowError(self.file, self.line, self._field, self._message)


class RowProblem(Exception):
    """Raised by a format module for one record; the reader turns it into a ``RowError``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"field '{field}': {message}")
        self.field, self.message = field, message


@dataclass(frozen=True)
class Options:
    """What the user said on the command line / upload form.

    ``source``/``annotator``/``category``/``split`` apply to records that have no such field; ``mapping``
    (target -> column), ``winner_values`` (file value -> outcome) and ``winner_scale`` (a numeric verdict's two
    ends: ``((low, outcome), (high, outcome))``) drive the ``mapped`` format.
    """

    source: str | None = None
    annotator: str | None = None
    category: str | None = None
    split: str = "train"
    mapping: Mapping[str, str] | None = None
    winner_values: Mapping[str, str] | None = None
    winner_scale: tuple[tuple[float, str], tuple[float, str]] | None = None


# ---------------------------------------------------------------- field checks


def short(value: Any, n: int = 60) -> str:
    """A value as it appears in an error message, cut to ``n`` characters."""
    s = repr(value)
    return s if len(s) <= n else s[: n - 3] + "..."


def check_text(value: str, field: str) -> str:
    """Reject what a database cannot store: NUL characters and lone surrogates (invalid Unicode)."""
    if "\x00" in value:
        raise RowProblem(field, "contains a NUL character (\\u0000), which databases cannot store")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise RowProblem(field, "contains invalid Unicode (a lone surrogate such as \\ud800)") from None
    return value


def check_name(name: Any, field: str) -> str:
    """A field name (a record's key, a key inside a value) that a database can store, else ``RowProblem``
    naming it (printably): the same rule as for text values."""
    if not isinstance(name, str):
        name = str(name)
    if "\x00" in name:
        raise RowProblem(field, "the field's name contains a NUL character (\\u0000), which databases cannot store")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise RowProblem(field, "the field's name contains invalid Unicode (a lone surrogate such as \\ud800)") from None
    return name


def check_json_value(value: Any, field: str, depth: int = 0) -> Any:
    """Check a free-form value kept in ``extra``: JSON-safe strings, finite numbers, bounded nesting."""
    if depth > 50:
        raise RowProblem(field, "is nested more than 50 levels deep")
    if isinstance(value, str):
        return check_text(value, field)
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise RowProblem(field, f"is {value}, which JSON cannot store")
        return value
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            sub = f"{field}.{display_name(k)}"
            out[check_name(k, sub)] = check_json_value(v, sub, depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        return [check_json_value(v, f"{field}[{i}]", depth + 1) for i, v in enumerate(value)]
    # numpy / pyarrow scalars and the like, from Parquet files
    if hasattr(value, "item"):
        return check_json_value(value.item(), field, depth)
    return check_text(str(value), field)


def require(obj: Mapping[str, Any], field: str) -> Any:
    if field not in obj or obj[field] is None:
        raise RowProblem(field, "is missing")
    return obj[field]


def text_field(obj: Mapping[str, Any], field: str, *, allow_empty: bool = False) -> str:
    """A required string field. Prompts must not be empty; responses may be (a model can answer nothing)."""
    value = require(obj, field)
    if not isinstance(value, str):
        raise RowProblem(field, f"must be a string, got {type(value).__name__} {short(value)}")
    if not allow_empty and not value.strip():
        raise RowProblem(field, "is empty")
    return check_text(value, field)


def optional_str(obj: Mapping[str, Any], field: str, max_len: int) -> str | None:
    value = obj.get(field)
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise RowProblem(field, f"must be a string, got {type(value).__name__} {short(value)}")
    value = check_text(value.strip(), field)
    if len(value) > max_len:
        raise RowProblem(field, f"is {len(value)} characters long; at most {max_len} are allowed")
    return value or None


def parse_source(value: Any, field: str = "source") -> str:
    if isinstance(value, str) and value.strip().lower() in SOURCES:
        return value.strip().lower()
    raise RowProblem(field, f"unknown source {short(value)}: expected one of {', '.join(SOURCES)}")


def parse_split(value: Any, field: str = "split") -> str:
    if isinstance(value, str) and value.strip().lower() in SPLITS:
        return value.strip().lower()
    raise RowProblem(field, f"unknown split {short(value)}: expected train or test")


WINNER_ALIASES = {
    "a": "a", "model_a": "a", "response_a": "a", "left": "a",
    "b": "b", "model_b": "b", "response_b": "b", "right": "b",
    "tie": "tie", "draw": "tie", "equal": "tie",
    "both_bad": "both_bad", "bothbad": "both_bad", "both-bad": "both_bad", "tie (bothbad)": "both_bad",
}


def parse_winner(value: Any, field: str = "winner", values: Mapping[str, str] | None = None) -> str:
    """A verdict as ``a``/``b``/``tie``/``both_bad``; ``values`` maps the file's own values (``-1`` -> ``a``)."""
    if values:
        raw = scalar_text(value)
        if raw in values:
            return values[raw]
        allowed = ", ".join(values)
        raise RowProblem(field, f"unknown winner value {short(value)}: {option('winner-values')} maps only {allowed}")
    if isinstance(value, str) and value.strip().lower() in WINNER_ALIASES:
        return WINNER_ALIASES[value.strip().lower()]
    raise RowProblem(field, f"unknown winner {short(value)}: expected a, b, tie or both_bad")


def scalar_text(value: Any) -> str:
    """A cell as text for value mapping: ``-1``, ``-1.0`` and ``"-1"`` all read ``-1``."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def parse_strength(value: Any, field: str = "strength") -> int | None:
    if value is None or value == "":
        return None
    try:
        n = int(scalar_text(value)) if not isinstance(value, bool) else None
    except ValueError:
        n = None
    if n not in (1, 2):
        raise RowProblem(field, f"must be 1 (slightly better) or 2 (clearly better), got {short(value)}")
    return n


def parse_int(value: Any, field: str, *, minimum: int = 0) -> int | None:
    if value is None or value == "":
        return None
    try:
        if isinstance(value, bool):
            raise ValueError
        n = int(scalar_text(value))
    except (ValueError, OverflowError):
        raise RowProblem(field, f"must be an integer, got {short(value)}") from None
    if n < minimum or n > 2**31 - 1:
        raise RowProblem(field, f"must be between {minimum} and {2**31 - 1}, got {n}")
    return n


def parse_history(value: Any, field: str = "history") -> list[dict[str, str]] | None:
    """Earlier chat turns: a list of ``{"role": ..., "content": ...}`` (empty or missing means none)."""
    if value is None or value == "" or value == []:
        return None
    if not isinstance(value, list):
        raise RowProblem(field, f"must be a list of {{role, content}} turns, got {type(value).__name__}")
    out = []
    for i, turn in enumerate(value):
        if not isinstance(turn, Mapping) or not isinstance(turn.get("role"), str) or not isinstance(turn.get("content"), str):
            raise RowProblem(f"{field}[{i}]", "must be an object with string 'role' and 'content'")
        out.append({"role": check_text(turn["role"], f"{field}[{i}].role"), "content": check_text(turn["content"], f"{field}[{i}].content")})
    return out


def parse_extra(obj: Mapping[str, Any], known: Sequence[str]) -> dict[str, Any]:
    """``obj["extra"]`` (a dict) merged with every field the format does not know, ``None`` values dropped.

    A field also named inside ``extra`` is refused (one of the two values would be lost)."""
    extra: dict[str, Any] = {}
    given = obj.get("extra")
    if given not in (None, ""):
        if not isinstance(given, Mapping):
            raise RowProblem("extra", f"must be an object, got {type(given).__name__}")
        extra.update(check_json_value(dict(given), "extra"))
    nested = set(extra)
    for k, v in obj.items():
        if k in known or k == "extra" or v is None:
            continue
        name = check_name(k, display_name(k))
        if name in nested:
            raise RowProblem(display_name(k), "is also a key of 'extra': keep one of the two")
        extra[name] = check_json_value(v, display_name(k))
    return extra


def record_key(fmt: str, obj: Mapping[str, Any], *, honor_key: bool = True) -> str:
    """The idempotency key of a source record; a native export's own ``key`` field wins (``honor_key``)."""
    given = obj.get("key") if honor_key else None
    if given not in (None, ""):
        if not isinstance(given, str) or len(given) > MAX_KEY:
            raise RowProblem("key", f"must be a string of at most {MAX_KEY} characters")
        return check_text(given, "key")
    canon = json.dumps({"format": fmt, "record": obj}, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(canon.encode("utf-8", "surrogatepass")).hexdigest()


PROVENANCE_FIELDS = ("source", "annotator", "category", "strength", "split", "origin", "time_spent_ms", "key", "extra")


def provenance(obj: Mapping[str, Any], defaults: Options) -> dict[str, Any]:
    """source, annotator, category, strength, split, origin and time spent: the record's own, else the defaults."""
    src = obj.get("source")
    source = parse_source(src) if src not in (None, "") else (parse_source(defaults.source, option("source")) if defaults.source else DEFAULT_SOURCE)
    annotator = optional_str(obj, "annotator", MAX_ANNOTATOR) or defaults.annotator or DEFAULT_ANNOTATOR
    category = optional_str(obj, "category", MAX_CATEGORY) or defaults.category
    sp = obj.get("split")
    split = parse_split(sp) if sp not in (None, "") else parse_split(defaults.split, option("split"))
    return {
        "source": source,
        "annotator": annotator,
        "category": category,
        "strength": parse_strength(obj.get("strength")),
        "split": split,
        "origin": optional_str(obj, "origin", MAX_ORIGIN),
        "origin_given": "origin" in obj,
        "time_spent_ms": parse_int(obj.get("time_spent_ms"), "time_spent_ms"),
    }


def responses_field(obj: Mapping[str, Any], field: str = "responses", models_field: str = "models", min_n: int = 1) -> tuple[list[str], list[str | None]]:
    """Responses given as a list of strings, a list of ``{"text"|"content", "model"}`` or ``{model: text}``."""
    value = require(obj, field)
    texts: list[str] = []
    models: list[str | None] = []
    if isinstance(value, Mapping):
        for m, t in value.items():
            sub = f"{field}.{display_name(m)}"
            if not isinstance(t, str):
                raise RowProblem(sub, f"must be a string, got {type(t).__name__}")
            texts.append(check_text(t, sub))
            models.append(_model_name(m, sub))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if isinstance(item, str):
                texts.append(check_text(item, f"{field}[{i}]"))
                models.append(None)
            elif isinstance(item, Mapping) and isinstance(item.get("text", item.get("content")), str):
                texts.append(check_text(item.get("text", item.get("content")), f"{field}[{i}]"))
                models.append(_model_name(item.get("model"), f"{field}[{i}].model"))
            else:
                raise RowProblem(f"{field}[{i}]", "must be a string or an object with 'text' (and optional 'model')")
        given_models = obj.get(models_field)
        if given_models not in (None, "", []):
            if not isinstance(given_models, list) or len(given_models) != len(texts):
                raise RowProblem(models_field, f"must be a list as long as '{field}' ({len(texts)})")
            models = [_model_name(m, f"{models_field}[{i}]") or models[i] for i, m in enumerate(given_models)]
    else:
        raise RowProblem(field, f"must be a list of responses or an object {{model: text}}, got {type(value).__name__}")
    if len(texts) < min_n:
        raise RowProblem(field, f"needs at least {min_n} response{'s' if min_n > 1 else ''}, got {len(texts)}")
    seen: dict[str, int] = {}
    for i, t in enumerate(texts):
        if t in seen:
            raise RowProblem(f"{field}[{i}]", f"repeats {field}[{seen[t]}] word for word")
        seen[t] = i
    return texts, models


def _model_name(value: Any, field: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        value = str(value)
    value = check_text(value.strip(), field)
    if len(value) > MAX_MODEL:
        raise RowProblem(field, f"model name is {len(value)} characters long; at most {MAX_MODEL} are allowed")
    return value or None


def model_field(obj: Mapping[str, Any], field: str) -> str | None:
    """An optional model name (``model_a``, ``model_b``)."""
    return _model_name(obj.get(field), field)
