"""Head-mode versions as one Hugging Face model: the frozen backbone and the trained head(s) in one folder.

A head-mode version scores a (prompt, response) by embedding texts with the frozen backbone (mean-pooled,
L2-normalised), standardising the feature row and applying K linear or MLP heads whose centred scores are averaged.
The export writes the backbone's weights with the head's tensors added (``rm_head.*``) to ``model.safetensors``;
the folder's ``modeling_rmstudio.py`` (:mod:`rm_engine.versions.export_modeling`, score ``head``) computes the score from
the untruncated input: ``rich`` features (the default) embed the context + response, the response alone and the
context alone, each truncated as in training, so scores equal RM Studio's on every input. Only text-pair inputs
(encoders) say where the context ends whatever the length, so only they export ``rich`` features.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from rm_engine.backbone import load_tokenizer
from rm_engine.versions.export_inputs import finish_tokenizer, input_spec, write_remote_code

HEAD_TENSORS = {"linear": ("w", "b"), "mlp": ("w1", "b1", "w2", "b2")}


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


def add_tensors(weights: Path, tensors: dict[str, Any]) -> None:
    """Add ``tensors`` to the safetensors file ``weights`` (one file: saved with an unlimited shard size)."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(weights))
    state.update(tensors)
    save_file(state, str(weights), metadata={"format": "pt"})
    shutil.copymode(weights.parent / "config.json", weights)  # safetensors writes 0600


def write_head_model(folder: Path, ref: Any, fcfg: dict[str, Any], tensors: dict[str, Any], member: int | None,
                     decoder: bool) -> tuple[Any, dict[str, Any], bool]:
    """Write the backbone + head as a Hugging Face folder at ``folder`` (existing, empty). Returns the tokenizer
    RM Studio builds inputs with, the ``rmstudio`` config written and whether one-string inputs are exact."""
    from transformers import AutoModel


    model = AutoModel.from_pretrained(str(ref.path), local_files_only=True, use_safetensors=True)
    model.save_pretrained(str(folder), safe_serialization=True, max_shard_size="1000GB")  # one file to add to
    tok = load_tokenizer(ref, decoder=decoder)  # shared and cached: never changed here
    tok.save_pretrained(str(folder))
    add_tensors(folder / "model.safetensors", head_tensors(fcfg, tensors, member))
    features = fcfg.get("features", "rich")
    spec = input_spec(tok, decoder=decoder, max_length=int(fcfg.get("max_length", 256)), rich=features == "rich")
    exact = finish_tokenizer(folder, spec, tok, decoder=decoder)
    meta = fcfg["head"]
    spec.update(score="head", head={"kind": meta["kind"], "in_dim": int(meta["in_dim"]),
                                    "members": 1 if member is not None else int(meta["members"]),
                                    "hidden": int(meta.get("hidden", 128))})
    write_remote_code(folder, model, spec)
    return tok, spec, exact
