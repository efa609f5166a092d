"""The reward server's request bodies: what a trainer sends, turned into the (prompt, history, response) rows that
RM Studio scores.

Two forms (``POST /score``)::

    {"prompts": [...], "completions": [...]}   strings or chat-message lists, as TRL's GRPO passes them
    {"query": [...], "prompts": [...]}         OpenRLHF: each query is the prompt and the response, decoded from
                                               token ids (``prompts`` optional; ``labels`` is ignored)

Text rendered by a chat template (:mod:`rm_engine.serving.chat_markup`) is parsed back into the conversation, so markup
never changes a score: a templated prompt becomes its messages (system messages included, as earlier turns, which
is how training saw them; ``drop_system`` leaves them out). An OpenRLHF query is matched to its prompt ignoring
whitespace and bos/eos/padding tokens (what a tokenizer round trip changes), also when the trainer cut the
prompt's beginning (left truncation) or its end; a query that matches no prompt is read through its own chat
markup (its last assistant message is the response). Every refusal is a :class:`RequestError` naming the field,
the row and what to send instead.
"""
from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rm_engine.backbone import History
from rm_engine.serving.chat_markup import NOISE_TOKENS, ChatMarkup, default_markups, parse_chat

Row = tuple[str, History, str]
_SURROGATE = re.compile("[\ud800-\udfff]")
TAIL = 64  # skeleton characters of the prompt's end looked for in a query (and the least overlap of a cut prompt)
SLACK = 32  # characters a cut can garble at the start of a query (a multi-byte character or a marker split by it)


