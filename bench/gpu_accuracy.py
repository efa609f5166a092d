"""The accuracy section of ``bench/gpu_train.py``: MiniLM-L6 fine-tuned on one prompt split of the HH pairs by TRL
and by RM Studio (same epochs, learning rate and token ids), then RM Studio's variants (``ACC_VARIANTS``), each
scored on the same held-out pairs with strict ``>``."""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gpu_setup import MINILM, encode, minilm_dir, minilm_tokenizer, split_by_prompt
from gpu_trainers import run_ours, run_trl


def accuracy_of(scores_c: Any, scores_r: Any) -> float:
    import numpy as np

    return float(np.mean(np.asarray(scores_c) > np.asarray(scores_r)))


def trl_scores(model: Any, ids: list[list[int]], pad_id: int) -> Any:
    """Scores of a TRL-trained encoder on pre-tokenised rows (the same ids RM Studio scores)."""
    import torch

    from rm_engine.finetune.reward_net import RewardNet, collate

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
    "ens3": ("an ensemble of 3 main-row fine-tunes as `--ensemble 3` trains them (seeds 0-2, bootstrap resamples), "
             "scored by the members' mean",
             lambda a: {"batch_tokens": a.acc_batch_tokens, "batch_size": a.acc_batch, "max_pairs": a.acc_max_pairs,
                        "lr": a.acc_lr, "pooling": a.acc_pooling, "members": 3}),
}


def _train_variant(backbone: Path, train: list[Any], settings: Any, kw: dict[str, Any],
                   **common: Any) -> tuple[dict[str, Any], Callable[..., Any]]:
    """One variant: a single fine-tune, or ``kw["members"]`` of them weighted and seeded as the engine's ensemble
    members are; returns the (first member's) training record and a scorer of texts (the members' mean)."""
    import numpy as np

    members = int(kw.pop("members", 1))
    if members == 1:
        res, model = run_ours(backbone, train, settings, **kw, **common)
        return {**res, "pooling": model.meta.pooling}, model.score
    from rm_engine.config import TrainConfig
    from rm_engine.objective import member_weights, pair_weight

    cfg = TrainConfig(mode="finetune", ensemble=members, seed=0)
    weights = member_weights(cfg, [pair_weight(cfg, p) for p in train])
    runs = [run_ours(backbone, train, settings, seed=k, weights=w.tolist(), **kw, **common)
            for k, w in enumerate(weights)]
    res = {**runs[0][0], "pooling": runs[0][1].meta.pooling,
           "members_val_accuracy_per_epoch": [r[0]["val_accuracy_per_epoch"] for r in runs]}
    return res, lambda *a: np.mean([m.score(*a) for _, m in runs], axis=0)


def accuracy_section(args: argparse.Namespace, pairs: list[Any], settings: Any, home: Path, seed: int = 0,
                     trl_ok: bool = True, split: tuple[list[Any], list[Any]] | None = None) -> dict[str, Any]:
    """MiniLM (or, with --smoke, a tiny BERT with the MiniLM tokenizer) fine-tuned by TRL and by RM Studio on the
    same prompt split (20% of prompts held out, ``seed``; or ``split``, one fold of a cross-validation), same epochs
    and learning rate."""
    train, held = split or split_by_prompt(pairs, 0.2, seed=seed)
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
    if MINILM.get("kept") is not None and not args.smoke:
        from gpu_pack import check_ids

        check_ids(tr_ids[0] + tr_ids[1] + ho_ids[0] + ho_ids[1], MINILM["kept"])
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
        res, score = _train_variant(backbone, train, settings, dict(kw), epochs=args.acc_epochs, max_length=max_len,
                                    compile_=False, val=held)
        # scored from the texts, as `rmstudio score` would (rich pooling reads three sequences per response)
        out[f"rmstudio_{name}"] = {
            "accuracy": accuracy_of(score(prompts, hist, [p.chosen for p in held]),
                                    score(prompts, hist, [p.rejected for p in held])),
            "seconds": time.perf_counter() - t0, **kw,
            **{k: v for k, v in res.items() if k.endswith("val_accuracy_per_epoch") or k == "pooling"}}
    if "trl" in out:
        out["delta_points"] = 100 * (out["rmstudio"]["accuracy"] - out["trl"]["accuracy"])
    return out


def pooled_folds(folds: list[dict[str, Any]]) -> dict[str, Any]:
    """Cross-validation summary: per trainer, the held-out pairs each fold got right, pooled over the folds that
    finished (every pair is held out once, so with all folds this is an accuracy over the whole data set), with
    its standard error and the per-fold spread."""
    from rm_engine.metrics import accuracy_std_error

    done = [f for f in folds if isinstance(f, dict) and "rmstudio" in f]
    out: dict[str, Any] = {"folds_done": len(done), "folds": len(folds),
                           "held_out_pairs": sum(f["held_out_pairs"] for f in done)}
    for key in sorted({k for f in done for k in f if k == "trl" or k.startswith("rmstudio")}):
        got = [f for f in done if isinstance(f.get(key), dict)]
        n = sum(f["held_out_pairs"] for f in got)
        correct = sum(round(f[key]["accuracy"] * f["held_out_pairs"]) for f in got)
        accs = [f[key]["accuracy"] for f in got]
        acc = correct / n if n else float("nan")
        out[key] = {"accuracy": acc, "held_out_pairs": n, "std_error": accuracy_std_error(acc, n),
                    "fold_min": min(accs, default=None), "fold_max": max(accs, default=None)}
    if "trl" in out and "rmstudio" in out:
        out["delta_points"] = 100 * (out["rmstudio"]["accuracy"] - out["trl"]["accuracy"])
    return out
