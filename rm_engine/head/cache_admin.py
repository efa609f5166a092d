"""Maintenance of the on-disk feature cache: report, compact and prune (see :class:`rm_engine.head.features.FeatureCache`).

Every write adds one shard, so a cache dir grows by one file per retrain that meets new texts, and caches of
backbones or max_lengths nobody uses any more stay forever. :func:`compact` merges one dir's shards into one,
:func:`prune` removes dirs not written for N days and temp files left by writers killed mid-write.

Safe with readers and writers in other processes: compaction writes the merged shard atomically (temp file,
fsync, ``os.replace``) *before* deleting the shards it merged, and deletes only those, so a key is on disk at
every moment and a shard written meanwhile survives. The merged shard keeps the newest mtime of its inputs, so
compaction does not make an unused cache look recently written to :func:`prune`.
"""
from __future__ import annotations

import os
import shutil
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from db.config import Settings

if TYPE_CHECKING:
    from rm_engine.head.features import FeatureCache

TMP_STALE_S = 3600.0  # a writer that has not renamed its temp file within an hour is gone


@dataclass(frozen=True)
class CacheInfo:
    """One feature cache dir (one backbone fingerprint, pooling, max_length, quantization)."""

    name: str
    path: Path
    shards: int
    vectors: int  # unique keys
    bytes: int  # every file in the dir, temp files included
    last_written: datetime | None  # newest shard mtime (UTC); None without shards
    stale_tmp: int  # temp files older than an hour


@dataclass(frozen=True)
class CompactResult:
    """What :func:`compact` did to one dir; ``shards_after`` counts shards written meanwhile by others too;
    ``vectors``: unique keys in the shards merged (all of the dir's unless tiered)."""

    path: Path
    shards_before: int
    shards_after: int
    vectors: int


@dataclass(frozen=True)
class Removal:
    """A cache dir (``kind="cache"``) or a stale temp file (``kind="tmp"``) that :func:`prune` removed."""

    path: Path
    kind: str
    bytes: int


@dataclass(frozen=True)
class PruneResult:
    """What :func:`prune` removed, or would remove with ``dry_run``."""

    removed: tuple[Removal, ...]
    dry_run: bool

    @property
    def bytes(self) -> int:
        return sum(r.bytes for r in self.removed)


def features_root(settings: Settings) -> Path:
    """The folder holding one dir per feature cache."""
    return Path(settings.cache_dir) / "features"


def cache_dirs(settings: Settings) -> list[Path]:
    """The feature cache dirs, by name (empty when there is no cache yet)."""
    root = features_root(settings)
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def shard_paths(directory: Path) -> list[Path]:
    """The shard files of one cache dir, in the order :class:`FeatureCache` reads them."""
    return sorted(directory.glob("s-*.npz"))


def _size_and_mtime(p: Path) -> tuple[int, float] | None:
    try:
        st = p.stat()
    except FileNotFoundError:  # removed by a compactor meanwhile
        return None
    return st.st_size, st.st_mtime


def _stale_tmp(directory: Path, now: float) -> list[tuple[Path, int]]:
    out = []
    for p in directory.glob(".tmp-*"):
        sm = _size_and_mtime(p)
        if sm is not None and now - sm[1] > TMP_STALE_S:
            out.append((p, sm[0]))
    return out


def _dir_bytes(directory: Path) -> int:
    return sum(sm[0] for p in directory.rglob("*") if p.is_file() and (sm := _size_and_mtime(p)) is not None)


def _newest_mtime(directory: Path) -> float | None:
    times = [sm[1] for p in shard_paths(directory) if (sm := _size_and_mtime(p)) is not None]
    return max(times) if times else None


def cache_report(settings: Settings) -> list[CacheInfo]:
    """One :class:`CacheInfo` per feature cache dir; reads only the key arrays of the shards."""
    now = time.time()
    out = []
    for d in cache_dirs(settings):
        shards = shard_paths(d)
        newest = _newest_mtime(d)
        out.append(CacheInfo(
            name=d.name, path=d, shards=len(shards), vectors=_count_keys(shards), bytes=_dir_bytes(d),
            last_written=None if newest is None else datetime.fromtimestamp(newest, tz=timezone.utc),
            stale_tmp=len(_stale_tmp(d, now)),
        ))
    return out


TIER_RATIO = 4.0  # tiered compaction leaves a shard alone while it is over 4x the smaller shards together


