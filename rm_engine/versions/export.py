"""Export a model version as a Hugging Face folder, for RL trainers, evaluation harnesses and servers that load
reward models with ``AutoModelForSequenceClassification`` (or ``pipeline``, or TRL's ``reward_funcs=<folder>``) and
never import RM Studio.

The folder holds ``config.json`` + ``model.safetensors`` (LoRA adapters merged into the weights, the trained score
head included; head mode: the frozen backbone plus its heads), the tokenizer with a chat template,
``modeling_rmstudio.py`` (:mod:`rm_engine.versions.export_modeling`), ``rmstudio_reward.json`` (version, recipe, input
format, normalization statistics, headline metrics, training config) and a ``README.md`` model card whose Python
snippets return RM Studio's raw score and z-score (``tests/integration/test_export.py`` runs them against RM Studio's
own scores).

Every export reads its score through ``modeling_rmstudio.py``, a subclass of the backbone's own class named in
``config.json``'s ``auto_map`` under a model type of its own (loading needs ``trust_remote_code=True``; without it
transformers refuses rather than silently running the plain class): it takes the untruncated conversation, splits
context and response and truncates each as training did, so its scores equal RM Studio's on inputs of any length,
given as a pair, as the model card builds them, or as one chat-templated string (:mod:`rm_engine.versions.export_inputs`).

Head-mode versions (frozen backbone + trained heads) export through :mod:`rm_engine.versions.export_head`; a head ensemble is
one model (its members' mean) unless a member is chosen. What cannot be one such model is refused with the reason:
a fine-tuned ensemble without a chosen member, rich features (head mode or ``rich`` pooling) of an input without a
separator between context and response (decoders, templated encoders).
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
from rm_engine.backbone import input_format, is_decoder, load_tokenizer
from rm_engine.finetune.model import META_FILE, FinetunedModel, FinetuneMeta
from rm_engine.serving.scoring import check_backbone
from rm_engine.versions.export_card import model_card
from rm_engine.versions.export_head import add_tensors, head_refusal, write_head_model
from rm_engine.versions.export_inputs import REMOTE_CODE_FILE, finish_tokenizer, input_spec, write_remote_code
from rm_engine.versions.model_store import with_files, zip_folder
from rm_engine.versions.registry import ModelFilesError, load_head_files, load_version_config

EXPORT_FORMAT = "rmstudio-reward-export/v1"
INFO_FILE = "rmstudio_reward.json"
CARD_FILE = "README.md"
ARCHIVE_MAX_BYTES = 2 * 2**30  # export_archive builds the zip in memory (the app's server process)


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

    try:
        meta = FinetuneMeta.read(folder / f"member-{k}" / META_FILE)
    except ValueError as exc:
        raise ModelFilesError(f"{label}: {exc}") from None
    # LoRA members hold adapters only: the merged model is the size of the backbone they adapt
    size = _weight_bytes(folder / f"member-{k}") + (_weight_bytes(Path(meta.backbone["path"])) if meta.lora else 0)
    return _Plan(summary, norm, train_config, metrics, folder / f"member-{k}", k, members, size,
                 meta.decoder)


def _weight_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*") if f.suffix in (".safetensors", ".bin") and f.is_file())


def _decoder_at(backbone: Path, label: str) -> bool:
    """Whether the backbone folder a head version was trained on holds a decoder (its config.json only)."""
    from transformers import AutoConfig


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

    k, members = plan.member, plan.members
    say(f"loading {plan.label}" + (f", member {k} of {members}" if members > 1 else ""))
    try:
        fm = FinetunedModel.load(plan.member_dir, device="cpu")
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelFilesError(f"{plan.label}: member {k} cannot be loaded ({exc})") from None
    model, tok, pooling = fm.model, fm.tokenizer, fm.net.pooling
    spec = input_spec(tok, decoder=fm.meta.decoder, max_length=fm.meta.max_length, rich=pooling == "rich")
    _check_rich(plan, spec)
    if fm.meta.lora:
        say("merging the LoRA adapters into the weights")
        model = model.merge_and_unload()

    def write(folder: Path) -> dict[str, Any]:
        model.save_pretrained(str(folder), safe_serialization=True, max_shard_size="1000GB")  # one file to add to
        tok.save_pretrained(str(folder))
        if fm.net.rich_head is not None:
            add_tensors(folder / "model.safetensors",
                        {f"rich_head.{n}": t.detach().float().cpu().contiguous()
                         for n, t in fm.net.rich_head.state_dict().items()})
        exact = finish_tokenizer(folder, spec, tok, decoder=fm.meta.decoder)
        write_remote_code(folder, model, {**spec, "score": pooling})
        return _info(plan, spec, decoder=fm.meta.decoder, pooling=pooling, truncation=fm.meta.truncation,
                     one_string=exact)

    return write


def _check_rich(plan: _Plan, spec: dict[str, Any]) -> None:
    if spec["rich"] and spec["layout"] != "text-pair":
        raise ExportError(f"{plan.label} reads rich features (context and response embedded apart too) through a "
                          f"{spec['layout']} input, which has no separator to split them at: score it through RM "
                          "Studio, or retrain without rich features to export")


def _head_writer(settings: Settings, plan: _Plan, say: Callable[[str], None]) -> Callable[[Path], dict[str, Any]]:
    """Check the head version's backbone and load its head now; the returned function writes backbone + head."""

    say(f"loading {plan.label} (a head over the frozen backbone)")
    tensors, fcfg = load_head_files(settings, plan.summary["path"], plan.summary["id"])
    ref = check_backbone(settings, plan.summary["id"], fcfg.get("backbone", {}))
    decoder = plan.decoder
    features = fcfg.get("features", "rich")
    layout = input_format(load_tokenizer(ref, decoder=decoder), decoder=decoder)
    _check_rich(plan, {"rich": features == "rich", "layout": layout})

    def write(folder: Path) -> dict[str, Any]:
        _, spec, exact = write_head_model(folder, ref, fcfg, tensors, plan.member, decoder)
        head = {"kind": fcfg["head"]["kind"], "features": features, "members": plan.members,
                "quantized_features": bool(fcfg.get("quantize", False))}
        return _info(plan, spec, decoder=decoder, pooling="mean", truncation=fcfg.get("truncation"),
                     one_string=exact, head=head)

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


