"""``trl``: TRL preference data: ``prompt``, ``chosen``, ``rejected``.

Three shapes are read:

* standard: strings (``{"prompt": "...", "chosen": "...", "rejected": "..."}``);
* conversational: ``prompt`` a list of chat messages ending with the user's turn (earlier messages become the
  prompt's history), ``chosen``/``rejected`` lists holding one assistant message;
* implicit prompt: no ``prompt``; ``chosen``/``rejected`` full conversations sharing every message but the last.

The chosen response is stored as the file's ``a`` with winner ``a``. Other fields are kept in ``extra``.
Export (``to_obj``) writes the standard shape, or the conversational one when prompts have history.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from db.formats.base import (
    PROVENANCE_FIELDS,
    ImportRecord,
    Options,
    RowProblem,
    check_text,
    option,
    parse_extra,
    provenance,
    record_key,
    require,
)

NAME = "trl"
KNOWN = ("prompt", "chosen", "rejected", *PROVENANCE_FIELDS)


def _maybe_json_list(value: Any) -> Any:
    """Table cells hold message lists as JSON text; decode those (and only those)."""
    if isinstance(value, str) and value.lstrip().startswith("[{"):
        try:
            decoded = json.loads(value)
        except ValueError:
            return value
        if isinstance(decoded, list) and all(isinstance(m, dict) and "role" in m for m in decoded):
            return decoded
    return value


def _messages(value: Any, field: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise RowProblem(field, "must be a string or a non-empty list of chat messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise RowProblem(f"{field}[{i}]", "must be an object with string 'role' and 'content'")
        out.append({"role": check_text(m["role"], f"{field}[{i}].role"), "content": check_text(m["content"], f"{field}[{i}].content")})
    return out


def _completion(value: Any, field: str) -> str:
    if isinstance(value, str):
        return check_text(value, field)
    msgs = _messages(value, field)
    if len(msgs) != 1:
        raise RowProblem(field, f"must hold exactly one assistant message, got {len(msgs)}")
    return msgs[0]["content"]


def _split_prompt(msgs: list[dict[str, str]], field: str) -> tuple[str, list[dict[str, str]] | None]:
    if msgs[-1]["role"] != "user":
        raise RowProblem(field, f"must end with the user's message, ends with role {msgs[-1]['role']!r}")
    return msgs[-1]["content"], (msgs[:-1] or None)


def parse(obj: Mapping[str, Any], line: int, opts: Options) -> ImportRecord:
    """One TRL preference record (any of the three shapes) as an ``ImportRecord``."""
    chosen_v = _maybe_json_list(require(obj, "chosen"))
    rejected_v = _maybe_json_list(require(obj, "rejected"))
    prompt_v = _maybe_json_list(obj.get("prompt"))
    history: list[dict[str, str]] | None = None
    if prompt_v is None or prompt_v == "":
        if isinstance(chosen_v, str) or isinstance(rejected_v, str):
            raise RowProblem("prompt", f"is missing: text chosen/rejected need a prompt (HH-RLHF transcripts: {option('format')} hh-rlhf)")
        c, r = _messages(chosen_v, "chosen"), _messages(rejected_v, "rejected")
        if len(c) != len(r) or c[:-1] != r[:-1]:
            raise RowProblem("rejected", "without a 'prompt', chosen and rejected must share every message but the last")
        if c[-1]["role"] != "assistant" or r[-1]["role"] != "assistant":
            raise RowProblem("chosen", "the last message of chosen and rejected must be the assistant's")
        if len(c) < 2:
            raise RowProblem("prompt", "is missing (and chosen/rejected hold no user message before the answer)")
        prompt, history = _split_prompt(c[:-1], "chosen")
        chosen, rejected = c[-1]["content"], r[-1]["content"]
    else:
        if isinstance(prompt_v, str):
            prompt = check_text(prompt_v, "prompt")
        else:
            prompt, history = _split_prompt(_messages(prompt_v, "prompt"), "prompt")
        chosen, rejected = _completion(chosen_v, "chosen"), _completion(rejected_v, "rejected")
    if not prompt.strip():
        raise RowProblem("prompt", "is empty")
    if chosen == rejected:
        raise RowProblem("rejected", "is identical to chosen: there is nothing to compare")
    prov = provenance(obj, opts)
    return ImportRecord(
        line=line, kind="comparison", prompt=prompt, history=history, category=prov["category"],
        responses=[chosen, rejected], models=[None, None], winner="a", ranks=None, source=prov["source"],
        annotator=prov["annotator"], strength=prov["strength"], split=prov["split"], extra=parse_extra(obj, KNOWN),
        key=record_key(NAME, obj), origin=prov["origin"], time_spent_ms=prov["time_spent_ms"], origin_given=prov["origin_given"],
    )


def to_obj(*, prompt: str, history: list[dict[str, str]] | None, chosen: str, rejected: str, conversational: bool) -> dict[str, Any]:
    """A TRL record; ``conversational`` writes chat-message lists (needed to keep multi-turn history)."""
    if not conversational:
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    return {
        "prompt": [*(history or []), {"role": "user", "content": prompt}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }
