"""The on-disk feature cache: computed once per text, reused, safe with several writers, damaged shards ignored."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from db.config import Settings
from rm_engine.backbone import resolve_backbone
from rm_engine.head.features import FeatureCache, FeatureExtractor, items_for
from tests.tiny_models import build_tiny_encoder

REPO = Path(__file__).resolve().parents[2]
ROWS = [(f"prompt {i} " + "context " * (i % 7), None, f"response {i} " + "words " * (i * 3 % 11)) for i in range(12)]


@pytest.fixture
def setup(tmp_path: Path):
    enc = build_tiny_encoder(tmp_path / "enc")
    s = Settings(home=tmp_path / "home", db_url="sqlite://", model_dirs=(tmp_path,))
    return s, resolve_backbone(str(enc), s)


def test_computed_once_and_reused(setup, monkeypatch: pytest.MonkeyPatch) -> None:
    s, ref = setup
    events: list[dict] = []
    fx = FeatureExtractor(s, ref, max_length=64, batch_size=4)
    X = fx.features_for(ROWS, "rich", progress=events.append)
    assert X.shape == (12, 4 * fx.dim) and events[-1]["step"] == events[-1]["total"]
    # one (context, response), one response and one context text per row (12 distinct prompts)
    assert len(FeatureCache(s, ref, max_length=64)) == 36
    fx2 = FeatureExtractor(s, ref, max_length=64)
    calls = {"n": 0}
    orig = fx2.embed_ids

    def counting(*a, **kw):
        calls["n"] += 1
        return orig(*a, **kw)

    monkeypatch.setattr(fx2, "embed_ids", counting)
    X2 = fx2.features_for(ROWS, "rich")
    assert calls["n"] == 0 and np.array_equal(X, X2)  # a retrain reads everything from disk
    X3 = fx2.features_for(ROWS[:3] + [("new prompt", None, "new response")], "rich")
    assert calls["n"] == 1 and np.array_equal(X3[:3], X[:3])
    # other max_length / quantization: a separate cache
    assert FeatureCache(s, ref, max_length=32).dir != FeatureCache(s, ref, max_length=64).dir
    assert FeatureCache(s, ref, max_length=64, quantize=True).dir != FeatureCache(s, ref, max_length=64).dir


def test_sorting_and_batching_do_not_change_features(setup) -> None:
    s, ref = setup
    a = FeatureExtractor(s, ref, max_length=64, batch_size=5, sort_by_length=True).features_for(ROWS, "pair", use_cache=False)
    b = FeatureExtractor(s, ref, max_length=64, batch_size=1, sort_by_length=False).features_for(ROWS, "pair", use_cache=False)
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert not (s.cache_dir / "features").exists()  # use_cache=False writes nothing


def test_damaged_shard_is_ignored_and_recomputed(setup) -> None:
    s, ref = setup
    fx = FeatureExtractor(s, ref, max_length=64)
    X = fx.features_for(ROWS[:4], "pair")
    for shard in fx.cache.dir.glob("s-*.npz"):
        shard.write_bytes(b"garbage")
    again = FeatureExtractor(s, ref, max_length=64).features_for(ROWS[:4], "pair")
    np.testing.assert_allclose(again, X, atol=1e-6)


def test_several_processes_write_the_same_cache(setup) -> None:
    s, ref = setup
    script = textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {str(REPO)!r})
        torch.set_num_threads(1)
        from pathlib import Path
        from db.config import Settings
        from rm_engine.backbone import resolve_backbone
        from rm_engine.head.features import FeatureExtractor
        s = Settings(home=Path({str(s.home)!r}), db_url="sqlite://", model_dirs=(Path({str(ref.path.parent)!r}),))
        rows = [(f"prompt {{i}}", None, f"response {{i}} " * (i % 5 + 1)) for i in range(int(sys.argv[1]), int(sys.argv[1]) + 30)]
        FeatureExtractor(s, resolve_backbone({str(ref.path)!r}, s), max_length=64, batch_size=4, shard_size=8).features_for(rows, "pair")
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(start)]) for start in (0, 15)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    cache = FeatureCache(s, ref, max_length=64)
    assert len(cache) == 45  # the overlap (15 texts) written by both, harmlessly
    assert not list(cache.dir.glob(".tmp-*"))
    keys = [it.key for i in range(45) for it in items_for(f"prompt {i}", None, f"response {i} " * (i % 5 + 1), "pair")]
    assert len(cache.get_many(keys)) == 45