def _info(plan: _Plan, spec: dict[str, Any], *, decoder: bool, pooling: str, truncation: str | None,
          one_string: bool, head: dict[str, Any] | None = None) -> dict[str, Any]:
    summary, member, members, metrics = plan.summary, plan.member, plan.members, plan.metrics
    prefix, suffix = spec["single_special"]
    if spec["layout"] == "text-pair":
        prefix, middle, suffix = spec["pair_special"]
        layout = {"prefix_ids": prefix, "middle_ids": middle, "suffix_ids": suffix}
    else:
        layout = {"prefix_ids": prefix, "suffix_ids": suffix, "eos_id": spec.get("eos")}
    # the version's calibration and length bias describe its (ensemble) score: one member's own are not measured
    temperature = (metrics.get("temperature") or {}).get("temperature") if plan.whole else None
    length_bias = ((metrics.get("val") or {}).get("length_bias") or {}).get("message") if plan.whole else None
    ensemble_note = (f"member {member} of an ensemble of {members}: the version's normalization statistics are the "
                     "ensemble's, so none is given for one member") if not plan.whole else None
    return {
        "format": EXPORT_FORMAT, "version_id": summary["id"], "member": None if plan.whole else member,
        "members": members, "mode": summary["mode"], "head": head,
        "created_at": summary["created_at"], "recipe": summary["recipe"], "backbone": summary["backbone"],
        "decoder": decoder, "pooling": pooling, "remote_code": REMOTE_CODE_FILE,
        "input": {"format": spec["layout"], "max_length": spec["max_length"], "truncation": truncation,
                  "special_tokens": layout, "response_marker": spec.get("marker_text"),
                  "one_string_exact": one_string},
        "normalization": None if not plan.whole else {"mean": plan.norm.get("mean", 0.0),
                                                    "std": plan.norm.get("std", 1.0), "n": plan.norm.get("n")},
        "normalization_note": ensemble_note,
        "metrics": summary["metrics"], "n_pairs": summary["n_pairs"], "n_labels": summary["n_labels"],
        "temperature": temperature, "length_bias": length_bias, "train_config": plan.train_config,
    }
