"""What an exported model is given and how it reads it: the input spec in ``config.json`` (``rmstudio``), the chat
template the exported tokenizer carries, and the check that one-string inputs score as RM Studio does.

Inputs are token ids of one conversation, untruncated: the exported model truncates as training did
(:mod:`rm_engine.versions.export_modeling`). Three conventions reach it:

* ``tokenizer(context, response)`` (encoders) or the model card's ``input_ids`` (every layout): exactly the ids RM
  Studio builds (:func:`rm_engine.backbone.build_inputs`) before truncation;
* one string rendered by the folder's chat template, ``tokenizer.apply_chat_template(messages, tokenize=False)``,
  tokenized with or without ``add_special_tokens`` (``pipeline("text-classification")`` adds them, TRL's
  ``GRPOTrainer`` does not). Encoders (``text-pair``) get a template of their own that renders RM Studio's plain
  context (``User: ...`` turns), the tokenizer's separator and the response; ``plain-dialogue`` decoders one that
  renders ``User: ...\\n\\nAssistant: response`` and eos; ``chat-template`` decoders keep their own.

A tokenizer may tokenize a piece of a longer string differently from the piece alone (some SentencePiece
tokenizers at a boundary): :func:`one_string_exact` checks probe conversations at export time, and the model card
says when one-string inputs are not exact.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rm_engine.backbone import build_inputs, input_format, pair_special_ids, single_special_ids
from rm_engine.head.features import item_ids, items_for
from rm_engine.versions import export_modeling
from rm_engine.versions.export_modeling import InputError, model_inputs

ASSISTANT_MARK = "\n\nAssistant:"  # where a plain-dialogue context ends (rm_engine/backbone.build_inputs)
REMOTE_CODE_FILE = "modeling_rmstudio.py"
NO_LIMIT = int(1e30)  # transformers' own "no maximum" for model_max_length: the model truncates, not the tokenizer

# RM Studio's plain-text context (rm_engine.backbone.render_context) in Jinja: every turn but a final assistant
# one as "Role: text", roles normalised as normalize_history does; the final assistant turn is the response.
_TURNS = (
    "{%- set aliases = {'human': 'user', 'bot': 'assistant', 'model': 'assistant', 'gpt': 'assistant'} -%}"
    "{%- set ns = namespace(turns=[], response=none) -%}"
    "{%- for m in messages -%}"
    "{%- set role = m['role'] | lower -%}{%- set role = aliases.get(role, role) -%}"
    "{%- set text = m['content'] if m['content'] is string else m['content'] | map(attribute='text') | join(' ') -%}"
    "{%- if loop.last and role == 'assistant' and not add_generation_prompt -%}{%- set ns.response = text -%}"
    "{%- else -%}{%- set ns.turns = ns.turns + [(role | capitalize) ~ ': ' ~ text] -%}{%- endif -%}"
    "{%- endfor -%}"
)


def _literal(text: str) -> str:
    return "{{ " + json.dumps(text) + " }}"


def _tokens(tok: Any, ids: list[int]) -> str:
    return "".join(tok.convert_ids_to_tokens(ids))


def chat_template(tok: Any, spec: dict[str, Any]) -> str | None:
    """The chat template an exported tokenizer carries for ``spec``'s layout; None: keep the tokenizer's own."""
    context = "{{ ns.turns | join('\\n\\n') }}"
    if spec["layout"] == "text-pair":
        pre, mid, suf = (_tokens(tok, ids) for ids in spec["pair_special"])
        return (_TURNS + _literal(pre) + context + _literal(mid)
                + "{%- if ns.response is not none -%}{{ ns.response }}" + _literal(suf) + "{%- endif -%}")
    if spec["layout"] == "plain-dialogue":
        eos = tok.eos_token if spec.get("eos") is not None else ""
        return (_TURNS + context + _literal(ASSISTANT_MARK)
                + "{%- if ns.response is not none -%}{{ ' ' ~ ns.response }}" + _literal(eos) + "{%- endif -%}")
    return None


def _encode(tok: Any, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"])


def _generation_marker(tok: Any) -> list[int]:
    """The tokens a chat template's generation prompt adds after the context (e.g. ``<|im_start|>assistant\\n``)."""
    msgs = [{"role": "user", "content": "Which is the largest planet?"}]
    with_prompt = _encode(tok, tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True))
    without = _encode(tok, tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False))
    common = next((i for i, (a, b) in enumerate(zip(with_prompt, without)) if a != b), min(len(with_prompt),
                                                                                        len(without)))
    return with_prompt[common:]


