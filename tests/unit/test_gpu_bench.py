"""The GPU benchmark's plumbing that runs before any GPU work: the MiniLM pack carried to the device machine, and
the per-section guard that keeps a run's numbers when one variant fails."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from tests.tiny_models import build_tiny_encoder

REPO = Path(__file__).resolve().parents[2]


def _load(name: str):  # noqa: ANN202 - a module
    spec = importlib.util.spec_from_file_location(f"rmstudio_bench_{name}", REPO / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture()
def bench(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    monkeypatch.setattr(sys, "path", list(sys.path))  # the bench modules put bench/ on sys.path
    return _load("gpu_pack"), _load("gpu_train")


def test_minilm_pack_round_trip_is_exact_on_kept_tokens(tmp_path: Path, bench) -> None:  # noqa: ANN001
    gpu_pack, _ = bench
    from transformers import AutoModel

    src = build_tiny_encoder(tmp_path / "enc")
    (src / "1_Pooling").mkdir()
    (src / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')  # decides the pooling
    keep = set(range(1000)) | {2023, 2003, 1037, 3231}  # "this is a test"
    gpu_pack.pack_minilm(src, tmp_path / "pack", keep)
    assert not (tmp_path / "pack" / "model.safetensors").exists()
    out, kept = gpu_pack.unpack_minilm(tmp_path / "pack", tmp_path / "unpacked")
    assert kept == frozenset(keep)
    assert (out / "1_Pooling" / "config.json").read_text() == '{"pooling_mode_mean_tokens": true}'
    a, b = AutoModel.from_pretrained(str(src)).eval(), AutoModel.from_pretrained(str(out)).eval()
    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 102]])
    with torch.no_grad():
        torch.testing.assert_close(a(input_ids=ids).last_hidden_state, b(input_ids=ids).last_hidden_state, rtol=0, atol=0)
    # a dropped row is zero, and inputs that would read one are refused
    assert b.embeddings.word_embeddings.weight[5000].abs().sum() == 0
    gpu_pack.check_ids([[101, 2023, 102]], kept)
    with pytest.raises(SystemExit, match="lacks embedding rows for 1"):
        gpu_pack.check_ids([[101, 5000, 102]], kept)


def test_a_failing_section_is_recorded_and_the_run_goes_on(tmp_path: Path, bench) -> None:  # noqa: ANN001
    _, gpu_train = bench
    report: dict = {"speed": {}}
    run = gpu_train.Run(report, tmp_path / "r.json", deadline_s=1e9)

    def boom() -> dict:
        raise RuntimeError("no kernel for this shape")

    run.section(report, "first", boom)
    run.section(report, "second", lambda: {"pairs_per_s": 2.0})
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["first"]["error"] == "RuntimeError: no kernel for this shape"
    assert saved["second"]["pairs_per_s"] == 2.0
    late = gpu_train.Run(report, tmp_path / "r.json", deadline_s=-1)
    assert late.section(report, "third", lambda: {"pairs_per_s": 1.0}) is None
    assert "deadline" in report["third"]["skipped"]


def test_ratios_use_the_fastest_variant_that_ran(bench) -> None:  # noqa: ANN001
    _, gpu_train = bench
    row = {"a_trl_default": {"pairs_per_s": 40.0}, "b_trl_no_ckpt": {"pairs_per_s": 100.0},
           "c_rmstudio": {"pairs_per_s": 250.0}, "c2_rmstudio_compile": {"error": "x"},
           "c3_rmstudio_packed_compile": {"pairs_per_s": 400.0}}
    gpu_train.summarize(row)
    assert row["best_rmstudio"] == "c3_rmstudio_packed_compile"
    assert row["ratio_c_over_b"] == pytest.approx(2.5) and row["ratio_best_over_b"] == pytest.approx(4.0)
    assert row["ratio_c_over_a"] == pytest.approx(6.25) and row["ratio_best_over_a"] == pytest.approx(10.0)


def test_sections_run_most_needed_first(tmp_path: Path, bench, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """The order a deadline cuts from the end of: the 0.5B rows, accuracy split 0, the 1.5B plain rows, the other
    splits, the 1.5B compiled row, the optional 0.5B rows (no model is built or trained here)."""
    _, gpu_train = bench
    calls: list[tuple] = []
    monkeypatch.setattr(gpu_train, "ensure_trl", lambda wheels: "present")
    monkeypatch.setattr(gpu_train, "load_data", lambda args: [])
    monkeypatch.setattr(gpu_train, "resolve_minilm", lambda arg, scratch: (tmp_path, None))
    monkeypatch.setattr(gpu_train, "build_random_model", lambda root, shape, tok: (tmp_path / shape, 1))
    monkeypatch.setattr(gpu_train, "encode", lambda tok, pairs, n, decoder: ([[1]], [[1]]))
    monkeypatch.setattr(gpu_train, "_dtok", lambda: None)
    monkeypatch.setattr(gpu_train, "speed_rows", lambda run, row, model_dir, pairs, ids, settings, args, which:
                        calls.append((model_dir.name, *which)))
    monkeypatch.setattr(gpu_train, "accuracy_section", lambda args, pairs, settings, home, seed, trl_ok:
                        calls.append(("accuracy", seed)) or {"split_seed": seed})
    report = gpu_train.main(["--sizes", "0.5b,1.5b", "--out", str(tmp_path / "r.json")])
    assert calls == [
        ("0.5b", "b_trl_no_ckpt", "c_rmstudio", "c3_rmstudio_packed_compile", "c5_rmstudio_packed_compile_varlen",
         "c4_rmstudio_packed_compile_2x", "a_trl_default"),
        ("accuracy", 0),
        ("1.5b", "b_trl_no_ckpt", "c_rmstudio", "a_trl_default"),
        ("accuracy", 1), ("accuracy", 2),
        ("1.5b", "c3_rmstudio_packed_compile"),
        ("0.5b", "c2_rmstudio_compile", "d_rmstudio_random16"),
    ]
    assert [report[k]["split_seed"] for k in ("accuracy", "accuracy_seed1", "accuracy_seed2")] == [0, 1, 2]
