"""Chat markup in text: a prompt or a whole dialogue rendered by a chat template, parsed back into its messages.

RL trainers often send the reward server text that a chat template rendered (OpenRLHF's prompts and queries, a
GRPO prompt templated beforehand): ``<s>[INST] Hi [/INST]``, ``<|im_start|>user\\nHi<|im_end|>``... A reward model
trained on conversations must score the conversation, not the markup, so the markup is parsed back into
``{"role", "content"}`` messages first.

A :class:`ChatMarkup` is learnt from a Jinja chat template by rendering conversations of placeholder messages:
what stands before the first message, between two messages of given roles, and after the last one are its
markers. Matching is tolerant of what a tokenizer round trip does to text (token ids decoded back to text):
whitespace around and inside markers may appear or vanish, and the tokens in :data:`NOISE_TOKENS` (bos, eos,
padding) are ignored wherever they are. Message contents come back stripped of surrounding whitespace.

Built in (:data:`BUILTIN`): ``inst`` (Llama-2 and Mistral ``[INST]``, with Llama-2's ``<<SYS>>`` system block),
``chatml`` (``<|im_start|>``: Qwen, many fine-tunes), ``llama3`` (``<|start_header_id|>``) and ``gemma``
(``<start_of_turn>``). Others come from :func:`load_markup`: a Jinja template file or a tokenizer folder.
No torch, no streamlit.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# bos / eos / padding tokens of common tokenizers: ignored wherever they appear in text and in markers
NOISE_TOKENS = ("<s>", "</s>", "<pad>", "<unk>", "<|begin_of_text|>", "<|end_of_text|>", "<|endoftext|>",
                "<|finetune_right_pad_id|>", "<bos>", "<eos>", "[PAD]", "[CLS]", "[SEP]")

_INST = ("{{ bos_token }}{% for m in messages %}"
         "{% if m['role'] == 'system' %}{{ '[INST] <<SYS>>\\n' + m['content'] + '\\n<</SYS>>\\n\\n' }}"
         "{% elif m['role'] == 'user' %}{% if loop.first or messages[loop.index0 - 1]['role'] != 'system' %}"
         "{{ '[INST] ' }}{% endif %}{{ m['content'] + ' [/INST]' }}"
         "{% else %}{{ ' ' + m['content'] + ' ' + eos_token }}{% endif %}{% endfor %}")
_CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
           "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
_LLAMA3 = ("{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n'"
           " + m['content'] | trim + '<|eot_id|>' }}{% endfor %}"
           "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")
_GEMMA = ("{{ bos_token }}{% for m in messages %}{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
          "{{ '<start_of_turn>' + role + '\\n' + m['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}")

# name -> (template, bos, eos); aliases below
_TEMPLATES = {"inst": (_INST, "<s>", "</s>"), "chatml": (_CHATML, "", "<|im_end|>"),
              "llama3": (_LLAMA3, "<|begin_of_text|>", "<|eot_id|>"), "gemma": (_GEMMA, "<bos>", "<eos>")}
ALIASES = {"llama2": "inst", "mistral": "inst", "qwen": "chatml", "llama-3": "llama3"}


class MarkupError(ValueError):
    """A chat template that cannot be learnt or parsed with (unknown name, unreadable file, markers that are
    only whitespace); the message says which and why."""


def _placeholder(tag: str) -> str:
    return f"\ue000{tag}\ue001"  # private-use characters: survive `trim` and appear in no template


_ATOMS = re.compile(r"<[^<>\s]+>|[^\s<]+|<")  # special tokens (<...>) and the runs of text between them


def _pattern(marker: str) -> re.Pattern[str] | None:
    """A marker as a regex tolerant of whitespace added or dropped inside it and next to its special tokens (a
    legacy SentencePiece decoder writes ``<|im_start|> user``), or None when it is only whitespace. No leading
    whitespace pattern: searched through long text, it would cost time in the square of a run of spaces."""
    atoms = _ATOMS.findall(marker)
    if not atoms:
        return None
    return re.compile(r"\s*".join(re.escape(a) for a in atoms) + r"\s*")


def _alternatives(tokens: tuple[str, ...] | list[str]) -> str:
    """A regex matching any of ``tokens`` (longest first)."""
    return "|".join(re.escape(t) for t in sorted({t for t in tokens if t}, key=len, reverse=True))


def _edges(text: str, atoms: tuple[str, ...]) -> tuple[int, int]:
    """``(i, j)``: ``text[i:j]`` is ``text`` without whitespace and without the marker made of ``atoms`` (whitespace
    allowed between them) repeated at either end. Index arithmetic, no regex: linear time whatever the text."""
    i, j = 0, len(text)
    while True:
        while i < j and text[i].isspace():
            i += 1
        while j > i and text[j - 1].isspace():
            j -= 1
        if not atoms:
            return i, j
        moved = False
        k = i
        for a in atoms:
            while k < j and text[k].isspace():
                k += 1
            if not text.startswith(a, k, j):
                break
            k += len(a)
        else:
            i, moved = k, True
        k = j
        for a in reversed(atoms):
            while k > i and text[k - 1].isspace():
                k -= 1
            if not text.endswith(a, i, k):
                break
            k -= len(a)
        else:
            j, moved = k, True
        if not moved:
            return i, j


@dataclass(frozen=True)
class ChatMarkup:
    """The markers of one chat template (see the module docstring); :meth:`parse` turns text into messages."""

    name: str
    starts: tuple[tuple[str, re.Pattern[str]], ...]  # (role of the first message, marker before it), longest first
    seps: tuple[tuple[str, str, re.Pattern[str]], ...]  # (role before, role after, marker between them)
    end: tuple[str, ...]  # the marker after the last assistant message, as atoms (empty: none)
    noise: tuple[str, ...] = NOISE_TOKENS
    _noise_rx: re.Pattern[str] = field(init=False, repr=False, compare=False)
    _end_rx: re.Pattern[str] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_noise_rx", re.compile(_alternatives(self.noise)))
        object.__setattr__(self, "_end_rx", _pattern(" ".join(self.end)))

    def clean(self, text: str) -> str:
        """``text`` without noise tokens, and without the template's end-of-turn markers at either end."""
        text = self._noise_rx.sub("", text)
        i, j = _edges(text, self.end)
        return text[i:j]

    def parse(self, text: str, *, partial_start: bool = False) -> list[dict[str, str]] | None:
        """The messages ``text`` renders, or None when it is not this template's markup (no start marker at its
        beginning; ``partial_start``: text cut on the left, whose first message's role is told by the marker
        after it). A rendered generation prompt gives a last ``assistant`` message with empty content."""
        t = self.clean(text)
        role, pos = None, 0
        for start_role, rx in self.starts:
            if (m := rx.match(t)) is not None:
                role, pos = start_role, m.end()
                break
        if role is None and not partial_start:
            return None
        messages: list[dict[str, str]] = []
        found: dict[int, re.Match[str] | None] = {}  # each marker's next match: every marker searches the text once
        while True:
            best: tuple[re.Match[str], str, str] | None = None
            for n, (before, after, rx) in enumerate(self.seps):
                if role is not None and before != role:
                    continue
                m = found[n] if n in found else rx.search(t, pos)
                if m is not None and m.start() < pos:
                    m = rx.search(t, pos)
                found[n] = m
                if m is not None and (best is None or m.start() < best[0].start()):
                    best = (m, before, after)
            if best is None:
                break
            m, before, after = best
            messages.append({"role": before, "content": t[pos:m.start()].strip()})
            role, pos = after, m.end()
        if role is None:  # partial text with no marker at all: not this markup
            return None
        rest = t[pos:]
        if role == "assistant" and self._end_rx is not None:
            m = self._end_rx.search(rest)
            rest = rest[:m.start()] if m is not None else rest
        messages.append({"role": role, "content": rest.strip()})
        return messages


