"""The model card (``README.md``) of an exported folder and its Python snippet, which loads the folder with
transformers alone and builds inputs exactly as RM Studio did in training (layout and truncation)."""
from __future__ import annotations

from typing import Any

EXPORT_PAD = "<|rmstudio_pad|>"


_FIT = '''

def enc(text):
    return tok(text, add_special_tokens=False)["input_ids"]


def fit(ctx, resp, budget):
    """RM Studio's truncation: keep the response, cut the context from the left (a response too long for the
    budget keeps its start and leaves an eighth of the budget to the end of the context)."""
    budget = max(budget, 1)
    if len(ctx) + len(resp) <= budget:
        return ctx, resp
    keep = min(len(ctx), budget // 8)
    if len(resp) <= budget - keep:
        keep = budget - len(resp)
    return (ctx[len(ctx) - keep:] if keep > 0 else []), resp[:budget - keep]
'''
_CONTEXT = '''    context = "\\n\\n".join([f"{'User' if role == 'user' else role.capitalize()}: {text}" for role, text in history]
                          + [f"User: {prompt}"])'''
_INPUT_IDS = {
    "text-pair": _CONTEXT + '''
    ctx, resp = fit(enc(context), enc(response), MAX_LENGTH - len(PREFIX + MIDDLE + SUFFIX))
    return (PREFIX + ctx + MIDDLE + resp + SUFFIX)[:MAX_LENGTH]''',
    "plain-dialogue": _CONTEXT + '''
    ctx, resp = fit(enc(context + "\\n\\nAssistant:"), enc(" " + response),
                    MAX_LENGTH - len(PREFIX + SUFFIX) - (EOS is not None))
    ids = PREFIX + ctx + resp + SUFFIX
    if EOS is not None and (not ids or ids[-1] != EOS):
        ids = ids + [EOS]
    return ids[:MAX_LENGTH]''',
    "chat-template": '''    messages = [{"role": role, "content": text} for role, text in history] + [{"role": "user", "content": prompt}]
    context = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(messages + [{"role": "assistant", "content": response}], tokenize=False)
    ctx, resp = fit(enc(context), enc(full[len(context):]), MAX_LENGTH)
    return ctx + resp''',
}


def snippet(info: dict[str, Any], path: str = ".") -> str:
    """The model card's Python: load the folder, build one input as training did (truncation included), return
    ``(raw, z)``."""
    inp = info["input"]
    fmt, sp = inp["format"], inp["special_tokens"]
    norm = info["normalization"] or {"mean": 0.0, "std": 1.0}
    consts = f"MAX_LENGTH = {int(inp['max_length'])!r}  # tokens, as in training\n"
    if fmt == "text-pair":
        consts += f"PREFIX, MIDDLE, SUFFIX = {sp['prefix_ids']!r}, {sp['middle_ids']!r}, {sp['suffix_ids']!r}\n"
    elif fmt == "plain-dialogue":
        consts += f"PREFIX, SUFFIX, EOS = {sp['prefix_ids']!r}, {sp['suffix_ids']!r}, {sp['eos_id']!r}\n"
    trust, why = (", trust_remote_code=True", f"  # runs this folder's {info['remote_code']}") \
        if info.get("remote_code") else ("", "")
    return f'''import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

path = {path!r}  # this folder
tok = AutoTokenizer.from_pretrained(path{trust})
model = AutoModelForSequenceClassification.from_pretrained(path{trust}).eval(){why}
MEAN, STD = {float(norm["mean"])!r}, {float(norm["std"])!r}  # z-score statistics from training
{consts}{_FIT}

def input_ids(prompt, response, history=()):
    """Token ids as RM Studio built them in training ({fmt}; history: (role, text) pairs before the prompt)."""
{_INPUT_IDS[fmt]}


def reward(prompt, response, history=()):
    """(raw score, z-score) of one response; only the order of scores means something."""
    with torch.no_grad():
        raw = model(input_ids=torch.tensor([input_ids(prompt, response, history)])).logits[0, 0].item()
    return raw, (raw - MEAN) / STD
'''


def model_card(info: dict[str, Any]) -> str:
    """``README.md`` of an exported folder: what the model is, how it was measured, how to call it."""
    m = info["metrics"]
    acc = lambda x: f"{100 * x:.1f}%" if x is not None else "-"  # noqa: E731
    member = f", member {info['member']} of an ensemble of {info['members']}" if info["member"] is not None else ""
    inp = info["input"]
    notes = [
        f"- Inputs: `{inp['format']}` layout, at most {inp['max_length']} tokens; longer inputs were truncated by "
        f"keeping the response and cutting the context from the left (`{inp['truncation']}`); the snippet's "
        "`input_ids` truncates so too.",
        "- Absolute scores mean nothing, only their order for the same prompt: compare responses, or use the z-score.",
    ]
    if not info["decoder"]:
        notes.append("- Pass `input_ids` (and `attention_mask`) only: training used `token_type_ids` of 0.")
    head = info.get("head")
    if head:
        members = (f"the mean of {head['members']} {head['kind']} heads" if head["members"] > 1
                   else f"a {head['kind']} head")
        rich = (" of the whole input, of the context alone and of the response alone (rich features: the folder's "
                "model splits the pair input at the tokenizer's separator; scores equal RM Studio's while context + "
                "response fit the max length, past it RM Studio embedded more of each alone than the truncated pair "
                "holds, and scores differ slightly)") if head["features"] == "rich" else ""
        notes.append(f"- Head mode: the backbone is the frozen one RM Studio embedded texts with; the score is "
                     f"{members} over its mean-pooled, L2-normalised, standardised embeddings{rich}. The folder's "
                     f"`{info['remote_code']}` computes it; loading needs `trust_remote_code=True`, for the tokenizer "
                     "too.")
        if head["quantized_features"]:
            notes.append("- Training embedded texts with an int8-quantized backbone; this folder holds the "
                         "full-precision one, so its scores differ from RM Studio's in the last digits.")
    elif info.get("remote_code"):
        notes.append(f"- Mean pooling: the score is the classifier applied to the mean of the last hidden states over "
                     "the real tokens. No built-in transformers class reads it so: the folder's "
                     f"`{info['remote_code']}` (about 25 lines: read it) does, and loading needs "
                     "`trust_remote_code=True`, for the tokenizer too (without it transformers refuses the model "
                     "rather than read [CLS]).")
    if info["pad_token_added"]:
        notes.append(f"- The tokenizer's pad token was its eos; the export added `{EXPORT_PAD}` so that the model "
                     "reads each score at the closing eos, as in training.")
    if info["temperature"]:
        notes.append(f"- Calibrated preference probability: P(a over b) = sigmoid((score_a - score_b) / "
                     f"{info['temperature']:.4g}) (temperature fitted on the validation pairs).")
    if info["length_bias"]:
        notes.append(f"- Length bias on the validation pairs: {info['length_bias']}.")
    if info["normalization_note"]:
        notes.append(f"- {info['normalization_note']} (the snippet's z uses mean 0, std 1).")
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

```python
{snippet(info)}```
"""
