"""The model card (``README.md``) of an exported folder: what the model is, how it was measured, the input
conventions it reads, and two Python snippets that load the folder with transformers alone: a ``pipeline`` on one
chat-formatted string, and the token ids exactly as RM Studio builds them (both run by
``tests/integration/test_export.py`` against RM Studio's own scores)."""
from __future__ import annotations

from typing import Any

_CONTEXT = '''    context = "\\n\\n".join([f"{'User' if role == 'user' else role.capitalize()}: {text}" for role, text in history]
                          + [f"User: {prompt}"])'''
_INPUT_IDS = {
    "text-pair": _CONTEXT + '''
    return PREFIX + enc(context) + MIDDLE + enc(response) + SUFFIX  # = tok(context, response)["input_ids"]''',
    "plain-dialogue": _CONTEXT + '''
    ids = PREFIX + enc(context + "\\n\\nAssistant:") + enc(" " + response) + SUFFIX
    return ids + [EOS] if EOS is not None and (not ids or ids[-1] != EOS) else ids''',
    "chat-template": '''    messages = [{"role": role, "content": text} for role, text in history] + [{"role": "user", "content": prompt}]
    context = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(messages + [{"role": "assistant", "content": response}], tokenize=False)
    return enc(context) + enc(full[len(context):])''',
}

_LAYOUT_WORDS = {
    "text-pair": "RM Studio's plain context (every turn as `User: ...`, `Assistant: ...`, `System: ...`, separated "
                 "by a blank line), the tokenizer's separator, then the response",
    "plain-dialogue": "RM Studio's plain dialogue (`User: ...` turns separated by a blank line, then "
                      "`\\n\\nAssistant: ` and the response, then eos)",
    "chat-template": "the backbone's own chat template, as in training",
}


def _norm(info: dict[str, Any]) -> tuple[float, float]:
    norm = info["normalization"] or {"mean": 0.0, "std": 1.0}
    return float(norm["mean"]), float(norm["std"])


def pipeline_snippet(info: dict[str, Any], path: str = ".") -> str:
    """The card's first Python block: ``pipeline("text-classification")`` on one chat-templated string."""
    mean, std = _norm(info)
    return f'''from transformers import pipeline

rm = pipeline("text-classification", model={path!r}, trust_remote_code=True)  # this folder; runs its {info['remote_code']}
MEAN, STD = {mean!r}, {std!r}  # z-score statistics from training
messages = [{{"role": "user", "content": "How do I boil an egg?"}},
            {{"role": "assistant", "content": "Simmer it for eight minutes, then cool it in cold water."}}]
text = rm.tokenizer.apply_chat_template(messages, tokenize=False)  # one string; the model splits it back
raw = rm(text)[0]["score"]  # the raw score (no sigmoid: the config says regression)
print(raw, (raw - MEAN) / STD)
'''


def snippet(info: dict[str, Any], path: str = ".") -> str:
    """The card's second Python block: token ids built exactly as RM Studio builds them (untruncated: the model
    truncates as training did); ``reward(prompt, response, history)`` returns ``(raw, z)``."""
    inp = info["input"]
    fmt, sp = inp["format"], inp["special_tokens"]
    mean, std = _norm(info)
    consts = ""
    if fmt == "text-pair":
        consts = f"PREFIX, MIDDLE, SUFFIX = {sp['prefix_ids']!r}, {sp['middle_ids']!r}, {sp['suffix_ids']!r}\n"
    elif fmt == "plain-dialogue":
        consts = f"PREFIX, SUFFIX, EOS = {sp['prefix_ids']!r}, {sp['suffix_ids']!r}, {sp['eos_id']!r}\n"
    return f'''import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

path = {path!r}  # this folder
tok = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
model = AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=True).eval()  # runs {info['remote_code']}
MEAN, STD = {mean!r}, {std!r}  # z-score statistics from training
{consts}

def enc(text):
    return tok(text, add_special_tokens=False)["input_ids"]


def input_ids(prompt, response, history=()):
    """Token ids as RM Studio builds them ({fmt}; history: (role, text) pairs before the prompt), untruncated."""
{_INPUT_IDS[fmt]}


def reward(prompt, response, history=()):
    """(raw score, z-score) of one response; only the order of scores means something."""
    with torch.no_grad():
        raw = model(input_ids=torch.tensor([input_ids(prompt, response, history)])).logits[0, 0].item()
    return raw, (raw - MEAN) / STD
'''


