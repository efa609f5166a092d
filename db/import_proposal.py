"""A field mapping proposed from a file's column names and values, for a person to confirm before importing.

``profile_columns`` reads the first rows of a file (nothing is written) and describes each column: its
distinct values, whether they are numbers. ``propose_mapping`` turns those profiles into the ``mapped``
format's options: which column holds the prompt (question, instruction, ...), the two responses (answer_a /
answer_b, ``response 1`` / ``response 2``, output_1 / output_2, chosen / rejected), the verdict column(s)
(preference, label, winner, several annotator columns) and how their values read: words the importer knows,
values to map (``-1:a,1:b,0:tie``) or a number scale (``1:a,2:b``). Each choice comes with a note saying why,
so the Data page can show it; the person confirms or changes it. ``verdict_text`` says a preview row's verdict
in words. Pure functions over the file; no database, no Streamlit.
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from db.formats.base import WINNER_ALIASES, FormatError, RowProblem, scalar_text
from db.formats.containers import Input, iter_raw, sniff_container

SAMPLE_ROWS = 200
MAX_VALUES = 12  # distinct values kept per column; more means "many" (free text, or a fine-grained number)

_PROMPT_NAMES = ("prompt", "question", "instruction", "query", "input", "user_input", "user_prompt", "context")
_PAIR_STEMS = "answer|response|output|completion|generation|reply|model_output|text"
_PAIR = re.compile(rf"^(?P<stem>{_PAIR_STEMS})_?(?P<side>a|b|1|2|0)$")
_VERDICT_NAMES = ("winner", "preference", "overall_preference", "human_preference", "label", "choice", "verdict",
                  "better", "judgment", "judgement", "preferred", "annotation")
_RATER = re.compile(r"^(annotator|rater|judge|labeler|labeller|worker)_?\d+$")
_MODEL_PAIRS = (("model_a", "model_b"), ("model_1", "model_2"), ("generator_1", "generator_2"),
                ("generator_a", "generator_b"), ("model1", "model2"))
_CATEGORY_NAMES = ("category", "scenario", "domain", "topic", "task")
# Words a verdict value may use for each outcome (after the importer's own aliases).
_OUTCOME_WORDS = (
    ("both_bad", ("both bad", "bothbad", "both_bad", "neither", "none")),
    ("tie", ("tie", "draw", "equal", "same", "even")),
    ("a", ("a", "1", "first", "left", "one")),
    ("b", ("b", "2", "second", "right", "two")),
)


@dataclass(frozen=True)
class ColumnProfile:
    """One column as seen in a file's first rows."""

    name: str
    values: tuple[str, ...]  # distinct non-empty values as text (at most MAX_VALUES)
    many: bool  # more distinct values than MAX_VALUES
    numeric: bool  # every non-empty value is a finite number
    integer: bool  # ... and a whole one
    low: float | None = None
    high: float | None = None
    text_len: float = 0.0  # mean length of the values as text


@dataclass(frozen=True)
class Proposal:
    """Options for the ``mapped`` format, each with why it was chosen (``notes``), for a person to confirm."""

    mapping: dict[str, str] = field(default_factory=dict)  # target -> column ("c1|c2": one annotator per column)
    winner_values: str | None = None  # "-1:a,1:b,0:tie"
    winner_scale: str | None = None  # "1:a,2:b"
    notes: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        """Whether the mapping names everything an import needs (a prompt and a pair with a verdict)."""
        m = self.mapping
        return "prompt" in m and (all(t in m for t in ("a", "b", "winner")) or all(t in m for t in ("chosen", "rejected")))


def _norm(name: str) -> str:
    return re.sub(r"[\s\-.]+", "_", str(name).strip().lower())


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            x = float(value.strip())
        except ValueError:
            return None
        return x if math.isfinite(x) else None
    return None


def profile_rows(rows: Iterable[Mapping[str, Any]]) -> list[ColumnProfile]:
    """Profiles of the columns of some rows (in first-seen column order)."""
    seen: dict[str, list[Any]] = {}
    for row in rows:
        for k, v in row.items():
            seen.setdefault(str(k), []).append(v)
    out = []
    for name, vals in seen.items():
        present = [v for v in vals if v is not None and v != "" and not isinstance(v, (list, dict))]
        texts = list(dict.fromkeys(scalar_text(v) for v in present))
        numbers = [_number(v) for v in present]
        numeric = bool(present) and all(x is not None for x in numbers)
        nums = [x for x in numbers if x is not None]
        out.append(ColumnProfile(
            name=name, values=tuple(texts[:MAX_VALUES]), many=len(texts) > MAX_VALUES, numeric=numeric,
            integer=numeric and all(x.is_integer() for x in nums),
            low=min(nums) if numeric else None, high=max(nums) if numeric else None,
            text_len=sum(len(str(v)) for v in present) / max(1, len(present)),
        ))
    return out


