"""Head-mode versions as one Hugging Face model: the frozen backbone and the trained head(s) in one folder.

A head-mode version scores a (prompt, response) by embedding texts with the frozen backbone (pooled, L2-normalised),
standardising the feature row and applying K linear or MLP heads whose centred scores are averaged. The export
writes the backbone's weights with the head's tensors added (``rm_head.*``) to ``model.safetensors`` and a
``modeling_rmstudio.py`` whose model class does exactly that from ``input_ids`` and ``attention_mask``: loading
needs ``trust_remote_code=True``.

``rich`` features (the default) also embed the context alone and the response alone. The model rebuilds both from
the pair input it is given, ``[CLS] context [SEP] response [SEP]`` for BERT-like encoders, by the tokenizer's own
special-token layout, which is recorded in ``config.json``. The scores equal RM Studio's while context + response
fit the version's ``max_length``. Past it, RM Studio embeds the context alone and the response alone each cut to
``max_length``, more of them than the truncated pair input holds, and the two differ slightly. Decoders have no
such boundary token, so only their ``pair`` features are exportable.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

HEAD_MODEL_TYPE = "rmstudio_head"
HEAD_TENSORS = {"linear": ("w", "b"), "mlp": ("w1", "b1", "w2", "b2")}

HEAD_CODE = '''"""RM Studio's head-mode reward model: the frozen {base} backbone's mean-pooled, L2-normalised embeddings
({features} features), standardised, through {members} trained {kind} head(s) whose centred scores are averaged,
as RM Studio scored it. Written by `rmstudio models export`; load with
AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)."""
import torch
from torch import nn
from transformers import {config_cls}, {base}
from transformers.modeling_outputs import SequenceClassifierOutput


class RMStudioHeadConfig({config_cls}):
    model_type = "{model_type}"


class RMStudioHead(nn.Module):
    """K heads over standardised features: (n, in_dim) -> (n, K); each bias already holds minus its centre."""

    def __init__(self, kind, in_dim, members, hidden):
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

    def forward(self, x):
        p = {{name: t.float() for name, t in self.named_parameters()}}  # fp32 whatever dtype the backbone runs in
        z = (x.float() - p["mu"]) / p["sigma"]
        if self.kind == "linear":
            return z @ p["w"].T + p["b"]
        h = nn.functional.gelu(torch.einsum("nd,kdh->nkh", z, p["w1"]) + p["b1"])
        return torch.einsum("nkh,kh->nk", h, p["w2"]) + p["b2"]


def _pad(seqs, device):
    width = max(len(s) for s in seqs)
    ids = torch.zeros((len(seqs), width), dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, :len(s)] = 1
    return ids, mask


class RMStudioHeadModel({base}):
    config_class = RMStudioHeadConfig

    def __init__(self, config):
        super().__init__(config)
        h = config.rmstudio_head
        self.rm_head = RMStudioHead(h["kind"], h["in_dim"], h["members"], h["hidden"])

    def _embed(self, ids, mask):
        hidden = super().forward(input_ids=ids, attention_mask=mask)[0].float()
        m = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
        return nn.functional.normalize(pooled, dim=-1)

    def _context_and_response(self, input_ids, attention_mask):
        """The context alone and the response alone, rebuilt from pair inputs by the tokenizer's layout."""
        (pre, mid, suf), (pre1, suf1) = self.config.rmstudio_head["pair_layout"], self.config.rmstudio_head["single_layout"]
        contexts, responses = [], []
        for row, keep in zip(input_ids.tolist(), attention_mask.tolist()):
            real = [t for t, k in zip(row, keep) if k]
            body = real[len(pre):len(real) - len(suf)]
            at = next((i for i in range(len(body) - len(mid) + 1) if body[i:i + len(mid)] == mid), None)
            if real[:len(pre)] != pre or real[len(real) - len(suf):] != suf or at is None:
                raise ValueError("input is not a (context, response) pair built as the model card shows: "
                                 f"expected {{pre}} context {{mid}} response {{suf}}")
            contexts.append(pre1 + body[:at] + suf1)
            responses.append(pre1 + body[at + len(mid):] + suf1)
        return _pad(contexts, input_ids.device), _pad(responses, input_ids.device)

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        e_pr = self._embed(input_ids, attention_mask)
        if self.config.rmstudio_head["features"] == "rich":
            (p_ids, p_mask), (r_ids, r_mask) = self._context_and_response(input_ids, attention_mask)
            e_p, e_r = self._embed(p_ids, p_mask), self._embed(r_ids, r_mask)
            e_pr = torch.cat([e_pr, e_r, e_p * e_r, e_p * e_pr], dim=-1)
        return SequenceClassifierOutput(logits=self.rm_head(e_pr).mean(-1, keepdim=True))