def _render(template: Any, messages: list[dict[str, str]], gen: bool, bos: str, eos: str) -> str:
    return template.render(messages=messages, add_generation_prompt=gen, bos_token=bos, eos_token=eos)


def learn_markup(name: str, template_text: str, *, bos: str = "", eos: str = "",
                 extra_noise: tuple[str, ...] = ()) -> ChatMarkup:
    """Learn a template's markers by rendering placeholder conversations (see the module docstring). Raises
    :class:`MarkupError` when the template cannot render a user/assistant dialogue or separates messages by
    whitespace alone."""
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    env.filters["tojson"] = lambda x, **kw: json.dumps(x, **kw)
    noise = tuple(dict.fromkeys((*NOISE_TOKENS, *(t for t in (bos, eos, *extra_noise) if t))))
    rx = re.compile(_alternatives(noise))
    ph = {k: _placeholder(k) for k in ("s", "u1", "a1", "u2", "a2")}
    dialogue = [{"role": "user", "content": ph["u1"]}, {"role": "assistant", "content": ph["a1"]},
                {"role": "user", "content": ph["u2"]}, {"role": "assistant", "content": ph["a2"]}]
    try:
        template = env.from_string(template_text)
        a = rx.sub("", _render(template, dialogue, False, bos, eos))
        g = rx.sub("", _render(template, dialogue[:1], True, bos, eos))
    except TemplateError as exc:
        raise MarkupError(f"chat template {name}: cannot render a user/assistant dialogue ({exc})") from None
    if any(p not in a for p in list(ph.values())[1:]) or ph["u1"] not in g:
        raise MarkupError(f"chat template {name}: does not render each message's content")

    def between(text: str, left: str | None, right: str | None) -> str:
        i = text.index(left) + len(left) if left else 0
        return text[i:text.index(right)] if right else text[i:]

    def pat(marker: str, what: str) -> re.Pattern[str]:
        p = _pattern(marker)
        if p is None:
            raise MarkupError(f"chat template {name}: {what} is only whitespace, so messages cannot be told apart")
        return p

    starts = [("user", pat(between(a, None, ph["u1"]), "the text before the first message"))]
    seps = [("user", "assistant", pat(between(a, ph["u1"], ph["a1"]), "the marker between user and assistant")),
            ("assistant", "user", pat(between(a, ph["a1"], ph["u2"]), "the marker between assistant and user"))]
    gen = _pattern(between(g, ph["u1"], None))
    if gen is not None and gen.pattern != seps[0][2].pattern:
        seps.append(("user", "assistant", gen))
    try:
        s = rx.sub("", _render(template, [{"role": "system", "content": ph["s"]}, *dialogue[:2]], False, bos, eos))
    except TemplateError:  # a template without system messages
        s = ""
    if ph["s"] in s and ph["u1"] in s:
        start_s, sep_s = _pattern(between(s, None, ph["s"])), _pattern(between(s, ph["s"], ph["u1"]))
        if start_s is not None and sep_s is not None and start_s.pattern != starts[0][1].pattern:
            starts.append(("system", start_s))
            seps.append(("system", "user", sep_s))
    starts.sort(key=lambda x: len(x[1].pattern), reverse=True)  # [INST] <<SYS>> before [INST]
    return ChatMarkup(name, tuple(starts), tuple(seps), tuple(_ATOMS.findall(between(a, ph["a2"], None))), noise)