def profile_columns(src: Any, *, filename: str | None = None, n: int = SAMPLE_ROWS) -> list[ColumnProfile]:
    """Profiles of a file's columns from its first ``n`` readable rows ([] when the file cannot be read)."""
    inp = Input.of(src, filename)
    rows: list[dict[str, Any]] = []
    try:
        for _, obj in iter_raw(inp, sniff_container(inp)):
            if isinstance(obj, RowProblem):
                continue
            rows.append(obj)
            if len(rows) >= n:
                break
    except FormatError:
        pass
    return profile_rows(rows)


def _words_to_outcomes(values: Sequence[str]) -> dict[str, str] | None:
    """Map verdict words (``Response 1``, ``Tie``...) to outcomes, or None if one of them means nothing known."""
    out: dict[str, str] = {}
    for v in values:
        low = v.strip().lower()
        if low in WINNER_ALIASES:
            out[v] = WINNER_ALIASES[low]
            continue
        tokens = set(re.split(r"[\s_\-()\[\].,:]+", low)) - {""}
        for outcome, words in _OUTCOME_WORDS:
            if low in words or tokens & {w for w in words if " " not in w}:
                out[v] = outcome
                break
        else:
            return None
    return out


def _verdict_reading(col: ColumnProfile, *, rater: bool) -> tuple[str | None, str | None, str] | None:
    """``(winner_values, winner_scale, note)`` for a verdict column, or None when its values look like no verdict."""
    if not col.values:
        return None
    if not col.numeric:
        if col.many:
            return None
        if all(v.strip().lower() in WINNER_ALIASES for v in col.values):
            return None, None, f"'{col.name}' holds verdict words the importer reads as they are ({', '.join(col.values)})"
        words = _words_to_outcomes(col.values)
        if words is None or any("," in v for v in words):  # a comma cannot be written in the values' syntax
            return None
        spec = ",".join(f"{k}:{v}" for k, v in words.items())
        return spec, None, f"'{col.name}' holds {', '.join(col.values)}: read as {spec}"
    values = {float(v) for v in col.values}
    if col.integer and not col.many:
        if values <= {-1.0, 0.0, 1.0} and -1.0 in values:
            return "-1:a,1:b,0:tie", None, f"'{col.name}' holds -1, 0, 1: -1 = first response better, 1 = second, 0 = tie"
        if values <= {1.0, 2.0} or (values <= {0.0, 1.0, 2.0} and rater):
            return ("1:a,2:b,0:tie" if 0.0 in values else "1:a,2:b"), None, (
                f"'{col.name}' holds {', '.join(sorted(col.values))}: 1 = first response better, 2 = second"
                + (", 0 = tie" if 0.0 in values else "") + " (check it)")
        if values <= {0.0, 1.0, 2.0}:
            return ("0:a,1:b,2:tie" if 2.0 in values else "0:a,1:b"), None, (
                f"'{col.name}' holds {', '.join(sorted(col.values))}: 0 = first response better, 1 = second"
                + (", 2 = tie" if 2.0 in values else "") + " (counted from 0; check it)")
    if col.low is None or col.high is None or col.low == col.high:
        return None
    lo, hi = math.floor(col.low), math.ceil(col.high)
    return None, f"{lo:g}:a,{hi:g}:b", (
        f"'{col.name}' holds numbers from {col.low:g} to {col.high:g}: read as a scale, nearer {lo:g} = first "
        f"response better, nearer {hi:g} = second, the midpoint a tie, the distance from it the strength")


def propose_mapping(columns: Sequence[ColumnProfile]) -> Proposal:
    """The ``mapped`` options a file's columns suggest (see the module's docstring); may be incomplete."""
    by_norm = {_norm(c.name): c for c in columns}
    mapping: dict[str, str] = {}
    notes: list[str] = []
    used: set[str] = set()

    def take(target: str, col: ColumnProfile, why: str) -> None:
        mapping[target] = col.name
        used.add(col.name)
        notes.append(why)

    prompt = next((by_norm[n] for n in _PROMPT_NAMES if n in by_norm), None)
    if prompt is not None:
        take("prompt", prompt, f"prompt: '{prompt.name}'")
    pair = _response_pair(columns, used)
    if pair is not None:
        take("a", pair[0], f"response A: '{pair[0].name}'")
        take("b", pair[1], f"response B: '{pair[1].name}'")
    elif "chosen" in by_norm and "rejected" in by_norm:
        take("chosen", by_norm["chosen"], f"chosen (the better response): '{by_norm['chosen'].name}'")
        take("rejected", by_norm["rejected"], f"rejected: '{by_norm['rejected'].name}'")
    values = scale = None
    if "a" in mapping:
        verdict = _verdicts(columns, by_norm, used)
        if verdict is None:
            notes.append("no verdict column found: choose the column that says which response is better")
        else:
            mapping["winner"], values, scale, why = verdict
            used.update(mapping["winner"].split("|"))
            notes.append(why)
    _optional_fields(by_norm, used, mapping, notes)
    return Proposal(mapping, values, scale, tuple(notes))


