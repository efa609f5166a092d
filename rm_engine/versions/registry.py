"""Model-version files on disk: written atomically, loaded only as safetensors, checked on load.

Publishing: :func:`stage_dir` makes ``models/.tmp-<uuid>``; the trainer writes its files there (tensors through
:func:`write_tensors`, anything else such as a Hugging Face ``save_pretrained(safe_serialization=True)``
folder); :func:`commit_dir` writes ``manifest.json`` (size and sha256 of every file), fsyncs everything and moves
the folder with ``os.replace`` to ``models/v-<uuid>``. Only then does the trainer insert the database row. A
``v-*`` folder without a row (a crash between the move and the insert, or a publish the lease guard refused) is
garbage, removed by :func:`sweep_orphans`.

Loading never unpickles: only ``*.safetensors`` weights are read, after their sizes and hashes match the
manifest; anything missing or damaged raises :class:`ModelFilesError` naming the version.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from db.config import Settings

MANIFEST = "manifest.json"
CONFIG = "config.json"
HEAD_WEIGHTS = "head.safetensors"


class ModelFilesError(RuntimeError):
    """A model version's files are missing, damaged or unsafe; the message names the version and the file."""


class VersionFilesMissing(ModelFilesError):
    """The version's own folder is absent or differs from its manifest (a copy elsewhere can repair that; an
    unusable backbone, say, it cannot)."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def stage_dir(settings: Settings) -> Path:
    """A fresh ``models/.tmp-<uuid>`` folder to write a version's files into."""
    models = Path(settings.models_dir)
    models.mkdir(parents=True, exist_ok=True)
    tmp = models / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    return tmp


def write_json(path: Path, obj: Any) -> None:
    """Write JSON (UTF-8, sorted keys) and fsync it."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)
        f.flush()
        os.fsync(f.fileno())


def write_tensors(path: Path, tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None) -> None:
    """Save tensors as safetensors (contiguous CPU copies) and fsync the file."""
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path), metadata=dict(metadata or {}))
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def commit_dir(settings: Settings, tmp: Path) -> str:
    """Write the manifest, fsync, and move ``tmp`` to ``models/v-<uuid>``; returns the path relative to home."""
    tmp = Path(tmp)
    files = {}
    for p in sorted(tmp.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            rel = p.relative_to(tmp).as_posix()
            if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".pickle"):
                raise ModelFilesError(f"refusing to publish pickle file {rel}: weights must be safetensors")
            files[rel] = {"size": p.stat().st_size, "sha256": _sha256(p)}
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    write_json(tmp / MANIFEST, {"files": files, "created": time.time()})
    _fsync_dir(tmp)
    final = Path(settings.models_dir) / f"v-{uuid.uuid4().hex}"
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    return final.relative_to(Path(settings.home)).as_posix()


def write_head_version(settings: Settings, tensors: Mapping[str, Any], config: Mapping[str, Any]) -> str:
    """Stage, write ``head.safetensors`` + ``config.json``, commit; returns the relative path."""
    tmp = stage_dir(settings)
    try:
        write_tensors(tmp / HEAD_WEIGHTS, tensors)
        write_json(tmp / CONFIG, dict(config))
        return commit_dir(settings, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def resolve_version_dir(settings: Settings, rel_path: str, label: str = "model version") -> Path:
    """The absolute folder of a version, which must lie inside ``models/`` (refused otherwise)."""
    models = Path(settings.models_dir).resolve()
    p = (Path(settings.home) / rel_path).resolve()
    if p == models or not p.is_relative_to(models):
        raise ModelFilesError(f"{label}: path {rel_path!r} is outside {models}; refusing to use it")
    return p


def remove_version_files(settings: Settings, rel_path: str) -> bool:
    """Delete a version's folder (confined to ``models/``); returns whether something was removed."""
    p = resolve_version_dir(settings, rel_path)
    if not p.exists():
        return False
    # rename first so a half-deleted folder never looks like a version
    trash = p.with_name(f".del-{uuid.uuid4().hex}")
    os.replace(p, trash)
    shutil.rmtree(trash, ignore_errors=True)
    return True


def verify_version_dir(settings: Settings, rel_path: str, version_id: int | str) -> dict[str, Any]:
    """Check a version's folder against its manifest; returns the manifest or raises :class:`ModelFilesError`."""
    label = f"model version {version_id}"
    d = resolve_version_dir(settings, rel_path, label)
    if not d.is_dir():
        raise VersionFilesMissing(f"{label}: its files are missing ({d} does not exist)")
    try:
        manifest = json.loads((d / MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise VersionFilesMissing(f"{label}: {MANIFEST} is missing or damaged in {d} ({type(exc).__name__})") from None
    for rel, info in files.items():
        p = d / rel
        if not p.is_file():
            raise VersionFilesMissing(f"{label}: file {rel} is missing from {d}")
        if p.stat().st_size != info.get("size") or _sha256(p) != info.get("sha256"):
            raise VersionFilesMissing(f"{label}: file {rel} in {d} is damaged (size or checksum differs from the "
                                      "manifest)")
    return manifest


def load_version_config(settings: Settings, rel_path: str, version_id: int | str, *,
                        verify: bool = True) -> tuple[Path, dict[str, Any]]:
    """``(folder, config)`` of a version whose files match their manifest (``config.json``: what the files hold,
    e.g. a fine-tune's ``members``). ``verify=False`` skips hashing every file (for cheap questions about a version
    whose files are verified when they are loaded)."""
    label = f"model version {version_id}"
    if verify:
        verify_version_dir(settings, rel_path, version_id)
    d = resolve_version_dir(settings, rel_path, label)
    try:
        return d, json.loads((d / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise VersionFilesMissing(f"{label}: {CONFIG} is unreadable in {d} ({exc})") from None


def load_head_files(settings: Settings, rel_path: str, version_id: int | str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(tensors, config)`` of a head version, verified; only safetensors are read (never pickles)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    d, config = load_version_config(settings, rel_path, version_id)
    try:
        tensors = load_file(str(d / HEAD_WEIGHTS))
    except (OSError, SafetensorError, ValueError) as exc:
        raise ModelFilesError(f"model version {version_id}: {HEAD_WEIGHTS} is not a valid safetensors file ({exc})") from None
    return tensors, config


def sweep_orphans(settings: Settings, known_paths: set[str], *, min_age_s: float = 600.0) -> list[str]:
    """Remove ``models/v-*`` folders no version row points to, and stale ``.tmp-*`` / ``.del-*`` folders.

    Folders younger than ``min_age_s`` are kept: a publisher may be between its move and its row insert.
    Returns the removed folder names.
    """
    models = Path(settings.models_dir)
    if not models.is_dir():
        return []
    known = {Path(p).name for p in known_paths}
    now = time.time()
    removed = []
    for p in models.iterdir():
        if not p.is_dir():
            continue
        garbage = (p.name.startswith("v-") and p.name not in known) or p.name.startswith((".tmp-", ".del-"))
        if not garbage:
            continue
        try:
            age = now - p.stat().st_mtime
        except OSError:
            continue
        if age < min_age_s:
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p.name)
    return sorted(removed)