class RequestError(ValueError):
    """A body that cannot be scored: the message names the field and row and what to send instead; ``status`` is
    400, or 413 for a body over the row or text-size budget."""

    def __init__(self, message: str, *, field: str | None = None, row: int | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.field, self.row, self.status = field, row, status


@dataclass(frozen=True)
class Reading:
    """How request text is read: the chat markups tried (a ``--chat-template`` first, then the built-ins), whether
    system messages are dropped, and the size budget of one request."""

    markups: tuple[ChatMarkup, ...] = field(default_factory=default_markups)
    drop_system: bool = False
    max_rows: int = 4096
    max_text_chars: int = 400_000


def _fail(field: str, row: int | None, what: str, send: str, status: int = 400) -> RequestError:
    where = f"'{field}'" + (f"[{row}]" if row is not None else "")
    return RequestError(f"{where}{'' if what.startswith('[') else ' '}{what}; {send}", field=field, row=row,
                        status=status)


def _check_text(text: str, field: str, row: int, limit: int) -> None:
    if len(text) > limit:
        raise _fail(field, row, f"holds {len(text):,} characters; at most {limit:,} per text",
                    "send shorter texts (or start the server with a larger --max-text-chars)", 413)
    if _SURROGATE.search(text):
        raise _fail(field, row, "holds an unpaired UTF-16 surrogate (e.g. \\ud800), which is no text",
                    "send valid Unicode text")


def _check_items(body: dict[str, Any], name: str, limit: int, *, strings_only: bool = False) -> list[Any]:
    value = body.get(name)
    if not isinstance(value, list):
        kinds = "strings" if strings_only else "strings or chat-message lists"
        raise _fail(name, None, f"must be a list (of {kinds}), got {type(value).__name__}",
                    f"send '{name}' as a JSON list with one item per row")
    for i, item in enumerate(value):
        if isinstance(item, str):
            _check_text(item, name, i, limit)
        elif isinstance(item, list) and not strings_only:
            for k, m in enumerate(item):
                if not (isinstance(m, dict) and isinstance(m.get("role"), str)
                        and isinstance(m.get("content"), (str, list))):
                    raise _fail(name, i, f"[{k}] is not a chat message",
                                "send each message as an object with a string 'role' and a string 'content'")
                _check_text(m["role"], name, i, limit)
                parts = m["content"] if isinstance(m["content"], list) else [m["content"]]
                for part in parts:
                    text = part.get("text", "") if isinstance(part, dict) else part
                    if not isinstance(text, str):
                        raise _fail(name, i, f"[{k}] has a content part that is not text",
                                    "send 'content' as a string (or a list of {'type': 'text', 'text': ...})")
                    _check_text(text, name, i, limit)
        elif not (strings_only and item is None):
            kinds = "a string" if strings_only else "a string or a list of chat messages"
            raise _fail(name, i, f"must be {kinds}, got {type(item).__name__}", f"send {kinds}")
    return value


def parse_request(body: Any, reading: Reading | None = None) -> list[Row]:
    """The (prompt, history, response) rows of a request body (see the module docstring); raises
    :class:`RequestError`."""
    reading = reading or Reading()
    if not isinstance(body, dict):
        raise RequestError("the body must be a JSON object: send {\"prompts\": [...], \"completions\": [...]} "
                           "or OpenRLHF's {\"query\": [...], \"prompts\": [...]}", field="body")
    form = "completions" if "completions" in body else "query" if "query" in body else None
    if form is None:
        raise RequestError("the body has neither 'completions' nor 'query': send {\"prompts\": [...], "
                           "\"completions\": [...]} or OpenRLHF's {\"query\": [...], \"prompts\": [...]}",
                           field="completions")
    first = body.get(form)
    if isinstance(first, list) and len(first) > reading.max_rows:  # before looking at every row
        raise _fail(form, None, f"holds {len(first):,} rows; at most {reading.max_rows:,} in one request",
                    "send smaller batches (or start the server with a larger --max-rows)", 413)
    if form == "completions":
        completions = _check_items(body, "completions", reading.max_text_chars)
        prompts = _check_items(body, "prompts", reading.max_text_chars)
        if len(prompts) != len(completions):
            raise _fail("prompts", None, f"holds {len(prompts)} prompts for {len(completions)} completions",
                        "send one prompt per completion")
        rows = [_trl_row(p, c, reading) for p, c in zip(prompts, completions)]
    else:
        queries = _check_items(body, "query", reading.max_text_chars, strings_only=True)
        prompts = (_check_items(body, "prompts", reading.max_text_chars, strings_only=True)
                   if body.get("prompts") is not None else [None] * len(queries))
        if len(prompts) != len(queries):
            raise _fail("prompts", None, f"holds {len(prompts)} prompts for {len(queries)} queries",
                        "send one prompt per query (or no 'prompts' at all)")
        rows = [_openrlhf_row(i, q, p, reading) for i, (q, p) in enumerate(zip(queries, prompts))]
    return rows


def _conversation_row(messages: list[dict[str, str]], response: Any, reading: Reading) -> Row:
    msgs = [m for m in messages if not (reading.drop_system and m.get("role") == "system")]
    prompt, history, text = completion_rows([msgs], [response])[0]
    return prompt, history, text


def _templated(text: str, reading: Reading) -> tuple[ChatMarkup, list[dict[str, str]]] | None:
    """A templated prompt's markup and messages, without the generation prompt's empty assistant message."""
    parsed = parse_chat(text, reading.markups)
    if parsed is None:
        return None
    mk, msgs = parsed
    if msgs and msgs[-1]["role"] == "assistant" and not msgs[-1]["content"]:
        msgs = msgs[:-1]
    return mk, msgs


def _trl_row(prompt: Any, completion: Any, reading: Reading) -> Row:
    if isinstance(prompt, str) and (parsed := _templated(prompt, reading)) is not None:
        mk, msgs = parsed
        response = mk.clean(completion).strip() if isinstance(completion, str) else completion
        return _conversation_row(msgs, response, reading)
    if isinstance(prompt, list):
        return _conversation_row(prompt, completion, reading)
    return completion_rows([prompt], [completion])[0]


def _openrlhf_row(i: int, query: Any, prompt: Any, reading: Reading) -> Row:
    if not isinstance(query, str):
        raise _fail("query", i, "is null", "send each query as the decoded prompt and response")
    templated = _templated(prompt, reading) if isinstance(prompt, str) else None
    noise = tuple(dict.fromkeys(t for mk in reading.markups for t in mk.noise)) or NOISE_TOKENS
    end = _prompt_end(query, prompt, noise) if isinstance(prompt, str) else None
    if end is not None:
        response = _clean_response(query[end:], (templated[0],) if templated else reading.markups)
        if templated is not None:
            return _conversation_row(templated[1], response, reading)
        return str(prompt), None, response
    parsed = parse_chat(query, reading.markups, partial_start=True)
    if parsed is None or parsed[1][-1]["role"] != "assistant":
        what = (f"does not continue 'prompts'[{i}] (compared ignoring spaces and bos/eos/padding tokens) and "
                if isinstance(prompt, str) else "") + "holds no chat markup the server knows"
        raise _fail("query", i, what, "send each query as its prompt followed by the response, with the prompt in "
                    "'prompts', or start the server with --chat-template for this model's template")
    mk, msgs = parsed
    context = templated[1] if templated is not None else msgs[:-1]
    return _conversation_row(context, msgs[-1]["content"], reading)


def _clean_response(text: str, markups: Sequence[ChatMarkup]) -> str:
    for mk in markups:
        text = mk.clean(text)
    return text.strip()


def _skeleton(text: str, skip: re.Pattern[str]) -> tuple[str, list[int], list[int]]:
    """``text`` without whitespace and noise tokens, with the start of each kept segment in the skeleton and in
    ``text`` (to map a skeleton position back)."""
    parts: list[str] = []
    skel_starts: list[int] = []
    text_starts: list[int] = []
    pos = k = 0
    for m in skip.finditer(text):
        if m.start() > pos:
            parts.append(text[pos:m.start()])
            skel_starts.append(k)
            text_starts.append(pos)
            k += m.start() - pos
        pos = m.end()
    if pos < len(text):
        parts.append(text[pos:])
        skel_starts.append(k)
        text_starts.append(pos)
    return "".join(parts), skel_starts, text_starts


def _prompt_end(query: str, prompt: str, noise: tuple[str, ...]) -> int | None:
    """Where the prompt's text ends in ``query`` (an index into ``query``), or None when the query does not
    continue the prompt. Whitespace and noise tokens are ignored; the query may hold only the prompt's end (its
    beginning cut) or only its beginning (its end cut), by at least :data:`TAIL` characters."""
    skip = re.compile(r"\s+|" + "|".join(re.escape(t) for t in sorted(noise, key=len, reverse=True)))
    qs, skel_starts, text_starts = _skeleton(query, skip)
    ps = _skeleton(prompt, skip)[0]
    n = len(ps)
    if qs.startswith(ps):
        k: int | None = n
    else:
        k = None
        tail = ps[-TAIL:]
        o = qs.rfind(tail, 0, n + SLACK)  # the prompt's end, with its beginning cut: the furthest match first
        for _ in range(16):  # a bound on the work a repetitive prompt can cause
            if o < 0:
                break
            e = o + len(tail)
            if any(ps.endswith(qs[s:e]) for s in range(min(SLACK, o) + 1)):
                k = e
                break
            o = qs.rfind(tail, 0, e - 1)
        if k is None:  # the prompt's beginning, with its end cut
            common = _common_prefix(qs, ps)
            k = common if common >= TAIL else None
    if k is None:
        return None
    if k == 0:
        return 0
    j = bisect.bisect_right(skel_starts, k - 1) - 1  # the segment holding skeleton character k - 1
    return text_starts[j] + (k - skel_starts[j])


def _common_prefix(a: str, b: str) -> int:
    """The length of the longest common prefix of ``a`` and ``b`` (binary search over slice comparisons)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _split_messages(prompt: Any, completion: Any) -> tuple[str, list[dict[str, str]], str]:
    """(prompt text, history, response text) from TRL-style strings or chat-message lists."""
    def content(m: Any) -> str:
        c = m.get("content", "") if isinstance(m, dict) else str(m)
        if isinstance(c, list):  # multimodal-style [{"type": "text", "text": ...}]
            c = " ".join(str(part.get("text", "")) if isinstance(part, dict) else str(part) for part in c)
        return str(c)

    if isinstance(completion, list):
        response = "\n".join(content(m) for m in completion if not isinstance(m, dict) or m.get("role", "assistant") == "assistant")
    else:
        response = str(completion)
    if isinstance(prompt, list):
        msgs = [m for m in prompt if isinstance(m, dict)]
        last_user = max((i for i, m in enumerate(msgs) if m.get("role") == "user"), default=None)
        if last_user is None:
            return "\n".join(content(m) for m in msgs), [], response
        history = [{"role": str(m.get("role")), "content": content(m)} for m in msgs[:last_user]]
        return content(msgs[last_user]), history, response
    return str(prompt), [], response


def completion_rows(prompts: Sequence[Any], completions: Sequence[Any]) -> list[tuple[str, History, str]]:
    """(prompt, history, response) rows of an RL trainer's batch (strings or chat-message lists, as TRL's GRPO
    passes them). Raises ``ValueError`` when the two lists differ in length."""
    if len(prompts) != len(completions):
        raise ValueError(f"reward function: {len(prompts)} prompts for {len(completions)} completions")
    return [(p, h or None, r) for p, h, r in (_split_messages(p, c) for p, c in zip(prompts, completions))]
