"""Feature cache maintenance on real files: compaction keeps every vector bit-identical, also while another process
writes (and auto-compacts) shards, readers opened before it still find every key, prune and the CLI."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import rm_engine.head.features as features
from cli import main
from db.config import Settings
from rm_engine.head.cache_admin import cache_report, compact, pick_tier, prune
from rm_engine.head.features import FeatureCache

REPO = Path(__file__).resolve().parents[2]


def key(text: str) -> str:
    """A cache key (as TextItem.key: a sha256)."""
    return hashlib.sha256(text.encode()).hexdigest()


def vec(k: str) -> np.ndarray:
    """The vector stored under ``k``, derived from it, so that any process can check it."""
    return np.random.default_rng(int(k[:12], 16)).standard_normal(8).astype(np.float32)


def _settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path, db_url=f"sqlite:///{tmp_path / 'x.db'}")


def _cache(s: Settings, fp: str = "fp0") -> FeatureCache:
    return FeatureCache(s, SimpleNamespace(fingerprint=fp), max_length=64)  # only ref.fingerprint is used


def _put(cache: FeatureCache, texts: list[str]) -> list[str]:
    keys = [key(t) for t in texts]
    cache.put_many(keys, np.stack([vec(k) for k in keys]))
    return keys


def _assert_all(cache: FeatureCache, keys: list[str]) -> None:
    got = cache.get_many(keys)
    missing = [k for k in keys if k not in got]
    assert not missing, f"{len(missing)} of {len(keys)} keys lost"
    for k in keys:
        assert got[k].dtype == np.float32 and np.array_equal(got[k], vec(k))


def _shards(cache: FeatureCache) -> list[Path]:
    return sorted(cache.dir.glob("s-*.npz"))


def test_compaction_keeps_every_vector_in_one_shard(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    cache = _cache(s)
    keys: list[str] = []
    for i in range(10):
        keys += _put(cache, [f"t{i}-{j}" for j in range(5)] + ["shared"])  # "shared" is in every shard
    keys = list(dict.fromkeys(keys))
    reader = _cache(s)
    assert len(reader) == 51  # loaded before compaction
    before = _cache(s)  # opened, nothing loaded yet
    old = os.path.getmtime(_shards(cache)[0]) - 5 * 86400
    for p in _shards(cache):
        os.utime(p, (old, old))
    res = compact(cache)
    assert (res.shards_before, res.shards_after, res.vectors) == (10, 1, 51)
    assert len(_shards(cache)) == 1 and os.path.getmtime(_shards(cache)[0]) == old  # age kept for prune
    for c in (reader, before, _cache(s)):
        _assert_all(c, keys)
    assert compact(cache).shards_after == 1  # nothing to do


def test_reader_retries_a_shard_merged_between_glob_and_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = _settings(tmp_path)
    writer = _cache(s)
    keys = [k for i in range(4) for k in _put(writer, [f"r{i}-{j}" for j in range(3)])]
    reader = _cache(s)
    real_load = np.load
    calls = {"n": 0}

    def load_after_compaction(path, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 1:  # the reader has globbed the 4 shards; they are merged away before it loads one
            compact(writer.dir)
        return real_load(path, *a, **kw)

    monkeypatch.setattr(features.np, "load", load_after_compaction)
    _assert_all(reader, keys)
    assert reader._seen == {p.name for p in _shards(writer)}  # the merged-away shards stay unseen


WRITER = textwrap.dedent('''
    import sys
    from pathlib import Path
    from types import SimpleNamespace
    import numpy as np
    from db.config import Settings
    from rm_engine.head import features
    from rm_engine.head.features import FeatureCache
    from tests.integration.test_feature_cache_admin import key, vec
    home, n = Path(sys.argv[1]), int(sys.argv[2])
    features.AUTO_COMPACT_SHARDS = 8
    cache = FeatureCache(Settings(home=home, db_url="sqlite://"), SimpleNamespace(fingerprint="fp0"), max_length=64)
    for i in range(n):
        keys = [key(f"w{i}-{j}") for j in range(3)]
        cache.put_many(keys, np.stack([vec(k) for k in keys]))
''')


def test_concurrent_writer_loses_no_key_while_compacting(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    cache = _cache(s)
    base = [k for i in range(20) for k in _put(cache, [f"b{i}-{j}" for j in range(3)])]
    reader = _cache(s)  # opened before any compaction, nothing loaded
    n = 400  # the child also auto-compacts past 8 shards: two compactors at once
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), str(n)], cwd=REPO,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    compactions = 0
    try:
        deadline = time.monotonic() + 60
        while child.poll() is None and time.monotonic() < deadline:
            if len(_shards(cache)) > 1:
                compact(cache)
                compactions += 1
                _assert_all(_cache(s), base)
    finally:
        child.wait(timeout=60)
    assert child.returncode == 0
    assert compactions >= 3, "the compactor never overlapped the writer"
    compact(cache)
    written = [key(f"w{i}-{j}") for i in range(n) for j in range(3)]
    assert len(_shards(cache)) == 1
    for c in (reader, _cache(s)):
        _assert_all(c, base + written)


def test_put_many_auto_compacts_past_the_threshold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(features, "AUTO_COMPACT_SHARDS", 3)
    s = _settings(tmp_path)
    cache = _cache(s)
    keys, counts = [], []
    for i in range(10):
        keys += _put(cache, [f"a{i}-{j}" for j in range(2)])
        counts.append(len(_shards(cache)))
    assert counts == [1, 2, 3, 1, 2, 3, 1, 2, 3, 1]
    _assert_all(_cache(s), keys)


@pytest.mark.parametrize(("sizes", "expected"), [
    ([1, 1, 1, 1], [0, 1, 2, 3]),            # equal shards: all merge
    ([100, 1, 1, 1], [1, 2, 3]),             # 100 > 4 x 3: the large shard stays
    ([100, 10, 1, 1, 5], [1, 2, 3, 4]),      # 1+1 -> 5 <= 8 -> 10 <= 28; 100 > 4 x 17
    ([20, 3, 2], [0, 1, 2]),                 # 20 <= 4 x 5: merged too
    ([7, 7], [0, 1]),
])
def test_pick_tier_merges_the_small_shards(sizes: list[int], expected: list[int]) -> None:
    assert pick_tier(sizes) == expected


def test_auto_compaction_leaves_a_large_shard_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(features, "AUTO_COMPACT_SHARDS", 3)
    s = _settings(tmp_path)
    cache = _cache(s)
    keys = _put(cache, [f"big-{j}" for j in range(300)])
    (big,) = _shards(cache)
    for i in range(12):  # four automatic compactions of one-key shards
        keys += _put(cache, [f"small-{i}"])
        assert big in _shards(cache) and len(_shards(cache)) <= 4
    assert len(_shards(cache)) < 12
    _assert_all(_cache(s), keys)
    compact(cache)  # the command merges everything
    assert _shards(cache) != [big] and len(_shards(cache)) == 1
    _assert_all(_cache(s), keys)


def _age(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_prune_removes_old_caches_and_stale_temp_files(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    old, new = _cache(s, "old"), _cache(s, "new")
    _put(old, ["x", "y"])
    new_keys = _put(new, ["z"])
    for p in _shards(old):
        _age(p, 10 * 86400)
    stale, fresh = new.dir / ".tmp-s-dead.npz", new.dir / ".tmp-s-busy.npz"
    stale.write_bytes(b"x" * 100)
    fresh.write_bytes(b"y" * 10)
    _age(stale, 2 * 3600)
    report = {r.name: r for r in cache_report(s)}
    assert report[new.dir.name].stale_tmp == 1 and report[old.dir.name].vectors == 2

    dry = prune(s, 7, dry_run=True)
    assert {(r.path, r.kind) for r in dry.removed} == {(old.dir, "cache"), (stale, "tmp")} and dry.dry_run
    assert old.dir.exists() and stale.exists()
    res = prune(s, 7)
    assert {(r.path, r.kind) for r in res.removed} == {(old.dir, "cache"), (stale, "tmp")}
    assert res.bytes == dry.bytes > 100
    assert not old.dir.exists() and not stale.exists() and fresh.exists()
    _assert_all(_cache(s, "new"), new_keys)
    assert prune(s, 7).removed == ()


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> object:
    capsys.readouterr()
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_cli_reports_compacts_and_prunes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("RMSTUDIO_HOME", str(tmp_path))
    monkeypatch.setenv("RMSTUDIO_DB", f"sqlite:///{tmp_path / 'x.db'}")
    assert main(["cache"]) == 0 and "no feature cache yet" in capsys.readouterr().out
    assert _cli(capsys, "cache", "--json") == []
    s = Settings.from_env()
    cache, old = _cache(s), _cache(s, "old")
    for i in range(5):
        _put(cache, [f"c{i}", "dup"])
    _put(old, ["o"])
    for p in _shards(old):
        _age(p, 40 * 86400)

    rows = {r["name"]: r for r in _cli(capsys, "cache", "--json")}
    assert (rows[cache.dir.name]["shards"], rows[cache.dir.name]["vectors"]) == (5, 6)
    assert rows[cache.dir.name]["bytes"] > 0 and rows[cache.dir.name]["last_written"]
    assert main(["cache"]) == 0 and cache.dir.name in capsys.readouterr().out

    done = {r["name"]: r for r in _cli(capsys, "cache", "compact", "--json")}
    assert done[cache.dir.name] == {"name": cache.dir.name, "shards_before": 5, "shards_after": 1, "vectors": 6}

    dry = _cli(capsys, "cache", "prune", "--older-than", "30", "--dry-run", "--json")
    assert dry["dry_run"] and [r["path"] for r in dry["removed"]] == [str(old.dir)] and old.dir.exists()
    res = _cli(capsys, "cache", "prune", "--older-than", "30", "--json")
    assert res["bytes"] == dry["bytes"] > 0 and not old.dir.exists() and cache.dir.exists()
    assert main(["cache", "prune", "--older-than", "30"]) == 0 and "nothing to prune" in capsys.readouterr().out
    assert main(["cache", "prune", "--older-than", "-1"]) == 2  # a usage error
    assert "argument --older-than: must be a finite number from 0" in capsys.readouterr().err