def pick_tier(sizes: list[int], ratio: float = TIER_RATIO) -> list[int]:
    """Indices of the shards a tiered compaction merges: the smallest two, then each next larger one while it is at
    most ``ratio`` times the sizes taken so far. A large shard is rewritten only once the small ones add up to a
    ``1/ratio`` share of it, so each vector is rewritten O(log n) times as a cache grows, not at every merge."""
    order = sorted(range(len(sizes)), key=lambda i: (sizes[i], i))
    taken, total = order[:2], sum(sizes[i] for i in order[:2])
    for i in order[2:]:
        if sizes[i] > ratio * total:
            break
        taken.append(i)
        total += sizes[i]
    return sorted(taken)


def compact(target: Path | str | FeatureCache, *, tiered: bool = False) -> CompactResult:
    """Merge the shards of one cache dir (a path, or a :class:`FeatureCache`) into one.

    The shards present at the start are read (one that vanishes meanwhile, merged by another compactor, or a
    damaged one is left alone), the merged shard is written atomically, then exactly the shards read are deleted.
    Keys and vectors are kept bit-identical; of a key in several shards the first in read order wins.
    ``tiered`` (what a writer's automatic compaction does) merges only the small shards (:func:`pick_tier`).
    """
    directory = Path(target) if isinstance(target, (str, os.PathLike)) else target.dir
    paths = shard_paths(directory)
    n_before = len(paths)
    if tiered and len(paths) > 2:
        sized = [(p, st[0]) for p in paths if (st := _size_and_mtime(p)) is not None]
        paths = [sized[i][0] for i in pick_tier([size for _, size in sized])]
    if len(paths) <= 1:
        return CompactResult(directory, n_before, n_before, _count_keys(paths))
    merged: list[Path] = []
    keys: list[np.ndarray] = []
    vecs: list[np.ndarray] = []
    newest = 0.0
    for p in paths:
        try:
            mtime = p.stat().st_mtime
            with np.load(p, allow_pickle=False) as z:
                k, v = z["keys"], z["vecs"]
        except (OSError, ValueError, KeyError):
            continue
        merged.append(p)
        keys.append(k)
        vecs.append(v)
        newest = max(newest, mtime)
    if len(merged) <= 1:
        return CompactResult(directory, n_before, len(shard_paths(directory)), _count_keys(paths))
    all_keys = np.concatenate(keys)
    _, first = np.unique(all_keys, return_index=True)
    first.sort()
    _write_shard(directory, all_keys[first], np.concatenate(vecs)[first], newest)
    for p in merged:
        try:
            p.unlink()
        except FileNotFoundError:  # another compactor merged it too
            pass
    return CompactResult(directory, n_before, len(shard_paths(directory)), len(first))


def _count_keys(paths: list[Path]) -> int:
    keys: set[str] = set()
    for p in paths:
        try:
            with np.load(p, allow_pickle=False) as z:
                keys.update(z["keys"].tolist())
        except (OSError, ValueError, KeyError):  # vanished or damaged: FeatureCache ignores it too
            continue
    return len(keys)


def _write_shard(directory: Path, keys: np.ndarray, vecs: np.ndarray, mtime: float) -> Path:
    """The discipline of ``FeatureCache.put_many``: temp file, fsync, ``os.replace``."""
    name = f"s-{uuid.uuid4().hex}.npz"
    tmp = directory / f".tmp-{name}"
    try:
        with open(tmp, "wb") as f:
            np.savez(f, keys=keys.astype("U64"), vecs=vecs.astype(np.float32, copy=False))
            f.flush()
            os.fsync(f.fileno())
        os.utime(tmp, (mtime, mtime))
        os.replace(tmp, directory / name)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return directory / name


def prune(settings: Settings, older_than_days: float, dry_run: bool = False) -> PruneResult:
    """Remove cache dirs whose newest shard (or, without shards, the dir itself) is older than
    ``older_than_days``, and temp files older than an hour in the other dirs; ``dry_run`` removes nothing."""
    if older_than_days < 0:
        raise ValueError(f"older_than_days must be >= 0, got {older_than_days}")
    now = time.time()
    cutoff = now - older_than_days * 86400.0
    removed: list[Removal] = []
    for d in cache_dirs(settings):
        newest = _newest_mtime(d)
        if newest is None:
            sm = _size_and_mtime(d)
            newest = now if sm is None else sm[1]
        if newest < cutoff:
            removed.append(Removal(d, "cache", _dir_bytes(d)))
            if not dry_run:
                shutil.rmtree(d, ignore_errors=True)
            continue
        for p, size in _stale_tmp(d, now):
            removed.append(Removal(p, "tmp", size))
            if not dry_run:
                p.unlink(missing_ok=True)
    return PruneResult(tuple(removed), dry_run)
