"""An exported RM Studio reward model: the ``modeling_rmstudio.py`` of every folder ``rmstudio models export`` writes.

The export copies this file into the folder with the backbone's classes named on the ``BASE_CLASSES`` line, and
points ``config.json``'s ``auto_map`` at it: ``AutoModelForSequenceClassification.from_pretrained(folder,
trust_remote_code=True)`` runs it. It imports only torch and transformers.

The model takes the token ids of one conversation, untruncated, in any length, and computes exactly what RM
Studio scored in training:

1. Special tokens a tokenizer added around a one-string input that already holds them (a chat-templated string
   tokenized with ``add_special_tokens=True``, as ``pipeline`` does) are removed.
2. Context and response are found: encoders (``text-pair``) at the separator between them (``[SEP]`` for BERT);
   decoders only where the input is longer than the version's ``max_length``, at the last occurrence of the tokens
   that end the context (the chat template's generation prompt, or ``\\n\\nAssistant:``).
3. Both are truncated as in training: the response is kept and the context cut from the left; a response longer
   than the whole budget keeps its start and leaves the context its last ``max_length // 8`` tokens. Rich
   features also embed the context alone (cut on the left) and the response alone (cut on the right), each within
   ``max_length``.
4. The score is read as in training: ``cls`` (the classifier on [CLS]), ``mean`` (the classifier on the mean of
   the last hidden states), ``last`` (a decoder's score head at the last token), ``rich`` (a linear layer on
   ``[e_pr, e_r, e_p * e_r, e_p * e_pr]``), or ``head`` (head mode: the frozen backbone's mean-pooled,
   L2-normalised embeddings, standardised, through the trained heads, members' centred scores averaged).

``config.rmstudio`` holds what this needs (the layout's special token ids, ``max_length``, how the score is read).
"""
from __future__ import annotations

from typing import Any

import torch
import transformers
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

# The export rewrites this line: the backbone's config class, model class and (for a ...ForSequenceClassification
# model) the class of its body.
BASE_CLASSES = ("BertConfig", "BertModel", None)
MODEL_TYPE = "rmstudio_reward"

_BaseConfig: Any = getattr(transformers, BASE_CLASSES[0])
_BaseModel: Any = getattr(transformers, BASE_CLASSES[1])


class InputError(ValueError):
    """An input the model cannot read as one (context, response) conversation; the message says what to send."""


