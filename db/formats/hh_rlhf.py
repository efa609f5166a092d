"""``hh-rlhf``: Anthropic HH-RLHF: ``{"chosen": TRANSCRIPT, "rejected": TRANSCRIPT}``.

Both transcripts (``\\n\\nHuman: ...\\n\\nAssistant: ...``) share the dialogue up to the final assistant turn.
The shared part is cut at the last ``\\n\\nAssistant:`` that lies inside the common prefix of the two
transcripts (not simply the last one in each: a reply may itself contain ``Assistant:`` text, as one record of
the published harmless-base test set does). Its last Human turn is the prompt, earlier turns become the
history (``user``/``assistant`` roles), and the two final assistant turns are compared, chosen as ``a``.
A final assistant turn may be empty (the published data has a few: the assistant said nothing).
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from db.formats.base import (
    PROVENANCE_FIELDS,
    ImportRecord,
    Options,
    RowProblem,
    parse_extra,
    provenance,
    record_key,
    text_field,
)

NAME = "hh-rlhf"
KNOWN = ("chosen", "rejected", *PROVENANCE_FIELDS)
HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"
_TURN = re.compile(r"(\n\nHuman:|\n\nAssistant:)")


def looks_like(obj: Mapping[str, Any]) -> bool:
    """Whether a record is an HH-RLHF transcript pair (used by format detection)."""
    c = obj.get("chosen")
    return isinstance(c, str) and "prompt" not in obj and ("Assistant:" in c and "Human:" in c)


def _normalize(t: str) -> str:
    return "\n\n" + t if t.startswith(("Human:", "Assistant:")) else t


def split_transcripts(chosen: str, rejected: str) -> tuple[str, list[dict[str, str]] | None, str, str]:
    """``(prompt, history, chosen_reply, rejected_reply)`` from two HH transcripts."""
    c, r = _normalize(chosen), _normalize(rejected)
    n = min(len(c), len(r))
    p = 0
    while p < n and c[p] == r[p]:
        p += 1
    cut = c.rfind(ASSISTANT, 0, p)
    if cut < 0:
        raise RowProblem("rejected", "shares no dialogue with chosen up to an '\\n\\nAssistant:' turn")
    prefix = c[:cut]
    parts = _TURN.split(prefix)
    turns: list[dict[str, str]] = []
    if parts[0].strip():
        turns.append({"role": "system", "content": parts[0].strip()})
    for marker, content in zip(parts[1::2], parts[2::2]):
        turns.append({"role": "user" if marker == HUMAN else "assistant", "content": content.strip()})
    if not turns or turns[-1]["role"] != "user":
        raise RowProblem("chosen", "the dialogue before the final Assistant turn does not end with a Human turn")
    prompt = turns[-1]["content"]
    if not prompt:
        raise RowProblem("chosen", "the last Human turn is empty")
    reply_c, reply_r = c[cut + len(ASSISTANT):].strip(), r[cut + len(ASSISTANT):].strip()
    if reply_c == reply_r:
        raise RowProblem("rejected", "its final Assistant turn is identical to chosen's: there is nothing to compare")
    return prompt, (turns[:-1] or None), reply_c, reply_r


def parse(obj: Mapping[str, Any], line: int, opts: Options) -> ImportRecord:
    """One HH-RLHF record as an ``ImportRecord`` (chosen reply = ``a``, winner ``a``)."""
    chosen = text_field(obj, "chosen")
    rejected = text_field(obj, "rejected")
    prompt, history, a, b = split_transcripts(chosen, rejected)
    prov = provenance(obj, opts)
    return ImportRecord(
        line=line, kind="comparison", prompt=prompt, history=history, category=prov["category"], responses=[a, b],
        models=[None, None], winner="a", ranks=None, source=prov["source"], annotator=prov["annotator"],
        strength=prov["strength"], split=prov["split"], extra=parse_extra(obj, KNOWN), key=record_key(NAME, obj),
        origin=prov["origin"], time_spent_ms=prov["time_spent_ms"], origin_given=prov["origin_given"],
    )
