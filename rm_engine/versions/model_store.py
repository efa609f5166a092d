"""Model versions across machines: a copy of each version's files in the database, restored where they are missing.

A team that outgrows one machine shares a PostgreSQL database, but each machine has its own ``RMSTUDIO_HOME``:
the worker on the GPU machine writes a version's files there, and the app or another worker elsewhere would find
none. With ``Settings.copies_models_to_db`` (``RMSTUDIO_MODELS_IN_DB``: on by default for PostgreSQL) the
publishing transaction also stores a zip of the version's folder (``db.versions.put_archive``), so the row never
exists without its copy. A process that then cannot load the version from its own disk (folder missing, or a
file damaged) unpacks the copy into a staging folder, checks every file against the manifest and moves it into
place with ``os.replace`` before loading again: concurrent restorers each produce a complete folder and the
last rename wins, a killed one leaves only a ``.tmp-`` folder that the worker's sweep removes.

Versions whose files exceed :data:`DB_COPY_MAX_BYTES` are not copied (a warning says so): share
``RMSTUDIO_HOME/models`` between machines for those.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from sqlalchemy.orm import Session

from db.config import Settings
from db.session import Database
from db.versions import archived_versions, get_archive, list_versions, put_archive
from rm_engine.versions.registry import (
    ModelFilesError,
    VersionFilesMissing,
    resolve_version_dir,
    stage_dir,
    verify_version_dir,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

DB_COPY_MAX_BYTES = 512 * 2**20  # larger versions stay on disk only: copying GBs through the database is slow
_COMPRESSED = (".json", ".txt", ".md", ".py", ".jinja", ".model")  # text compresses; weights barely do


def folder_bytes(folder: Path) -> int:
    """Total size of the files below ``folder``."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def zip_folder(folder: Path, prefix: str = "") -> bytes:
    """A zip (in memory) of the files below ``folder``, named ``prefix`` + their path relative to it; text deflated,
    weights stored."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, prefix + p.relative_to(folder).as_posix(),
                         compress_type=zipfile.ZIP_DEFLATED if p.suffix in _COMPRESSED else zipfile.ZIP_STORED)
    return buf.getvalue()


def pack(settings: Settings, rel_path: str) -> bytes:
    """A zip of a version's folder (manifest included), paths relative to the folder."""
    return zip_folder(resolve_version_dir(settings, rel_path))


def _copy_or_reason(settings: Settings, rel_path: str) -> tuple[tuple[bytes, str] | None, int, str | None]:
    """``((zip, sha256) or None, folder size, why not)``: no copy for folders over :data:`DB_COPY_MAX_BYTES`."""
    size = folder_bytes(resolve_version_dir(settings, rel_path))
    if size > DB_COPY_MAX_BYTES:
        return None, size, f"{size / 2**20:.0f} MiB, over the {DB_COPY_MAX_BYTES / 2**20:.0f} MiB kept in the database"
    data = pack(settings, rel_path)
    return (data, hashlib.sha256(data).hexdigest()), size, None


def copy_for_db(settings: Settings, rel_path: str) -> tuple[bytes, str] | None:
    """``(zip, sha256)`` to store with a new version when ``settings`` asks for database copies and the folder is
    small enough; None otherwise (logged when it is too large)."""
    if not settings.copies_models_to_db:
        return None
    copy, _, reason = _copy_or_reason(settings, rel_path)
    if reason:
        log.warning("model files at %s are %s: other machines need RMSTUDIO_HOME/models shared to load this version",
                    rel_path, reason)
    return copy


def store_copy(session: Session, version_id: int, copy: tuple[bytes, str] | None) -> None:
    """Inside the publishing transaction: store ``copy`` (from :func:`copy_for_db`) for the new version."""
    if copy is not None:
        put_archive(session, version_id, *copy)