'''


def head_refusal(label: str, fcfg: dict[str, Any], decoder: bool, member: int | None) -> str | None:
    """Why a head-mode version (``fcfg``: its files' config) cannot be one model, or None."""
    members = int(fcfg["head"]["members"])
    if member is not None and not 0 <= member < members:
        return f"{label}: no member {member} (members 0..{members - 1}; leave it out for the ensemble's mean)"
    if fcfg.get("pooling", "mean") != "mean":
        return f"{label}: its features are {fcfg['pooling']}-pooled; only mean pooling is exported"
    if decoder and fcfg.get("features", "rich") == "rich":
        return (f"{label} reads rich features (context and response embedded apart too) from a decoder backbone, "
                "whose input has no boundary token to split them at: score it through RM Studio, or retrain with "
                "--features pair to export")
    return None


def head_tensors(fcfg: dict[str, Any], tensors: dict[str, Any], member: int | None) -> dict[str, Any]:
    """The ``rm_head.*`` tensors of the export: one member's, or all with each bias minus its member's centre
    (the model's score is then the members' mean, as :func:`rm_engine.normalize.combine_members` computes it)."""
    import torch

    meta = fcfg["head"]
    names = HEAD_TENSORS[meta["kind"]]
    keep = slice(None) if member is None else slice(member, member + 1)
    out = {f"rm_head.{n}": tensors[n][keep].float().clone() for n in names}
    out["rm_head.mu"], out["rm_head.sigma"] = tensors["mu"].float().clone(), tensors["sigma"].float().clone()
    centers = fcfg.get("member_centers")
    if member is None and centers is not None and int(meta["members"]) > 1:
        bias = "rm_head.b" if meta["kind"] == "linear" else "rm_head.b2"
        out[bias] = out[bias] - torch.tensor(centers, dtype=torch.float32)
    return out


def write_head_model(folder: Path, ref: Any, fcfg: dict[str, Any], tensors: dict[str, Any], member: int | None,
                     decoder: bool) -> Any:
    """Write the backbone + head as a Hugging Face folder at ``folder`` (existing, empty); returns the tokenizer
    (as RM Studio builds inputs with it)."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoModel

    from rm_engine.backbone import load_tokenizer, pair_special_ids, single_special_ids

    model = AutoModel.from_pretrained(str(ref.path), local_files_only=True, use_safetensors=True)
    model.save_pretrained(str(folder), safe_serialization=True, max_shard_size="1000GB")  # one file to add to
    tok = load_tokenizer(ref, decoder=decoder)
    tok.save_pretrained(str(folder))
    weights = folder / "model.safetensors"
    state = load_file(str(weights))
    state.update(head_tensors(fcfg, tensors, member))
    save_file(state, str(weights), metadata={"format": "pt"})
    shutil.copymode(folder / "config.json", weights)  # safetensors writes 0600

    meta = fcfg["head"]
    members = 1 if member is not None else int(meta["members"])
    (folder / "modeling_rmstudio.py").write_text(HEAD_CODE.format(
        base=type(model).__name__, config_cls=type(model.config).__name__, model_type=HEAD_MODEL_TYPE,
        features=fcfg.get("features", "rich"), members=members, kind=meta["kind"]), encoding="utf-8")
    pre, mid, suf = pair_special_ids(tok)
    pre1, suf1 = single_special_ids(tok)
    path = folder / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config.update(model_type=HEAD_MODEL_TYPE, architectures=["RMStudioHeadModel"], num_labels=1,
                  auto_map={"AutoConfig": "modeling_rmstudio.RMStudioHeadConfig",
                            "AutoModelForSequenceClassification": "modeling_rmstudio.RMStudioHeadModel"},
                  rmstudio_head={"kind": meta["kind"], "in_dim": int(meta["in_dim"]), "members": members,
                                 "hidden": int(meta.get("hidden", 128)), "features": fcfg.get("features", "rich"),
                                 "pair_layout": [pre, mid, suf], "single_layout": [pre1, suf1]})
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return tok