def _response_pair(columns: Sequence[ColumnProfile], used: set[str]) -> tuple[ColumnProfile, ColumnProfile] | None:
    """Two columns sharing a stem with sides a/b, 1/2 or 0/1 (answer_a/answer_b, response 1/response 2, ...)."""
    stems: dict[str, dict[str, ColumnProfile]] = {}
    for c in columns:
        m = _PAIR.match(_norm(c.name))
        if m and c.name not in used:
            stems.setdefault(m["stem"], {}).setdefault(m["side"], c)
    for sides in stems.values():
        for first, second in (("a", "b"), ("1", "2"), ("0", "1")):
            if first in sides and second in sides:
                return sides[first], sides[second]
    return None


def _verdicts(columns: Sequence[ColumnProfile], by_norm: dict[str, ColumnProfile],
              used: set[str]) -> tuple[str, str | None, str | None, str] | None:
    """``(winner column(s), winner values, winner scale, note)``: several annotator columns read alike, else the
    first verdict-named column whose values read as verdicts."""
    free = [c for c in columns if c.name not in used]
    raters = [c for c in free if _RATER.match(_norm(c.name)) and _verdict_reading(c, rater=True) is not None]
    if len(raters) > 1:  # read their values together: one reading for every annotator's column
        names = [c.name for c in raters]
        together = profile_rows({"verdicts": v} for c in raters for v in c.values)[0]
        r = _verdict_reading(together, rater=True)
        if r is not None:
            values, scale, why = r
            why = why.replace("'verdicts' holds", "they hold")
            return "|".join(names), values, scale, (f"verdicts: one column per annotator ({', '.join(names)}), each "
                                                    f"annotator named like the column; {why}")
    for c in [*(by_norm[n] for n in _VERDICT_NAMES if n in by_norm and by_norm[n] in free), *raters]:
        r = _verdict_reading(c, rater=bool(_RATER.match(_norm(c.name))))
        if r is not None:
            values, scale, why = r
            return c.name, values, scale, f"verdict: {why}"
    return None


def _optional_fields(by_norm: dict[str, ColumnProfile], used: set[str], mapping: dict[str, str], notes: list[str]) -> None:
    for a, b in _MODEL_PAIRS:
        if a in by_norm and b in by_norm and by_norm[a].name not in used and by_norm[b].name not in used:
            mapping["model_a"], mapping["model_b"] = by_norm[a].name, by_norm[b].name
            used.update((by_norm[a].name, by_norm[b].name))
            notes.append(f"models: '{by_norm[a].name}' and '{by_norm[b].name}'")
            break
    cat = next((by_norm[n] for n in _CATEGORY_NAMES if n in by_norm and by_norm[n].name not in used), None)
    if cat is not None and not cat.numeric and cat.text_len <= 100:
        mapping["category"] = cat.name
        used.add(cat.name)
        notes.append(f"category: '{cat.name}'")


_VERDICT_WORDS = {"a": "A better", "b": "B better", "tie": "tie", "both_bad": "both bad"}


def verdict_text(row: Mapping[str, Any]) -> str:
    """A preview row's verdict in words: "A better (clearly)", "tie", "ranked 2, 1, 3", "no verdict"."""
    if row.get("kind") == "ranking":
        return "ranked " + ", ".join(str(r) for r in row.get("ranks") or [])
    winner = row.get("winner")
    if not winner:
        return "no verdict (to label)"
    text = _VERDICT_WORDS.get(winner, str(winner))
    strength = row.get("strength")
    if winner in ("a", "b") and strength in (1, 2):
        text += " (clearly)" if strength == 2 else " (slightly)"
    return text


def _cut(text: Any, n: int = 200) -> str:
    s = "" if text is None else str(text)
    return s if len(s) <= n else s[: n - 1] + "…"


def preview_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Preview records (``db.importer.record_row``) as a person reads them: line, verdict first, then the
    prompt, the responses (A and B, or all of a ranking / unlabeled record), annotator, source, split."""
    out = []
    for r in rows:
        responses = list(r.get("responses") or [])
        pair = r.get("kind") == "comparison" and len(responses) == 2
        out.append({
            "line": r.get("line"), "verdict": verdict_text(r), "prompt": _cut(r.get("prompt")),
            "response A": _cut(responses[0]) if pair else "", "response B": _cut(responses[1]) if pair else "",
            "responses": "" if pair else " | ".join(_cut(t, 80) for t in responses),
            "annotator": r.get("annotator"), "source": r.get("source"), "split": r.get("split"),
        })
    return out