def restore(settings: Settings, rel_path: str, version_id: int, data: bytes) -> Path:
    """Unpack a database copy into ``rel_path`` atomically (staged, verified against its manifest, renamed into
    place, replacing a damaged folder). Raises :class:`ModelFilesError` when the copy is unusable."""
    label = f"model version {version_id}"
    final = resolve_version_dir(settings, rel_path, label)
    tmp = stage_dir(settings)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            for name in zf.namelist():
                target = (tmp / name).resolve()
                if not target.is_relative_to(tmp.resolve()):
                    raise ModelFilesError(f"{label}: the database copy holds an unsafe path {name!r}")
            zf.extractall(tmp)
        verify_version_dir(settings, tmp.relative_to(settings.home).as_posix(), version_id)
        if final.exists():
            if _intact(settings, rel_path, version_id):  # another process restored it meanwhile: keep theirs
                shutil.rmtree(tmp, ignore_errors=True)
                return final
            aside = final.with_name(f".del-{tmp.name}")  # damaged: os.replace cannot replace a non-empty folder
            os.replace(final, aside)
            shutil.rmtree(aside, ignore_errors=True)
        try:
            os.replace(tmp, final)
        except OSError:
            if not final.is_dir():  # another process restored it first: theirs is as good
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except zipfile.BadZipFile as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelFilesError(f"{label}: the database copy of its files is not a valid zip ({exc})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("%s: files restored from the database into %s", label, final)
    return final


def _intact(settings: Settings, rel_path: str, version_id: int) -> bool:
    try:
        verify_version_dir(settings, rel_path, version_id)
    except ModelFilesError:
        return False
    return True


def with_files(db: Database, settings: Settings, version_id: int, rel_path: str, load: Callable[[], T]) -> T:
    """``load()`` a version from its folder; when that fails because the folder is missing or differs from its
    manifest (:class:`VersionFilesMissing`), restore it from the database copy (if there is one) and load again.
    Without a copy the error says how to share files. Other failures (an unusable backbone...) pass through."""
    try:
        return load()
    except VersionFilesMissing as exc:
        first = exc
    with db.read() as s:
        copy = get_archive(s, version_id)
    if copy is None:
        raise ModelFilesError(f"{first}. No copy of its files is in the database either: on several machines, "
                              "share RMSTUDIO_HOME/models between them, or set RMSTUDIO_MODELS_IN_DB=on where "
                              "versions are trained") from None
    data, digest = copy
    if hashlib.sha256(data).hexdigest() != digest:
        raise ModelFilesError(f"{first}; its database copy is damaged too (checksum differs)") from None
    log.warning("%s; restoring it from the database copy", first)
    restore(settings, rel_path, version_id, data)
    return load()


def share_versions(db: Database, settings: Settings, version_ids: list[int] | None = None, *,
                   progress: Callable[[dict[str, object]], None] | None = None) -> list[dict[str, object]]:
    """Store database copies of versions published without one (before copies were switched on, or on SQLite):
    ``version_ids`` or every version. Each needs its files here, intact. Returns, per version (also passed to
    ``progress`` as each is done), ``{"version", "status": "copied" | "had a copy" | "skipped", "bytes",
    "reason"}``."""

    with db.read() as s:
        have = archived_versions(s)
        rows = [(v.id, v.path) for v in list_versions(s) if version_ids is None or v.id in version_ids]
    missing = sorted(set(version_ids or ()) - {vid for vid, _ in rows})
    if missing:
        raise ModelFilesError(f"no model version {', '.join(map(str, missing))}")
    out: list[dict[str, object]] = []
    for vid, rel in sorted(rows):
        if vid in have:
            _done(out, progress, vid, "had a copy", have[vid])
            continue
        try:
            verify_version_dir(settings, rel, vid)
        except ModelFilesError as exc:
            _done(out, progress, vid, "skipped", None, str(exc))
            continue
        copy, size, reason = _copy_or_reason(settings, rel)
        if copy is None:
            _done(out, progress, vid, "skipped", size, reason)
            continue
        with db.write() as s:
            store_copy(s, vid, copy)
        _done(out, progress, vid, "copied", len(copy[0]))
    return out


def _done(out: list[dict[str, object]], progress: Callable[[dict[str, object]], None] | None, version: int,
          status: str, size: int | None, reason: str | None = None) -> None:
    out.append({"version": version, "status": status, "bytes": size, "reason": reason})
    if progress is not None:
        progress(out[-1])


__all__ = ["DB_COPY_MAX_BYTES", "copy_for_db", "folder_bytes", "pack", "restore", "share_versions", "store_copy",
           "with_files", "zip_folder"]