_builtin_cache: dict[str, ChatMarkup] = {}


def builtin(name: str) -> ChatMarkup:
    """A built-in template's markup by name (``inst``, ``chatml``, ``llama3``, ``gemma`` or an alias such as
    ``mistral``, ``llama2``, ``qwen``)."""
    key = ALIASES.get(name.lower(), name.lower())
    if key not in _TEMPLATES:
        raise MarkupError(f"unknown chat template {name!r}: use one of {', '.join(BUILTIN)} (or "
                          f"{', '.join(sorted(ALIASES))}), a Jinja template file or a tokenizer folder")
    if key not in _builtin_cache:
        text, bos, eos = _TEMPLATES[key]
        _builtin_cache[key] = learn_markup(key, text, bos=bos, eos=eos)
    return _builtin_cache[key]


BUILTIN = tuple(_TEMPLATES)


def load_markup(spec: str) -> ChatMarkup:
    """The markup of ``spec``: a built-in name, a Jinja template file, or a tokenizer folder (or its
    ``tokenizer_config.json``) whose ``chat_template`` (or ``chat_template.jinja``) and bos/eos/pad tokens are
    used. Raises :class:`MarkupError` naming the problem."""
    path = Path(spec).expanduser()
    if not path.exists():
        return builtin(spec)
    bos = eos = ""
    extra: list[str] = []
    if path.is_dir():
        jinja = path / "chat_template.jinja"
        cfg_path = path / "tokenizer_config.json"
        cfg = _read_json(cfg_path) if cfg_path.is_file() else {}
        text = jinja.read_text(encoding="utf-8") if jinja.is_file() else cfg.get("chat_template")
    elif path.suffix == ".json":
        cfg = _read_json(path)
        text = cfg.get("chat_template")
    else:
        cfg, text = {}, path.read_text(encoding="utf-8")
    if isinstance(text, list):  # several named templates: the default one
        text = next((t.get("template") for t in text if isinstance(t, dict) and t.get("name") == "default"), None)
    if not isinstance(text, str) or not text.strip():
        raise MarkupError(f"chat template {spec}: no chat template found (a Jinja file, or a tokenizer folder "
                          "with chat_template.jinja or a chat_template in tokenizer_config.json)")

    def token(key: str) -> str:
        v = cfg.get(key)
        v = v.get("content") if isinstance(v, dict) else v
        return v if isinstance(v, str) else ""

    bos, eos = token("bos_token"), token("eos_token")
    extra = [token("pad_token"), token("unk_token")]
    return learn_markup(str(spec), text, bos=bos, eos=eos, extra_noise=tuple(t for t in extra if t))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MarkupError(f"chat template {path}: cannot read it ({exc})") from None
    return data if isinstance(data, dict) else {}


def default_markups(extra: ChatMarkup | None = None) -> tuple[ChatMarkup, ...]:
    """The markups tried on text, in order: ``extra`` (a ``--chat-template``) first, then the built-ins."""
    return ((extra,) if extra is not None else ()) + tuple(builtin(n) for n in BUILTIN)


def parse_chat(text: str, markups: tuple[ChatMarkup, ...], *, partial_start: bool = False,
               ) -> tuple[ChatMarkup, list[dict[str, str]]] | None:
    """The first of ``markups`` that parses ``text``, with its messages (None: plain text)."""
    for mk in markups:
        msgs = mk.parse(text, partial_start=partial_start)
        if msgs is not None:
            return mk, msgs
    return None
