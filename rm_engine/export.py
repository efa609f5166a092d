"""Export a fine-tuned model version as a plain Hugging Face folder, for RL trainers and servers that load reward
models with ``AutoModelForSequenceClassification`` and never import RM Studio.

The folder holds ``config.json`` + ``model.safetensors`` (LoRA adapters merged into the weights, the trained score
head included), the tokenizer, ``rmstudio_reward.json`` (version, recipe, input format, normalization statistics,
headline metrics, training config) and a ``README.md`` model card whose Python snippet builds inputs as training
did and returns the raw score and its z-score (``tests/integration/test_export.py`` runs that snippet against RM
Studio's own scores).

Mean pooling (MiniLM's default): no built-in ``...ForSequenceClassification`` class reads a score from the mean of
the last hidden states, so the folder also carries ``modeling_rmstudio.py``, a subclass of the backbone's own class
whose ``forward`` does, named in ``config.json``'s ``auto_map`` under a model type of its own: loading needs
``trust_remote_code=True``, and without it transformers refuses rather than silently reading [CLS].

Head-mode versions (frozen backbone + trained heads) export the same way through a remote-code model of their own
(``rm_engine/export_head.py``); a head ensemble is one model (its members' mean) unless a member is chosen.

What cannot be one such model is refused with the reason: a fine-tune with ``rich`` pooling (three sequences per
score), a fine-tuned ensemble without a chosen member, a decoder's head over rich features.

Decoders whose pad token is their eos: Hugging Face's sequence-classification pooling reads the last token that is
not the pad id, so it would skip the closing eos RM Studio reads the score at (NOTES.md, pitfall 1). The export gives
such a tokenizer a pad token of its own (a new embedding row only where the vocabulary has no spare one).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from db.config import Settings
from db.session import Database
from db.versions import get_version, version_summary
from rm_engine.export_card import EXPORT_PAD, model_card
from rm_engine.export_head import head_refusal, write_head_model
from rm_engine.model_store import with_files, zip_folder
from rm_engine.registry import ModelFilesError, load_version_config

EXPORT_FORMAT = "rmstudio-reward-export/v1"
INFO_FILE = "rmstudio_reward.json"
CARD_FILE = "README.md"
EXPORTABLE_POOLINGS = ("cls", "last", "mean")  # mean: through the folder's own modeling_rmstudio.py
REMOTE_CODE_FILE = "modeling_rmstudio.py"
ARCHIVE_MAX_BYTES = 2 * 2**30  # export_archive builds the zip in memory (the app's server process)
MEAN_MODEL_TYPE = "rmstudio_mean_pooling"


class ExportError(ValueError):
    """A version that cannot be one Hugging Face model, or an unusable destination; the message says which."""


@dataclass(frozen=True)
class _Plan:
    """What an export of one version (member) will read, once every refusal has been checked."""

    summary: dict[str, Any]
    norm: dict[str, Any]
    train_config: dict[str, Any]
    metrics: dict[str, Any]
    member_dir: Path  # head mode: the version's folder
    member: int | None  # None: a head ensemble's mean
    members: int
    weight_bytes: int  # of the exported model, estimated from the files it is made of
    decoder: bool

    @property
    def label(self) -> str:
        return f"model version {self.summary['id']}"

    @property
    def whole(self) -> bool:
        """Whether the export scores as the version does (not one member of several)."""
        return self.members == 1 or self.member is None


def _plan(db: Database, settings: Settings, version: str | int | None, member: int | None, *,
          verify: bool = True, first_member: bool = False) -> _Plan:
    """Check that ``version`` (``member``) can be one Hugging Face model, from its row and metadata files only
    (no weights loaded; ``verify=False``: not even hashed). ``first_member``: a fine-tuned ensemble's member 0 when
    ``member`` is None. Raises :class:`ExportError`, ``VersionNotFound`` or ``ModelFilesError``."""
    with db.read() as s:
        v = get_version(s, version)
        summary = version_summary(v)
        norm, train_config, metrics = dict(v.norm_stats or {}), dict(v.config or {}), dict(v.metrics or {})
    label = f"model version {summary['id']}"
    folder, files = with_files(db, settings, summary["id"], summary["path"],
                               lambda: load_version_config(settings, summary["path"], summary["id"], verify=verify))
    if summary["mode"] == "head":
        backbone = Path(files.get("backbone", {}).get("path", ""))
        decoder = _decoder_at(backbone, label)
        if problem := head_refusal(label, files, decoder, member):
            raise ExportError(problem)
        size = _weight_bytes(backbone) + _weight_bytes(folder)
        return _Plan(summary, norm, train_config, metrics, folder, member, int(files["head"]["members"]), size,
                     decoder)
    members = int(files.get("members", 1))
    if member is None and first_member:
        member = 0
    if members > 1 and member is None:
        raise ExportError(f"{label} is an ensemble of {members} models: export one with --member 0..{members - 1}")
    k = 0 if member is None else int(member)
    if not 0 <= k < members:
        raise ExportError(f"{label}: no member {k} (members 0..{members - 1})")
    from rm_engine.finetune_model import META_FILE, FinetuneMeta

    try:
        meta = FinetuneMeta.read(folder / f"member-{k}" / META_FILE)
    except ValueError as exc:
        raise ModelFilesError(f"{label}: {exc}") from None
    pooling = meta.pooling
    if pooling is not None and pooling not in EXPORTABLE_POOLINGS:  # None: files older than pooling = the default
        raise ExportError(f"{label} reads its score by {pooling} pooling (three sequences per score), which no "
                          "Hugging Face ...ForSequenceClassification model does. Score it through RM Studio, or "
                          "retrain with --pooling mean or cls to export")
    # LoRA members hold adapters only: the merged model is the size of the backbone they adapt
    size = _weight_bytes(folder / f"member-{k}") + (_weight_bytes(Path(meta.backbone["path"])) if meta.lora else 0)
    return _Plan(summary, norm, train_config, metrics, folder / f"member-{k}", k, members, size,
                 meta.decoder)


def _weight_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*") if f.suffix in (".safetensors", ".bin") and f.is_file())


def _decoder_at(backbone: Path, label: str) -> bool:
    """Whether the backbone folder a head version was trained on holds a decoder (its config.json only)."""
    from transformers import AutoConfig

    from rm_engine.backbone import is_decoder

    try:
        return is_decoder(AutoConfig.from_pretrained(str(backbone), local_files_only=True))
    except (OSError, ValueError) as exc:
        raise ModelFilesError(f"{label}: its backbone is unusable ({exc}); exporting it needs the backbone at the "
                              "path it was trained from") from None


def _too_big(plan: _Plan, max_bytes: int) -> str | None:
    if plan.weight_bytes <= max_bytes:
        return None
    return (f"{plan.label}: about {plan.weight_bytes / 2**30:.1f} GiB of weights, more than a download built in the "
            f"server's memory may hold ({max_bytes / 2**30:.1f} GiB): run `rmstudio models export "
            f"{plan.summary['id']} OUT` on the server instead")


def member_choices(mode: str, members: int) -> list[int | None]:
    """What of a version of ``members`` models can be exported: nothing to choose for one model; a head ensemble
    as a whole (None: its members' mean) or one member; one member of a fine-tuned ensemble."""
    if members <= 1:
        return []
    return ([None] if mode == "head" else []) + list(range(members))


def export_refusal(db: Database, settings: Settings, version: str | int | None, member: int | None = None, *,
                   max_bytes: int | None = None) -> str | None:
    """Why ``version`` (``member``; a fine-tuned ensemble's first one when None) cannot be exported, or None when
    it can; with ``max_bytes``, also when its weights exceed that (:data:`ARCHIVE_MAX_BYTES` for
    :func:`export_archive`).
    Cheap (the Train page asks on every rerun): reads the version's row and two small JSON files; their hashes are
    checked when an export loads the files."""
    try:
        plan = _plan(db, settings, version, member, verify=False, first_member=True)
    except (ExportError, ModelFilesError) as exc:
        return str(exc)
    return _too_big(plan, max_bytes) if max_bytes is not None else None


def export_version(db: Database, settings: Settings, version: str | int | None, out_dir: str | Path, *,
                   member: int | None = None, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Write ``version`` (an id or ``latest``; ``member`` of an ensemble) as a Hugging Face folder at ``out_dir``
    (new, or an empty folder), atomically: a temporary sibling renamed into place. Returns what
    ``rmstudio_reward.json`` holds. Raises :class:`ExportError`, ``VersionNotFound`` or ``ModelFilesError``."""
    say = progress or (lambda _msg: None)
    plan = _plan(db, settings, version, member)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out}: already exists and is not an empty folder; choose a new path")
    write = _head_writer(settings, plan, say) if plan.summary["mode"] == "head" else _finetune_writer(plan, say)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        say(f"writing {out}")
        tmp.mkdir(parents=True)
        info = write(tmp)
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        (tmp / CARD_FILE).write_text(model_card(info), encoding="utf-8")
        if out.is_dir():
            out.rmdir()  # empty (checked above): os.replace needs the name free
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info


def _finetune_writer(plan: _Plan, say: Callable[[str], None]) -> Callable[[Path], dict[str, Any]]:
    """Load the fine-tuned member now (errors before anything is written); the returned function writes it."""
    from rm_engine.finetune_model import FinetunedModel

    k, members = plan.member, plan.members
    say(f"loading {plan.label}" + (f", member {k} of {members}" if members > 1 else ""))
    try:
        fm = FinetunedModel.load(plan.member_dir, device="cpu")
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelFilesError(f"{plan.label}: member {k} cannot be loaded ({exc})") from None
    model, tok = fm.model, fm.tokenizer
    if fm.meta.lora:
        say("merging the LoRA adapters into the weights")
        model = model.merge_and_unload()
    pad_added = fm.meta.decoder and _own_pad_token(model, tok)

    def write(folder: Path) -> dict[str, Any]:
        model.save_pretrained(str(folder), safe_serialization=True)
        tok.save_pretrained(str(folder))
        if fm.net.pooling == "mean":
            _mean_pooling_code(folder, model)
        return _info(plan, tok, decoder=fm.meta.decoder, pooling=fm.net.pooling, max_length=fm.meta.max_length,
                     truncation=fm.meta.truncation, remote_code=fm.net.pooling == "mean", pad_added=pad_added)

    return write


def _head_writer(settings: Settings, plan: _Plan, say: Callable[[str], None]) -> Callable[[Path], dict[str, Any]]:
    """Check the head version's backbone and load its head now; the returned function writes backbone + head."""
    from rm_engine.registry import load_head_files
    from rm_engine.scoring import check_backbone

    say(f"loading {plan.label} (a head over the frozen backbone)")
    tensors, fcfg = load_head_files(settings, plan.summary["path"], plan.summary["id"])
    ref = check_backbone(settings, plan.summary["id"], fcfg.get("backbone", {}))
    decoder = plan.decoder

    def write(folder: Path) -> dict[str, Any]:
        tok = write_head_model(folder, ref, fcfg, tensors, plan.member, decoder)
        head = {"kind": fcfg["head"]["kind"], "features": fcfg.get("features", "rich"), "members": plan.members,
                "quantized_features": bool(fcfg.get("quantize", False))}
        return _info(plan, tok, decoder=decoder, pooling="mean", max_length=int(fcfg.get("max_length", 256)),
                     truncation=fcfg.get("truncation"), remote_code=True, pad_added=False, head=head)

    return write


def archive_name(version_id: int, member: int | None = None) -> str:
    """The folder (and ``.zip``) name of an exported version: ``rmstudio-v7`` or ``rmstudio-v7-member1``."""
    return f"rmstudio-v{version_id}" + (f"-member{member}" if member is not None else "")


def export_archive(db: Database, settings: Settings, version: str | int | None, *,
                   member: int | None = None) -> bytes:
    """:func:`export_version` as a ``.zip`` in memory (its files under one ``rmstudio-v<id>[-member<k>]/``
    folder), for a download from the app. Weights are stored, not deflated: they barely compress. Refuses models
    over :data:`ARCHIVE_MAX_BYTES` (:class:`ExportError`): the zip is built in memory."""
    if problem := _too_big(_plan(db, settings, version, member), ARCHIVE_MAX_BYTES):
        raise ExportError(problem)
    with tempfile.TemporaryDirectory(prefix="rmstudio-export-") as tmp:
        info = export_version(db, settings, version, Path(tmp) / "out", member=member)
        return zip_folder(Path(tmp) / "out", prefix=archive_name(info["version_id"], info["member"]) + "/")


def _own_pad_token(model: Any, tok: Any) -> bool:
    """Give a decoder whose pad id is its eos id a pad token of its own (model config included); True if it did."""
    if tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id:
        model.config.pad_token_id = tok.pad_token_id
        return False
    tok.add_special_tokens({"pad_token": EXPORT_PAD})
    rows = model.get_input_embeddings().weight.shape[0]
    if tok.pad_token_id >= rows:  # no spare row in the (often padded) vocabulary
        model.resize_token_embeddings(tok.pad_token_id + 1)
    model.config.pad_token_id = tok.pad_token_id
    return True


_MEAN_POOLING_CODE = '''"""RM Studio's mean-pooling reward model: the {base} encoder's last hidden states
averaged over the real (attention-mask) tokens, then its linear classifier, as RM Studio trained it. Written by
`rmstudio models export`; load with
AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)."""
import torch
from transformers import {config_cls}, {base}
from transformers.modeling_outputs import SequenceClassifierOutput


class RMStudioMeanPoolingConfig({config_cls}):
    model_type = "{model_type}"


class RMStudioMeanPoolingModel({base}):
    config_class = RMStudioMeanPoolingConfig

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, **kwargs):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        body = getattr(self, self.base_model_prefix)
        extra = {{}} if token_type_ids is None else {{"token_type_ids": token_type_ids}}
        hidden = body(input_ids=input_ids, attention_mask=attention_mask, **extra)[0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        return SequenceClassifierOutput(logits=self.classifier(pooled))
'''


def _mean_pooling_code(folder: Path, model: Any) -> None:
    """Write ``modeling_rmstudio.py`` for a mean-pooling encoder and point ``config.json`` at it (a model type of
    its own, so that transformers will not load the folder as the plain class, which reads [CLS])."""
    (folder / REMOTE_CODE_FILE).write_text(_MEAN_POOLING_CODE.format(
        base=type(model).__name__, config_cls=type(model.config).__name__, model_type=MEAN_MODEL_TYPE),
        encoding="utf-8")
    path = folder / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    module = REMOTE_CODE_FILE.removesuffix(".py")
    config.update(model_type=MEAN_MODEL_TYPE, architectures=["RMStudioMeanPoolingModel"],
                  auto_map={"AutoConfig": f"{module}.RMStudioMeanPoolingConfig",
                            "AutoModelForSequenceClassification": f"{module}.RMStudioMeanPoolingModel"})
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _info(plan: _Plan, tok: Any, *, decoder: bool, pooling: str, max_length: int, truncation: str | None,
          remote_code: bool, pad_added: bool, head: dict[str, Any] | None = None) -> dict[str, Any]:
    from rm_engine.backbone import input_format, pair_special_ids, single_special_ids

    summary, member, members, metrics = plan.summary, plan.member, plan.members, plan.metrics
    if decoder:
        prefix, suffix = single_special_ids(tok)
        layout = {"prefix_ids": prefix, "suffix_ids": suffix, "eos_id": tok.eos_token_id}
    else:
        prefix, middle, suffix = pair_special_ids(tok)
        layout = {"prefix_ids": prefix, "middle_ids": middle, "suffix_ids": suffix}
    # the version's calibration and length bias describe its (ensemble) score: one member's own are not measured
    temperature = (metrics.get("temperature") or {}).get("temperature") if plan.whole else None
    length_bias = ((metrics.get("val") or {}).get("length_bias") or {}).get("message") if plan.whole else None
    ensemble_note = (f"member {member} of an ensemble of {members}: the version's normalization statistics are the "
                     "ensemble's, so none is given for one member") if not plan.whole else None
    return {
        "format": EXPORT_FORMAT, "version_id": summary["id"], "member": None if plan.whole else member,
        "members": members, "mode": summary["mode"], "head": head,
        "created_at": summary["created_at"], "recipe": summary["recipe"], "backbone": summary["backbone"],
        "decoder": decoder, "pooling": pooling,
        "remote_code": REMOTE_CODE_FILE if remote_code else None,
        "input": {"format": input_format(tok, decoder=decoder), "max_length": max_length,
                  "truncation": truncation, "special_tokens": layout,
                  "token_type_ids": None if decoder else "all 0 (pass input_ids and attention_mask only)"},
        "normalization": None if not plan.whole else {"mean": plan.norm.get("mean", 0.0),
                                                    "std": plan.norm.get("std", 1.0), "n": plan.norm.get("n")},
        "normalization_note": ensemble_note,
        "metrics": summary["metrics"], "n_pairs": summary["n_pairs"], "n_labels": summary["n_labels"],
        "temperature": temperature, "length_bias": length_bias,
        "pad_token_added": pad_added, "train_config": plan.train_config,
    }
