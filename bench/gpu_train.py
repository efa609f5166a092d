#!/usr/bin/env python
"""GPU reward-model training benchmark: TRL's RewardTrainer vs RM Studio's finetune trainer.

One run, one GPU, the same data, the same random-weight model:

* speed, for a Qwen2-0.5B-shaped model (and ``--sizes 0.5b,1.5b`` for a 1.5B one) built from a config with random
  weights, on the real token lengths of the HH-harmless pairs (``hh_harmless_1300.jsonl.gz``, ``--data``,
  tokenised the way RM Studio tokenises them, and handed to TRL already tokenised, so both see the same ids):
  (a) TRL RewardTrainer with its defaults (gradient checkpointing on), (b) TRL with gradient checkpointing off,
  (c) RM Studio (token-budget batches of similar length, one forward pass per pair, bf16 autocast, fused AdamW),
  and (d) RM Studio with random fixed-size batches (what length grouping buys). Reported: pairs/s, real
  (non-pad) tokens/s, MFU = 6 x non-embedding params x real tokens/s / peak bf16 FLOP/s, peak memory, and the
  ratios c/a and c/b; the packed rows c3-c5 (``SPEED_ROWS``; c3/c4 flex attention, c5 torch's varlen flash, the
  default on CUDA) and ``p3``, the default packed configuration's steady-state steps profiled by kernel kind
  (``bench/gpu_profile.py``: matmul, attention, inductor-fused, optimizer, copies; device busy share);
* accuracy: the bundled MiniLM-L6 fine-tuned on the HH pairs by TRL and by RM Studio with the same epochs and
  learning rate, evaluated on the same held-out pairs (split by prompt, seeded; or ``--acc-folds K``: K-fold
  cross-validation by prompt, every pair held out once, pooled), strict ``>``; then RM Studio's
  variants (``--acc-variants``: rich pooling, LoRA at its own rate) on the same split.

Modules: this one runs the sections (rows, deadline, report, table); ``gpu_setup`` (shapes, wheels, data, MiniLM,
random-weight models, memory counters), ``gpu_trainers`` (TRL's and RM Studio's trainers as the rows call them),
``gpu_accuracy`` (the accuracy section), ``gpu_profile`` (the p3 row's kernel-time profile).

Prints one JSON document (also written to ``--out``) and a table. Needs nothing from the network: when ``trl`` or
``datasets`` are missing it installs them from local wheel files (``--wheels DIR``, ``$RMSTUDIO_WHEELS``,
``bench/wheels``, ``/opt/pypi/files`` or ``/opt/wheels``) with ``pip --no-index``.

    python bench/gpu_train.py                      # on the GPU machine, about 3-5 minutes
    python bench/gpu_train.py --smoke --out x.json # tiny shapes, a few steps, any CPU (tested in make test)

Memory: RM Studio's 0.5B run with the default 32k-token budget needs about 60 GB (fp32 weights and AdamW states
~8 GB, bf16 activations ~50 GB without checkpointing); on an 80 GB H100 use ``--batch-tokens 16384`` if it runs out.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

# main() calls these through this module's names (tests replace them here)
from gpu_accuracy import ACC_VARIANTS, accuracy_section, pooled_folds  # noqa: E402
from gpu_setup import (  # noqa: E402
    MINILM,
    build_random_model,
    device_info,
    encode,
    ensure_trl,
    kfold_by_prompt,
    load_data,
    minilm_tokenizer,
    reset_memory,
    resolve_minilm,
)
from gpu_trainers import run_ours, run_trl  # noqa: E402

# Every row (the table's order); RM Studio's start with "c"
SPEED_ROWS = ("a_trl_default", "b_trl_no_ckpt", "c_rmstudio", "c2_rmstudio_compile", "c3_rmstudio_packed_compile",
              "c5_rmstudio_packed_compile_varlen", "c4_rmstudio_packed_compile_2x", "d_rmstudio_random16",
              "p3_profile_c3")


def profile_c3(model_dir: Path, pairs: list[Any], settings: Any, args: argparse.Namespace,
               ours_kw: dict[str, Any]) -> dict[str, Any]:
    """The default packed configuration (on CUDA since 2026-11-27: varlen, c5; before: flex, c3) again, with a few
    steady-state steps under torch.profiler (bench/gpu_profile.py): where its device time goes, by kernel kind.
    On CPU (--smoke) uncompiled, operator CPU time instead."""
    import torch
    from gpu_profile import StepProfiler

    cuda = torch.cuda.is_available()
    window = dict(wait=3, warmup=1, active=5) if cuda else dict(wait=0, warmup=1, active=1)
    with StepProfiler(cuda=cuda, **window) as sp:
        run_ours(model_dir, pairs, settings, batch_tokens=args.batch_tokens, compile_=cuda, packing=True,
                 should_stop=sp.should_stop, **ours_kw)
    return sp.report()


class Run:
    """The report being built, saved after every section so a killed or failing run keeps what it measured."""

    def __init__(self, report: dict[str, Any], out: Path, deadline_s: float) -> None:
        self.report, self.out, self.t0, self.deadline_s = report, out, time.perf_counter(), deadline_s
        out.parent.mkdir(parents=True, exist_ok=True)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def save(self) -> None:
        self.out.write_text(json.dumps(self.report, indent=2, default=float) + "\n", encoding="utf-8")

    def section(self, where: dict[str, Any], key: str, fn: Any) -> Any:
        """``where[key] = fn()``; an exception (out of memory, a missing kernel, an API difference) is recorded as
        the section's result instead of ending the run; past the deadline the section is skipped."""
        if self.elapsed() > self.deadline_s:
            where[key] = {"skipped": f"deadline ({self.deadline_s:.0f} s) passed"}
            print(f"[{self.elapsed():6.0f}s] {key}: skipped (deadline)", flush=True)
            self.save()
            return None
        print(f"[{self.elapsed():6.0f}s] {key} ...", flush=True)
        t0 = time.perf_counter()
        try:
            value = fn()
        except Exception as exc:  # noqa: BLE001 - one failing variant must not lose the others' numbers
            value = {"error": f"{type(exc).__name__}: {str(exc)[:1500]}", "traceback": traceback.format_exc()[-3000:]}
            reset_memory()
        if isinstance(value, dict):
            value.setdefault("wall_s", round(time.perf_counter() - t0, 1))
        where[key] = value
        status = value.get("error", "ok") if isinstance(value, dict) else "ok"
        print(f"[{self.elapsed():6.0f}s] {key}: {status}", flush=True)
        self.save()
        return value


def halving_on_oom(fn: Any, budget: int, tries: int = 3) -> dict[str, Any]:
    """``fn(budget)``, halving the token budget when CUDA runs out of memory (recorded in the result)."""
    import torch

    for k in range(tries):
        try:
            res = fn(budget)
            if k:
                res["oom_halvings"] = k
            return res
        except torch.cuda.OutOfMemoryError:
            if k == tries - 1:
                raise
            reset_memory()
            budget //= 2
    raise AssertionError("unreachable")


# The 1.5B rows, in running order: TRL without checkpointing (fails fast when out of memory) first, the compile last
LARGE_ROWS = ("b_trl_no_ckpt", "c_rmstudio", "a_trl_default", "c3_rmstudio_packed_compile")


def speed_rows(run: Run, row: dict[str, Any], model_dir: Path, pairs: list[Any], ids: Any, settings: Any,
               args: argparse.Namespace, which: tuple[str, ...]) -> None:
    """The requested speed variants for one model shape, each guarded."""
    warm = 2 if args.smoke else 5
    trl_kw = dict(batch=args.trl_batch, steps=args.trl_steps + warm, warmup=warm, lr=1e-5)
    ours_kw = dict(batch_size=16, epochs=2, lr=1e-5, max_length=args.max_length)
    runs: dict[str, Any] = {
        "a_trl_default": lambda: run_trl(model_dir, _dtok(), ids, grad_ckpt=True, **trl_kw)[0],
        "b_trl_no_ckpt": lambda: run_trl(model_dir, _dtok(), ids, grad_ckpt=False, **trl_kw)[0],
        "c_rmstudio": lambda: halving_on_oom(lambda bt: run_ours(model_dir, pairs, settings, batch_tokens=bt,
                                                                 compile_=args.compile, **ours_kw)[0], args.batch_tokens),
        "c2_rmstudio_compile": lambda: halving_on_oom(lambda bt: run_ours(model_dir, pairs, settings, batch_tokens=bt,
                                                                          compile_=True, **ours_kw)[0], args.batch_tokens),
        # c3 at twice the token budget: the per-step costs (optimizer, clipping, the embedding's dense gradient)
        # spread over twice the tokens; the memory probe turns checkpointing on if the row does not fit
        "c4_rmstudio_packed_compile_2x": lambda: run_ours(model_dir, pairs, settings, batch_tokens=2 * args.batch_tokens,
                                                          compile_=True, packing=True, packed_attention="flex",
                                                          **ours_kw)[0],
        "c3_rmstudio_packed_compile": lambda: halving_on_oom(
            lambda bt: run_ours(model_dir, pairs, settings, batch_tokens=bt, compile_=True, packing=True,
                                packed_attention="flex", **ours_kw)[0],
            args.batch_tokens),
        # c3 with torch's varlen flash attention instead of flex_attention (rm_engine.finetune.varlen_attention)
        "c5_rmstudio_packed_compile_varlen": lambda: halving_on_oom(
            lambda bt: run_ours(model_dir, pairs, settings, batch_tokens=bt, compile_=True, packing=True,
                                packed_attention="varlen", **ours_kw)[0], args.batch_tokens),
        "p3_profile_c3": lambda: profile_c3(model_dir, pairs, settings, args, ours_kw),
        "d_rmstudio_random16": lambda: run_ours(model_dir, pairs, settings, batch_tokens=0, batch_size=args.trl_batch,
                                                epochs=2, lr=1e-5, max_length=args.max_length, compile_=False)[0],
    }
    for key in which:
        if key in ("a_trl_default", "b_trl_no_ckpt") and run.report["trl_install"].startswith("unavailable"):
            row[key] = {"skipped": run.report["trl_install"]}
            continue
        run.section(row, key, runs[key])
        r = row[key]
        if r and "tokens_per_s" in r:
            peak = run.report["device"]["peak_flops"]
            r["mfu"] = (6 * row["non_embedding_params"] * r["tokens_per_s"] / peak) if peak else None
    summarize(row)
    run.save()


