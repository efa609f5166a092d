"""How full the finetune trainer's steps are on the HH-harmless pairs: padded plans vs packed rows (no GPU needed).

    python bench/pack_fill.py [--max-length 1024] [--budgets 4096,32768]

The token lengths are those ``bench/gpu_train.py`` trains its Qwen2-shaped models on (MiniLM's tokenizer as a
decoder: [SEP] ends each sequence, right padding). For each token budget it prints the share of the token slots a
step pays for that hold real tokens (chosen + rejected), over one epoch of the seed-0 plan:

* ``padded``: ``plan_batches`` (pairs of similar length; a pair is two rows padded to its longer side, the batch
  to its longest pair), what the trainer runs without ``--packing`` and with ``--packing`` under DDP;
* ``packed``: ``plan_packed`` (random pairs filling a ``[1, budget]`` row), what one ``--packing`` process runs;
  ``packed, full rows`` leaves out the epoch's last, partial row.

Compute scales with slots, so the ratio packed/padded is the speed-up packing can give at equal cost per token
(attention, quadratic within a sequence, is the same either way). Run by hand, not in CI.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--budgets", default="4096,32768")
    args = ap.parse_args(argv)

    from gpu_setup import encode, minilm_tokenizer
    from hh_data import DEFAULT, load_hh

    from rm_engine.finetune.batching import BatchPlanConfig, padded_tokens, plan_batches, plan_packed

    chosen, rejected = encode(minilm_tokenizer(decoder=True), load_hh(DEFAULT), args.max_length, decoder=True)
    longer = [max(len(a), len(b)) for a, b in zip(chosen, rejected)]
    sizes = [len(a) + len(b) for a, b in zip(chosen, rejected)]
    real = sum(sizes)
    rows = []
    for budget in (int(b) for b in args.budgets.split(",")):
        padded = plan_batches(longer, BatchPlanConfig(batch_tokens=budget), seed=0)
        packed = plan_packed(sizes, budget, seed=0)
        full = packed[:-1] or packed
        row = {"budget": budget, "pairs": len(sizes), "mean_tokens_per_sequence": round(real / (2 * len(sizes)), 1),
               "padded_steps": len(padded), "padded_fill": round(real / sum(padded_tokens(b, longer) for b in padded), 3),
               "packed_steps": len(packed), "packed_fill": round(real / (budget * len(packed)), 3),
               "packed_fill_full_rows": round(sum(sizes[i] for b in full for i in b) / (budget * len(full)), 3)}
        row["packed_over_padded"] = round(row["packed_fill"] / row["padded_fill"], 3)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| budget | padded: steps, real share | packed: steps, real share (full rows) | packed/padded |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['budget']} | {r['padded_steps']}, {r['padded_fill']} | {r['packed_steps']}, {r['packed_fill']} "
              f"({r['packed_fill_full_rows']}) | {r['packed_over_padded']} |")
    return {"rows": rows}


if __name__ == "__main__":
    main()