def fit(ctx: list[int], resp: list[int], budget: int) -> tuple[list[int], list[int]]:
    """RM Studio's truncation: keep the response, cut the context from the left; a response longer than the
    budget keeps its start and leaves the context its last ``budget // 8`` tokens."""
    budget = max(budget, 1)
    if len(ctx) + len(resp) <= budget:
        return ctx, resp
    keep = min(len(ctx), budget // 8)
    if len(resp) <= budget - keep:
        keep = budget - len(resp)
        return (ctx[len(ctx) - keep:] if keep > 0 else []), resp
    return (ctx[len(ctx) - keep:] if keep else []), resp[:budget - keep]


def _starts(seq: list[int], sub: list[int]) -> bool:
    return bool(sub) and seq[:len(sub)] == sub


def _ends(seq: list[int], sub: list[int]) -> bool:
    return bool(sub) and len(seq) >= len(sub) and seq[len(seq) - len(sub):] == sub


def _find(seq: list[int], sub: list[int], *, last: bool) -> int | None:
    """Index of the first (``last``: the last) occurrence of ``sub`` in ``seq``."""
    if not sub:
        return None
    starts = range(len(seq) - len(sub), -1, -1) if last else range(len(seq) - len(sub) + 1)
    return next((i for i in starts if seq[i:i + len(sub)] == sub), None)


def _single(body: list[int], spec: dict[str, Any], *, cut: str) -> list[int]:
    """One text with the tokenizer's special tokens, within ``max_length`` (``cut="left"`` keeps its end)."""
    pre, suf = spec["single_special"]
    length = int(spec["max_length"])
    budget = max(length - len(pre) - len(suf), 1)
    if len(body) > budget:
        body = body[len(body) - budget:] if cut == "left" else body[:budget]
    return (pre + body + suf)[:length]


def _text_pair(ids: list[int], spec: dict[str, Any]) -> list[list[int]]:
    pre, mid, suf = spec["pair_special"]
    body = list(ids)
    twice = _starts(body, pre + pre)  # a chat-templated string holding the layout, wrapped again by the tokenizer
    for _ in range(2 if twice else 1):
        if _starts(body, pre):
            body = body[len(pre):]
        if _ends(body, suf):
            body = body[:len(body) - len(suf)]
    at = _find(body, mid, last=False)
    if at is None:
        raise InputError("no separator between context and response: send tokenizer(context, response), or one "
                         "string rendered by this folder's chat template (tokenizer.apply_chat_template(messages, "
                         "tokenize=False)); with TRL, give the prompts as chat messages")
    ctx, resp = body[:at], body[at + len(mid):]
    length = int(spec["max_length"])
    c, r = fit(ctx, resp, length - len(pre) - len(mid) - len(suf))
    out = [(pre + c + mid + r + suf)[:length]]
    if spec.get("rich"):
        out += [_single(resp, spec, cut="right"), _single(ctx, spec, cut="left")]
    return out


def _split_long(body: list[int], spec: dict[str, Any], budget: int) -> tuple[list[int], list[int]]:
    """Context and response of a decoder's input that does not fit: the response follows the last marker."""
    marker = spec.get("marker") or []
    at = _find(body, marker, last=True)
    if at is None:
        raise InputError(f"{len(body)} tokens, more than the {budget} this model reads, and no "
                         f"{spec.get('marker_text')!r} to tell where the response starts: render the conversation "
                         "with this folder's chat template (tokenizer.apply_chat_template(messages, tokenize=False))")
    return fit(body[:at + len(marker)], body[at + len(marker):], budget)


def _chat_template(ids: list[int], spec: dict[str, Any]) -> list[list[int]]:
    pre, suf = spec["single_special"]
    has_pre, has_suf = spec["template_specials"]  # whether training's own ids begin with pre / end with suf
    body = list(ids)
    if _starts(body, pre) and (not has_pre or _starts(body, pre + pre)):
        body = body[len(pre):]  # added by the tokenizer (add_special_tokens=True): training had no such token
    if _ends(body, suf) and (not has_suf or _ends(body, suf + suf)):
        body = body[:len(body) - len(suf)]
    length = int(spec["max_length"])
    if len(body) <= length:
        return [body]
    c, r = _split_long(body, spec, length)
    return [c + r]


def _plain_dialogue(ids: list[int], spec: dict[str, Any]) -> list[list[int]]:
    pre, suf = spec["single_special"]
    eos = spec.get("eos")
    body = list(ids)
    if _starts(body, pre):
        body = body[len(pre):]
    cut_suf = cut_eos = False
    for _ in range(2):  # the closing special tokens, in either order (the template ends with eos, a tokenizer adds suf)
        if not cut_suf and _ends(body, suf):
            body, cut_suf = body[:len(body) - len(suf)], True
        elif not cut_eos and eos is not None and body and body[-1] == eos:
            body, cut_eos = body[:-1], True
    length = int(spec["max_length"])
    budget = length - len(pre) - len(suf) - (eos is not None)
    if len(body) > max(budget, 1):
        c, r = _split_long(body, spec, budget)
        body = c + r
    out = pre + body + suf
    if eos is not None and (not out or out[-1] != eos):
        out.append(eos)
    return [out[:length]]


_LAYOUTS = {"text-pair": _text_pair, "chat-template": _chat_template, "plain-dialogue": _plain_dialogue}


def model_inputs(ids: list[int], spec: dict[str, Any]) -> list[list[int]]:
    """The token ids RM Studio embedded for one input's real tokens: ``[context + response]``, or with rich
    features ``[context + response, response alone, context alone]``. Raises :class:`InputError`."""
    return _LAYOUTS[spec["layout"]](list(ids), spec)


def _pad(seqs: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``(input_ids, attention_mask)``, built on the CPU and moved once."""
    width = max(1, max(len(s) for s in seqs))
    ids = torch.tensor([list(s) + [pad_id] * (width - len(s)) for s in seqs], dtype=torch.long)
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], dtype=torch.long)
    return ids.to(device), mask.to(device)


def _masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1)


class RMStudioHead(nn.Module):
    """Head mode's K heads over standardised features: ``(n, in_dim) -> (n, K)``; each bias already holds minus
    its member's centre."""

    def __init__(self, kind: str, in_dim: int, members: int, hidden: int) -> None:
        super().__init__()
        self.kind = kind
        self.mu = nn.Parameter(torch.zeros(in_dim), requires_grad=False)
        self.sigma = nn.Parameter(torch.ones(in_dim), requires_grad=False)
        if kind == "linear":
            self.w = nn.Parameter(torch.zeros(members, in_dim), requires_grad=False)
            self.b = nn.Parameter(torch.zeros(members), requires_grad=False)
        else:
            self.w1 = nn.Parameter(torch.zeros(members, in_dim, hidden), requires_grad=False)
            self.b1 = nn.Parameter(torch.zeros(members, hidden), requires_grad=False)
            self.w2 = nn.Parameter(torch.zeros(members, hidden), requires_grad=False)
            self.b2 = nn.Parameter(torch.zeros(members), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = {name: t.float() for name, t in self.named_parameters()}  # fp32 whatever dtype the backbone runs in
        z = (x.float() - p["mu"]) / p["sigma"]
        if self.kind == "linear":
            return z @ p["w"].T + p["b"]
        h = nn.functional.gelu(torch.einsum("nd,kdh->nkh", z, p["w1"]) + p["b1"])
        return torch.einsum("nkh,kh->nk", h, p["w2"]) + p["b2"]


class RMStudioConfig(_BaseConfig):
    model_type = MODEL_TYPE


if BASE_CLASSES[2] is not None:
    # Decoders' ...ForSequenceClassification build their body with AutoModel.from_config(config), which must know
    # this config class: the body is the backbone's own class under it.
    RMStudioBody = type("RMStudioBody", (getattr(transformers, BASE_CLASSES[2]),), {"config_class": RMStudioConfig})
    transformers.AutoModel.register(RMStudioConfig, RMStudioBody, exist_ok=True)


class RMStudioRewardModel(_BaseModel):
    """The backbone's own class, reading the score as RM Studio did (``config.rmstudio["score"]``)."""

    config_class = RMStudioConfig

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        spec = config.rmstudio
        if spec["score"] == "head":
            h = spec["head"]
            self.rm_head = RMStudioHead(h["kind"], int(h["in_dim"]), int(h["members"]), int(h["hidden"]))
        elif spec["score"] == "rich":
            self.rich_head = nn.Linear(4 * int(config.hidden_size), 1)

    def _hidden(self, ids: torch.Tensor, mask: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """The backbone's last hidden states (head mode: this model is the backbone itself)."""
        if self.config.rmstudio["score"] == "head":
            return super().forward(input_ids=ids, attention_mask=mask, **kwargs)[0]
        return getattr(self, self.base_model_prefix)(input_ids=ids, attention_mask=mask, **kwargs)[0]

    def _embed(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = self._hidden(ids, mask).float()
        return nn.functional.normalize(_masked_mean(hidden, mask), dim=-1)

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                **kwargs: Any) -> SequenceClassifierOutput:
        """One score per row (``logits`` of shape ``(rows, 1)``, fp32). ``token_type_ids`` and other tokenizer
        outputs are ignored: the model builds its inputs as training did."""
        if input_ids is None:
            raise InputError("input_ids are required")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        spec = self.config.rmstudio
        rows = []
        for i, (row, keep) in enumerate(zip(input_ids.tolist(), attention_mask.tolist())):
            try:
                rows.append(model_inputs([t for t, k in zip(row, keep) if k], spec))
            except InputError as exc:
                raise InputError(f"row {i}: {exc}") from None
        dev, pad = input_ids.device, int(self.config.pad_token_id or 0)
        score = spec["score"]
        if not rows:
            return SequenceClassifierOutput(logits=torch.zeros((0, 1), device=dev))
        if score in ("head", "rich"):
            unique: dict[tuple[int, ...], int] = {}  # a context shared by several rows is embedded once
            slots = [[unique.setdefault(tuple(seq), len(unique)) for seq in r] for r in rows]
            emb = self._embed(*_pad([list(seq) for seq in unique], pad, dev))
            e_pr, *rest = (emb[torch.tensor([r[k] for r in slots], device=dev)] for k in range(len(slots[0])))
            if rest:
                e_r, e_p = rest
                e_pr = torch.cat([e_pr, e_r, e_p * e_r, e_p * e_pr], dim=-1)
            logits = (self.rm_head(e_pr).mean(-1, keepdim=True) if score == "head"
                      else self.rich_head(e_pr.to(self.rich_head.weight.dtype)))
            return SequenceClassifierOutput(logits=logits.float())
        ids, mask = _pad([r[0] for r in rows], pad, dev)
        if score == "cls":
            logits = super().forward(input_ids=ids, attention_mask=mask).logits
        elif score == "mean":
            logits = self.classifier(_masked_mean(self._hidden(ids, mask), mask))
        else:  # last: the score head at each row's last real token (right padding)
            hidden = self._hidden(ids, mask, use_cache=False)
            last = mask.sum(-1) - 1
            logits = self.score(hidden[torch.arange(hidden.shape[0], device=dev), last])
        return SequenceClassifierOutput(logits=logits.float())