def _input_notes(info: dict[str, Any]) -> list[str]:
    inp = info["input"]
    fmt, n = inp["format"], inp["max_length"]
    rich = (info.get("head") or {}).get("features") == "rich" or info["pooling"] == "rich"
    notes = [
        f"- Give the whole conversation, untruncated, and do not truncate in the tokenizer: the model truncates as "
        f"training did (`{inp['truncation']}`: at most {n} tokens, the response kept and the context cut from the "
        "left; a response longer than that keeps its start"
        + ("; the context alone and the response alone, embedded too, are each cut to that length" if rich else "")
        + "). The tokenizer sets no length limit of its own.",
        f"- One string: the folder's chat template renders {_LAYOUT_WORDS[fmt]}; "
        "`tokenizer.apply_chat_template(messages, tokenize=False)` gives the string, which scores the same tokenized "
        "with special tokens (`pipeline(\"text-classification\", model=FOLDER, trust_remote_code=True)`, "
        "RewardBench) or without them (TRL's `GRPOTrainer(reward_funcs=FOLDER)`, which needs "
        "`GRPOConfig(trust_remote_code=True)` and a dataset whose prompts are chat messages: plain-string prompts "
        "reach a reward model as prompt + completion with nothing between them).",
    ]
    if fmt == "text-pair":
        notes.append("- Two strings: `tokenizer(context, response)` with the context rendered as above; only "
                     "`input_ids` and `attention_mask` are read (`token_type_ids` are ignored: training used 0).")
    elif inp.get("response_marker"):
        notes.append(f"- Past {n} tokens the model finds the response after the last `{inp['response_marker']!s}`"
                     " (the end of the context), as the snippet and the chat template build it.")
    if not inp["one_string_exact"]:
        notes.append("- This tokenizer tokenizes a chat-templated string differently from its pieces (checked at "
                     "export), so one-string scores differ slightly from RM Studio's: for exact scores build the "
                     "ids as the second snippet does.")
    return notes


def model_card(info: dict[str, Any]) -> str:
    """``README.md`` of an exported folder: what the model is, how it was measured, how to call it."""
    m = info["metrics"]
    acc = lambda x: f"{100 * x:.1f}%" if x is not None else "-"  # noqa: E731
    member = f", member {info['member']} of an ensemble of {info['members']}" if info["member"] is not None else ""
    notes = _input_notes(info)
    notes.append("- Absolute scores mean nothing, only their order for the same prompt: compare responses, or use "
                 "the z-score. `pipeline` returns the raw score (the config's problem type is regression).")
    head = info.get("head")
    code = (f"The folder's `{info['remote_code']}` computes it; loading needs `trust_remote_code=True` (without it "
            "transformers refuses the folder rather than run the plain backbone class).")
    if head:
        members = (f"the mean of {head['members']} {head['kind']} heads" if head["members"] > 1
                   else f"a {head['kind']} head")
        rich = (" of the whole input, of the context alone and of the response alone (rich features)"
                if head["features"] == "rich" else "")
        notes.append(f"- Head mode: the backbone is the frozen one RM Studio embedded texts with; the score is "
                     f"{members} over its mean-pooled, L2-normalised, standardised embeddings{rich}. {code}")
        if head["quantized_features"]:
            notes.append("- Training embedded texts with an int8-quantized backbone; this folder holds the "
                         "full-precision one, so its scores differ from RM Studio's in the last digits.")
    else:
        where = {"cls": "the classifier on [CLS]", "mean": "the classifier on the mean of the last hidden states "
                 "over the real tokens", "last": "the score head at the last token",
                 "rich": "a linear layer on the embeddings of the whole input, of the context alone and of the "
                 "response alone"}[info["pooling"]]
        notes.append(f"- The score is read as in training: {where}. {code}")
    if info["temperature"]:
        notes.append(f"- Calibrated preference probability: P(a over b) = sigmoid((score_a - score_b) / "
                     f"{info['temperature']:.4g}) (temperature fitted on the validation pairs).")
    if info["length_bias"]:
        notes.append(f"- Length bias on the validation pairs: {info['length_bias']}.")
    if info["normalization_note"]:
        notes.append(f"- {info['normalization_note']} (the snippets' z uses mean 0, std 1).")
    return f"""# Reward model: RM Studio version {info['version_id']}{member}

Exported by RM Studio (`rmstudio models export`). A Bradley-Terry reward model: `AutoModelForSequenceClassification`
with one output, the score of a (prompt, response).

| | |
|---|---|
| backbone | {info['backbone']} |
| recipe | {info['recipe']} |
| trained | {info['created_at']} on {info['n_pairs']} pairs ({info['n_labels']} labels) |
| validation accuracy | {acc(m.get('val_accuracy'))} (band: {m.get('band') or '-'}) |
| training accuracy | {acc(m.get('train_accuracy'))} |
| test accuracy | {acc(m.get('test_accuracy'))} |

{chr(10).join(notes)}

`rmstudio_reward.json` holds the same facts for programs (input format, normalization, training config).

One chat-formatted string, as RewardBench-style evaluation calls a reward model:

```python
{pipeline_snippet(info)}```

The token ids exactly as RM Studio builds them:

```python
{snippet(info)}```
"""
