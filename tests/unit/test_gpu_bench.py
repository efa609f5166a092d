"""The GPU benchmark's plumbing that runs before any GPU work: the MiniLM pack taken to an offline GPU machine, and
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


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"rmstudio_bench_{name}", REPO / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture()
def bench(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(sys, "path", list(sys.path))  # the bench modules put bench/ on sys.path
    return _load("gpu_pack"), _load("gpu_train")


def test_minilm_pack_round_trip_is_exact_on_kept_tokens(tmp_path: Path, bench) -> None:
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


def test_a_failing_section_is_recorded_and_the_run_goes_on(tmp_path: Path, bench) -> None:
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


def test_ratios_use_the_fastest_variant_that_ran(bench) -> None:
    _, gpu_train = bench
    row = {"a_trl_default": {"pairs_per_s": 40.0}, "b_trl_no_ckpt": {"pairs_per_s": 100.0},
           "c_rmstudio": {"pairs_per_s": 250.0}, "c2_rmstudio_compile": {"error": "x"},
           "c3_rmstudio_packed_compile": {"pairs_per_s": 400.0}}
    gpu_train.summarize(row)
    assert row["best_rmstudio"] == "c3_rmstudio_packed_compile"
    assert row["ratio_c_over_b"] == pytest.approx(2.5) and row["ratio_best_over_b"] == pytest.approx(4.0)
    assert row["ratio_c_over_a"] == pytest.approx(6.25) and row["ratio_best_over_a"] == pytest.approx(10.0)


def test_sections_run_most_needed_first(tmp_path: Path, bench, monkeypatch: pytest.MonkeyPatch) -> None:
    """The order a deadline cuts from the end of: the 0.5B rows, accuracy split 0, the 1.5B plain rows, the other
    splits, the 1.5B compiled row, the optional 0.5B rows (c3, p3's profile, c4, ...) (no model is built or trained here)."""
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
        ("0.5b", "b_trl_no_ckpt", "c_rmstudio", "c5_rmstudio_packed_compile_varlen", "a_trl_default"),
        ("accuracy", 0),
        ("1.5b", "b_trl_no_ckpt", "c_rmstudio", "a_trl_default"),
        ("accuracy", 1), ("accuracy", 2),
        ("1.5b", "c3_rmstudio_packed_compile"),
        ("0.5b", "c3_rmstudio_packed_compile", "p3_profile_c3", "c4_rmstudio_packed_compile_2x", "c2_rmstudio_compile",
         "d_rmstudio_random16"),
    ]
    assert [report[k]["split_seed"] for k in ("accuracy", "accuracy_seed1", "accuracy_seed2")] == [0, 1, 2]


def test_cross_validation_holds_every_pair_out_once_and_pools(tmp_path: Path, bench,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """--acc-folds K: K accuracy sections on prompt folds (no prompt on both sides, every pair held out once), pooled
    by counts into accuracy_cv after each fold (the fake trainers get right the pairs whose prompt number is even)."""
    from types import SimpleNamespace

    _, gpu_train = bench
    pairs = [SimpleNamespace(prompt=f"p{i % 7}", n=i % 7) for i in range(20)]  # 7 prompts, 20 pairs
    held_sets: list[list] = []

    def fake_section(args, pairs_, settings, home, seed, trl_ok, split=None):
        train, held = split
        assert not {p.prompt for p in train} & {p.prompt for p in held}
        held_sets.append(held)
        acc = sum(p.n % 2 == 0 for p in held) / len(held)
        return {"held_out_pairs": len(held), "rmstudio": {"accuracy": acc}, "trl": {"accuracy": 0.5}}

    monkeypatch.setattr(gpu_train, "ensure_trl", lambda wheels: "present")
    monkeypatch.setattr(gpu_train, "load_data", lambda args: pairs)
    monkeypatch.setattr(gpu_train, "resolve_minilm", lambda arg, scratch: (tmp_path, None))
    monkeypatch.setattr(gpu_train, "accuracy_section", fake_section)
    report = gpu_train.main(["--only-accuracy", "--acc-folds", "3", "--out", str(tmp_path / "r.json")])
    assert sorted(id(p) for h in held_sets for p in h) == sorted(map(id, pairs))
    cv = report["accuracy_cv"]
    even = sum(p.n % 2 == 0 for p in pairs)
    assert cv["k"] == 3 and cv["folds_done"] == 3 and cv["held_out_pairs"] == 20
    assert cv["rmstudio"]["accuracy"] == pytest.approx(even / 20) and cv["trl"]["held_out_pairs"] == 20
    assert [f["fold"] for f in report["accuracy_folds"]] == [0, 1, 2]
    assert json.loads((tmp_path / "r.json").read_text())["accuracy_cv"]["rmstudio"]["accuracy"] == pytest.approx(even / 20)


@pytest.mark.parametrize("kernel,kind", [
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64", "matmul"),
    ("nvjet_tst_256x128_64x4_1x2_h_bz_coopA_NTT", "matmul"),
    ("aten::addmm", "matmul"),
    ("flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128, 128, 4>>", "attention"),
    ("triton_tem_fused_flex_attention_backward_3", "attention"),
    ("triton_red_fused__to_copy_add_mean_mul_pow_rsqrt_7", "inductor fused"),
    ("void at::native::multi_tensor_apply_kernel<FusedAdamWMathFunctor>", "optimizer"),
    ("Memcpy HtoD (Pinned -> Device)", "copy/fill"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>>", "copy/fill"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>>", "elementwise (eager)"),
    ("some_new_kernel", "other"),
])
def test_profile_categorizes_kernels_by_name(kernel: str, kind: str) -> None:
    assert _load("gpu_profile").categorize(kernel) == kind


def test_profile_breakdown_sums_kernels_per_name_and_kind() -> None:
    gp = _load("gpu_profile")
    rep = gp.breakdown([("aten::mm", 0.3), ("aten::mm", 0.3), ("flash_fwd_kernel", 0.2), ("aten::mul", 0.2),
                        ("idle", 0.0)], window_s=2.0, top=2)
    assert rep["kernel_time_s"] == pytest.approx(1.0) and rep["device_busy_share"] == pytest.approx(0.5)
    assert {k: round(v["share"], 6) for k, v in rep["categories"].items()} == \
        {"matmul": 0.6, "attention": 0.2, "elementwise (eager)": 0.2}
    assert list(rep["categories"])[0] == "matmul"  # largest first
    assert [t["name"] for t in rep["top_kernels"]] == ["aten::mm", rep["top_kernels"][1]["name"]]
    assert rep["top_kernels"][0]["seconds"] == pytest.approx(0.6) and len(rep["top_kernels"]) == 2
    assert gp.breakdown([], window_s=None)["device_busy_share"] is None


def test_step_profiler_records_only_its_window_of_steps() -> None:
    """On CPU: steps 0-1 are skipped and warm-up, steps 2-3 are recorded (matmuls), step 4 (additions) is not."""
    gp = _load("gpu_profile")
    a = torch.randn(64, 64)
    with gp.StepProfiler(cuda=False, wait=1, warmup=1, active=2) as sp:
        for step in range(6):
            assert sp.should_stop() is False
            for _ in range(3):
                (a @ a) if step in (2, 3) else (a + a)
    rep = sp.report()
    assert rep["steps"] == 2 and rep["window_s"] > 0
    assert "matmul" in rep["categories"] and "elementwise (eager)" not in rep["categories"]
    short = gp.StepProfiler(cuda=False, wait=1, warmup=1, active=2)
    with short:
        short.step()
    assert "needs 5" in short.report()["error"]