def input_spec(tok: Any, *, decoder: bool, max_length: int, rich: bool = False) -> dict[str, Any]:
    """``config.json``'s ``rmstudio`` input part for a version trained with ``tok`` (RM Studio's tokenizer as
    training used it) at ``max_length``; ``rich``: also the context alone and the response alone (text-pair)."""
    layout = input_format(tok, decoder=decoder)
    pre1, suf1 = single_special_ids(tok)
    spec: dict[str, Any] = {"layout": layout, "max_length": int(max_length), "single_special": [pre1, suf1],
                            "rich": bool(rich)}
    if layout == "text-pair":
        spec["pair_special"] = [list(x) for x in pair_special_ids(tok)]
    elif layout == "plain-dialogue":
        spec["eos"] = tok.eos_token_id
        spec["marker"], spec["marker_text"] = _encode(tok, ASSISTANT_MARK), ASSISTANT_MARK
    else:
        ids = build_inputs(tok, "Which is the largest planet?", [("user", "Hello"), ("assistant", "Hi!")],
                           "Jupiter, by far.", NO_LIMIT, decoder=decoder)
        spec["template_specials"] = [bool(pre1) and ids[:len(pre1)] == pre1,
                                     bool(suf1) and ids[len(ids) - len(suf1):] == suf1]
        marker = _generation_marker(tok)
        spec["marker"], spec["marker_text"] = marker, tok.decode(marker) if marker else None
    return spec


def _probes(max_length: int) -> list[tuple[str, list[tuple[str, str]], str]]:
    words = lambda n, w: " ".join(f"{w}{i}" for i in range(n))  # noqa: E731
    history = [("system", "Be brief."), ("user", "Hello"), ("assistant", "Hi! Ask me anything.")]
    return [("Which is the largest planet?", [], "Jupiter, by far."),
            ("Which is the largest planet?", history, "Jupiter."),
            (words(max_length, "question"), history, "a short answer"),
            ("a short question", [], words(2 * max_length, "answer"))]


def one_string_exact(tok: Any, train_tok: Any, spec: dict[str, Any], *, decoder: bool) -> bool:
    """Whether conversations rendered by ``tok``'s chat template and tokenized as one string (with and without
    ``add_special_tokens``) give the model exactly the ids RM Studio builds with ``train_tok`` (short and long probe
    conversations, truncation included)."""

    n = int(spec["max_length"])
    for prompt, history, response in _probes(n):
        want = [build_inputs(train_tok, prompt, history, response, n, decoder=decoder)]
        if spec.get("rich"):
            _, r, p = items_for(prompt, history, response, "rich")
            want += [item_ids(train_tok, r, n, decoder=False), item_ids(train_tok, p, n, decoder=False)]
        messages = ([{"role": role, "content": text} for role, text in history]
                    + [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}])
        text = tok.apply_chat_template(messages, tokenize=False)
        for special in (False, True):
            try:
                if model_inputs(tok(text, add_special_tokens=special)["input_ids"], spec) != want:
                    return False
            except InputError:
                return False
    return True


def finish_tokenizer(folder: Path, spec: dict[str, Any], train_tok: Any, *, decoder: bool) -> bool:
    """Give the tokenizer saved in ``folder`` the chat template of ``spec``'s layout and no length limit of its own
    (the model truncates as training did); returns whether one-string inputs are exact (:func:`one_string_exact`)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    template = chat_template(tok, spec)
    if template is not None:
        tok.chat_template = template
    tok.model_max_length = NO_LIMIT
    tok.save_pretrained(str(folder))
    return one_string_exact(tok, train_tok, spec, decoder=decoder)


def write_remote_code(folder: Path, model: Any, rmstudio: dict[str, Any]) -> None:
    """Write ``modeling_rmstudio.py`` (:mod:`rm_engine.versions.export_modeling`, over ``model``'s own classes) into
    ``folder`` and point its ``config.json`` at it, with ``rmstudio`` (input spec, how the score is read)."""
    import transformers


    body = getattr(model, model.base_model_prefix, None) if rmstudio["score"] != "head" else None
    names = (type(model.config).__name__, type(model).__name__, type(body).__name__ if body is not None else None)
    if not all(n is None or hasattr(transformers, n) for n in names):
        raise ValueError(f"{names[1]} is not a class transformers exports: the model cannot be exported")
    source = Path(export_modeling.__file__).read_text(encoding="utf-8")
    line = next(x for x in source.splitlines() if x.startswith("BASE_CLASSES = "))
    source = source.replace(line, f"BASE_CLASSES = {names!r}", 1)
    (folder / REMOTE_CODE_FILE).write_text(source, encoding="utf-8")
    path = folder / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    module = REMOTE_CODE_FILE.removesuffix(".py")
    for key, value in list(config.items()):  # a scorer: the same score in train() mode too (TRL, custom loops)
        if "dropout" in key and isinstance(value, float):
            config[key] = 0.0
    config.update(model_type=export_modeling.MODEL_TYPE, architectures=["RMStudioRewardModel"],
                  auto_map={"AutoConfig": f"{module}.RMStudioConfig",
                            "AutoModelForSequenceClassification": f"{module}.RMStudioRewardModel"},
                  id2label={"0": "reward"}, label2id={"reward": 0},
                  problem_type="regression",  # pipeline("text-classification") returns the raw score
                  rmstudio=rmstudio)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