def summarize(row: dict[str, Any]) -> None:
    """Ratios against TRL for the plain trainer (c) and for the fastest RM Studio variant that ran."""
    ok = lambda k: isinstance(row.get(k), dict) and "pairs_per_s" in row[k]  # noqa: E731
    ours = [k for k in SPEED_ROWS if k.startswith("c") and ok(k)]
    if ours:
        row["best_rmstudio"] = max(ours, key=lambda k: row[k]["pairs_per_s"])
    for base, tag in (("a_trl_default", "a"), ("b_trl_no_ckpt", "b")):
        if ok(base) and ok("c_rmstudio"):
            row[f"ratio_c_over_{tag}"] = row["c_rmstudio"]["pairs_per_s"] / row[base]["pairs_per_s"]
        if ok(base) and ours:
            row[f"ratio_best_over_{tag}"] = row[row["best_rmstudio"]]["pairs_per_s"] / row[base]["pairs_per_s"]


_DTOK: list[Any] = []


def _dtok() -> Any:
    if not _DTOK:
        _DTOK.append(minilm_tokenizer(decoder=True))
    return _DTOK[0]


def _dist_version(name: str) -> str | None:
    """An installed distribution's version, None when it is not installed (no import needed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny shapes and a few steps (runs on CPU)")
    ap.add_argument("--sizes", default="0.5b,1.5b", help="comma list of 0.5b,1.5b (1.5b runs after the 0.5B rows and the first accuracy split)")
    ap.add_argument("--data", default=None,
                    help="hh_harmless_1300.jsonl.gz: the first 1,300 pairs of HH-RLHF's harmless-base test file "
                    "(default: the real-data folder beside the checkout, as in tests/conftest.py)")
    ap.add_argument("--minilm", default=None, help="MiniLM folder or bench/gpu_pack.py pack (default: the package)")
    ap.add_argument("--limit", type=int, default=None, help="use the first N pairs")
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--trl-batch", type=int, default=16)
    ap.add_argument("--trl-steps", type=int, default=40)
    ap.add_argument("--batch-tokens", type=int, default=32768, help="halved automatically on out-of-memory")
    ap.add_argument("--compile", action="store_true", help="torch.compile RM Studio's model in row c too")
    ap.add_argument("--first", default="b_trl_no_ckpt,c_rmstudio,c5_rmstudio_packed_compile_varlen,a_trl_default",
                    help="the 0.5B rows run before the accuracy section (--smoke: without c5, compiling is slow on "
                         "CPU); c5 (packed rows, varlen flash attention, compiled) is RM Studio's fastest "
                         "configuration (38.7%% MFU on an H200; each compiled row costs ~80-110 s there)")
    ap.add_argument("--extras", default="c3_rmstudio_packed_compile,p3_profile_c3,c4_rmstudio_packed_compile_2x,"
                                        "c2_rmstudio_compile,d_rmstudio_random16",
                    help="the 0.5B rows run last (--smoke: p3 and d; p3 profiles the default packed configuration's "
                         "steps by kernel kind)")
    ap.add_argument("--no-accuracy", action="store_true")
    ap.add_argument("--only-accuracy", action="store_true")
    ap.add_argument("--acc-epochs", type=int, default=2)
    ap.add_argument("--acc-lr", type=float, default=2e-5)
    ap.add_argument("--acc-batch", type=int, default=8, help="TRL batch for the accuracy run")
    ap.add_argument("--acc-batch-tokens", type=int, default=4096, help="RM Studio budget for the accuracy run")
    ap.add_argument("--acc-max-pairs", type=int, default=8, help="RM Studio pairs cap for the accuracy run")
    ap.add_argument("--acc-pooling", choices=("auto", "cls", "mean"), default="auto",
                    help="RM Studio's pooling in the accuracy run (auto: mean for MiniLM; cls: TRL's)")
    ap.add_argument("--acc-variants", default="rich,lora",
                    help="comma list of RM Studio variants trained after the main row on each split (empty: none): "
                         f"{'; '.join(f'{k}: {v[0]}' for k, v in ACC_VARIANTS.items())}")
    ap.add_argument("--acc-seeds", default="0,1,2",
                    help="comma list of prompt-split seeds for the accuracy section (one split moves by +-3 points)")
    ap.add_argument("--acc-folds", type=int, default=0,
                    help="K >= 2: K-fold cross-validation grouped by prompt instead of --acc-seeds (each model trains "
                         "on (K-1)/K of the pairs, every pair is held out once; accuracy_cv pools the folds)")
    ap.add_argument("--deadline-s", type=float, default=240,
                    help="start no section after this many seconds (the default keeps a run under ~5 minutes; "
                         "the required rows a, b, c and the accuracy run come first)")
    ap.add_argument("--wheels", default=None, help="folder with trl/datasets wheels")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "gpu_train.json"))
    args = ap.parse_args(argv)
    bad_variants = {v.strip() for v in args.acc_variants.split(",") if v.strip()} - set(ACC_VARIANTS)
    if bad_variants:
        ap.error(f"--acc-variants: unknown {sorted(bad_variants)} (known: {', '.join(ACC_VARIANTS)})")
    unknown = {x.strip() for x in f"{args.first},{args.extras}".split(",") if x.strip()} - set(SPEED_ROWS)
    if unknown:
        ap.error(f"--first/--extras: unknown rows {sorted(unknown)} (known: {', '.join(SPEED_ROWS)})")
    if args.smoke:
        args.sizes, args.limit = "smoke", args.limit or 48
        args.trl_steps, args.trl_batch, args.batch_tokens, args.max_length = 4, 4, 4096, 256
        args.acc_epochs, args.acc_lr, args.acc_batch, args.acc_batch_tokens = 1, 1e-3, 4, 1024
        given = " ".join(argv or sys.argv)
        args.extras = "p3_profile_c3,d_rmstudio_random16" if "--extras" not in given else args.extras
        args.first = "b_trl_no_ckpt,c_rmstudio,a_trl_default" if "--first" not in given else args.first
        args.acc_seeds = "0" if "--acc-seeds" not in given else args.acc_seeds
    try:
        trl_status = ensure_trl(args.wheels)
    except (SystemExit, subprocess.CalledProcessError) as exc:
        trl_status = f"unavailable: {exc}"
    import torch
    import transformers

    from db.config import Settings

    if not torch.cuda.is_available():
        torch.set_num_threads(1 if args.smoke else min(4, os.cpu_count() or 1))
    dev = device_info()
    pairs = load_data(args)
    trl_version = _dist_version("trl") if not trl_status.startswith("unavailable") else None
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "device": dev, "smoke": args.smoke, "command": " ".join(sys.argv),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl_version,
                     "python": platform.python_version(), "cuda": torch.version.cuda},
        "trl_install": trl_status, "n_pairs": len(pairs), "speed": {},
    }
    run = Run(report, Path(args.out), args.deadline_s)
    with tempfile.TemporaryDirectory(prefix="rmstudio-bench-") as home_s:
        home = Path(home_s)
        MINILM["dir"], MINILM["kept"] = resolve_minilm(args.minilm, home)
        settings = Settings(home=home, db_url=f"sqlite:///{home / 'bench.db'}")
        shapes = [s.strip() for s in args.sizes.split(",") if s.strip()] if not args.only_accuracy else []
        built: dict[str, tuple[Path, Any]] = {}

        def prepare(shape: str) -> dict[str, Any]:
            model_dir, n_nonembed = build_random_model(home, shape, _dtok())
            ids = encode(_dtok(), pairs, args.max_length, decoder=True)
            built[shape] = (model_dir, ids)
            return {"non_embedding_params": n_nonembed,
                    "mean_tokens_per_sequence": sum(map(len, ids[0] + ids[1])) / (2 * len(pairs))}

        # Most important first: the 0.5B comparison the targets are about, then accuracy, then the extras.
        first = tuple(x.strip() for x in args.first.split(",") if x.strip())
        extras = tuple(x.strip() for x in args.extras.split(",") if x.strip())
        for shape in shapes[:1]:
            if run.section(report["speed"], shape, lambda shape=shape: prepare(shape)) and shape in built:
                speed_rows(run, report["speed"][shape], built[shape][0], pairs, built[shape][1], settings, args, first)
        folds = kfold_by_prompt(pairs, args.acc_folds) if args.acc_folds else []
        seeds = [] if args.no_accuracy else list(range(len(folds))) if folds else \
            [int(x) for x in args.acc_seeds.split(",") if x.strip()]

        def accuracy(seed: int) -> None:
            if folds:  # `seed` is the fold's index
                report.setdefault("accuracy_folds", [])
                run.section(report, "_fold", lambda: accuracy_section(args, pairs, settings, home, seed,
                                                                      trl_ok=trl_version is not None, split=folds[seed]))
                report["accuracy_folds"].append({"fold": seed, **report.pop("_fold")})
                report["accuracy_cv"] = {"k": len(folds), **pooled_folds(report["accuracy_folds"])}
                run.save()
                return
            key = "accuracy" if seed == 0 else f"accuracy_seed{seed}"
            run.section(report, key, lambda: accuracy_section(args, pairs, settings, home, seed,
                                                              trl_ok=trl_version is not None))

        # Then the first split's accuracy, the larger model's plain rows (required), the further split seeds
        # (~30 s each on an H100), the larger model's compiled row (its compile alone takes a minute or more),
        # and the optional 0.5B rows: a deadline drops the least needed sections.
        for seed in seeds[:1]:
            accuracy(seed)
        for shape in shapes[1:]:
            if run.section(report["speed"], shape, lambda shape=shape: prepare(shape)) and shape in built:
                speed_rows(run, report["speed"][shape], built[shape][0], pairs, built[shape][1], settings, args,
                           LARGE_ROWS[:3])
        for seed in seeds[1:]:
            accuracy(seed)
        for shape in shapes[1:]:
            if shape in built:
                speed_rows(run, report["speed"][shape], built[shape][0], pairs, built[shape][1], settings, args,
                           LARGE_ROWS[3:])
        for shape in shapes[:1]:
            if shape in built:
                speed_rows(run, report["speed"][shape], built[shape][0], pairs, built[shape][1], settings, args, extras)
    report["total_s"] = round(run.elapsed(), 1)
    run.save()
    print(json.dumps(report, indent=2, default=float))
    print(table(report))
    return report


def table(report: dict[str, Any]) -> str:
    """The human-readable summary."""
    lines = [f"device: {report['device']['name']}  ({report['date']}, torch {report['versions']['torch']}, "
             f"transformers {report['versions']['transformers']}, trl {report['versions']['trl']})"]
    for shape, row in report["speed"].items():
        if "non_embedding_params" not in row:
            lines.append(f"\nspeed, {shape}: {row.get('error') or row.get('skipped')}")
            continue
        lines.append(f"\nspeed, Qwen2-{shape}-shaped ({row['non_embedding_params'] / 1e6:.0f}M non-embedding), "
                     f"mean {row['mean_tokens_per_sequence']:.0f} tokens/sequence")
        lines.append(f"{'trainer':<30}{'pairs/s':>10}{'tokens/s':>12}{'MFU':>8}{'peak GB':>9}")
        for k in SPEED_ROWS:
            r = row.get(k)
            if not isinstance(r, dict):
                continue
            if "categories" in r:
                kinds = ", ".join(f"{c} {100 * v['share']:.0f}%" for c, v in r["categories"].items())
                busy = r.get("device_busy_share")
                lines.append(f"{k:<30}  busy {100 * busy:.0f}%: {kinds}" if busy is not None else f"{k:<30}  {kinds}")
                continue
            if "pairs_per_s" not in r:
                lines.append(f"{k:<30}  {(r.get('error') or r.get('skipped') or '')[:90]}")
                continue
            mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "-"
            mem = f"{r['peak_mem_gb']:.1f}" if r.get("peak_mem_gb") is not None else "-"
            lines.append(f"{k:<30}{r['pairs_per_s']:>10.1f}{r['tokens_per_s']:>12.0f}{mfu:>8}{mem:>9}")
        ratios = ", ".join(f"{k.removeprefix('ratio_').replace('_over_', '/')} = {v:.2f}" for k, v in row.items()
                           if k.startswith("ratio_"))
        lines.append(f"ratios: {ratios or '-'}" + (f"  (best: {row['best_rmstudio']})" if "best_rmstudio" in row else ""))
    for key, acc in report.items():
        if not key.startswith("accuracy") or not isinstance(acc, dict):
            continue
        if key == "accuracy_cv":
            lines.append(f"\n{key} ({acc['k']}-fold by prompt, {acc['folds_done']} folds done, "
                         f"{acc['held_out_pairs']} held-out pairs): " + "; ".join(
                             f"{k} {v['accuracy']:.3f} +- {v['std_error'] or 0:.3f} (folds {v['fold_min']:.3f}-"
                             f"{v['fold_max']:.3f})" for k, v in acc.items() if isinstance(v, dict)))
            continue
        if "rmstudio" not in acc:
            lines.append(f"\n{key}: {acc.get('error') or acc.get('skipped')}")
            continue
        trl_txt = f"TRL {acc['trl']['accuracy']:.3f}, " if "trl" in acc else ""
        delta = f" ({acc['delta_points']:+.1f} points)" if "delta_points" in acc else ""
        lines.append(f"\n{key} ({acc['backbone']}, split seed {acc['split_seed']}, {acc['train_pairs']} train / "
                     f"{acc['held_out_pairs']} held-out pairs, {acc['epochs']} epochs, lr {acc['lr']}): "
                     f"{trl_txt}RM Studio {acc['rmstudio']['accuracy']:.3f}{delta}"
                     + "".join(f"; {k[len('rmstudio_'):]} {v['accuracy']:.3f}" for k, v in acc.items()
                               if k.startswith("rmstudio_") and isinstance(v, dict)))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
