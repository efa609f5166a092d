"""``rmstudio plan-memory``: what a fine-tune needs per GPU, by strategy, before anything is loaded."""
from __future__ import annotations

import argparse

from cli.common import CLIError, bounded_type, field_flag, print_json, settings
from db.bounds import Bound
from rm_engine.backbone import BackboneError, load_config, resolve_backbone
from rm_engine.config import STRATEGIES, TrainConfig
from rm_engine.finetune.memory_plan import GIB, DoesNotFit, fit_plan, model_shape, plan_memory, step_tokens

#: ``--gpu-memory``: GiB per GPU.
GPU_GIB = Bound(1, 4096)
PLAN_FIELDS = ("backbone", "gpus", "lora", "lora_r", "batch_tokens", "grad_checkpointing")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``plan-memory``."""
    p = sub.add_parser(
        "plan-memory", help="GPU memory a fine-tune needs per GPU, for each strategy (ddp, fsdp, fsdp-offload)",
        description="Weights, gradients, optimizer state, gathered layers and activations per GPU of a fine-tune, "
                    "for each strategy, from the model's config alone (no weights are read), and what would fit: "
                    "activation checkpointing first, then a smaller token budget.")
    for name in PLAN_FIELDS:
        field_flag(p, TrainConfig, name)
    p.add_argument("--gpu-memory", dest="gpu_memory", type=bounded_type(GPU_GIB), metavar="GIB",
                   help="memory per GPU in GiB (default: this machine's first GPU, else 80)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plan_memory)


def _gpu_gib() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory / GIB
    return 80.0


def cmd_plan_memory(args: argparse.Namespace) -> int:
    """One column per strategy: the plan as asked, then what fits."""
    cfg = TrainConfig.from_args(args, base=TrainConfig(mode="finetune"))
    try:
        ref = resolve_backbone(cfg.backbone, settings())
    except BackboneError as exc:
        raise CLIError(f"--backbone: {exc}") from None
    shape = model_shape(load_config(ref), lora_r=cfg.lora_r)
    gib = float(args.gpu_memory) if args.gpu_memory is not None else _gpu_gib()
    tokens = step_tokens(cfg)
    plans, fits = {}, {}
    for strategy in STRATEGIES if cfg.gpus > 1 else ("ddp",):
        plans[strategy] = plan_memory(shape, strategy=strategy, world=cfg.gpus, lora=cfg.lora, batch_tokens=tokens,
                                      checkpointing=cfg.grad_checkpointing)
        try:
            fits[strategy] = fit_plan(shape, gib * GIB, strategy=strategy, world=cfg.gpus, lora=cfg.lora,
                                      batch_tokens=tokens, checkpointing=cfg.grad_checkpointing)[1]
        except DoesNotFit as exc:
            fits[strategy] = str(exc)
    if args.json:
        print_json({"backbone": ref.path.name, "params": shape.params, "trainable": shape.trainable(cfg.lora),
                    "gpus": cfg.gpus, "gpu_gib": gib, "batch_tokens": tokens,
                    "plans": {k: {**dict(p.rows()), "fits": p.total <= gib * GIB} for k, p in plans.items()},
                    "to_fit": {k: list(v) if isinstance(v, tuple) else None for k, v in fits.items()},
                    "does_not_fit": {k: v for k, v in fits.items() if isinstance(v, str)}})
        return 0
    kind = "LoRA" if cfg.lora else "full"
    print(f"{ref.path.name}: {shape.params / 1e9:.2f}B parameters, {kind} fine-tune ({shape.trainable(cfg.lora) / 1e6:,.1f}M "
          f"trained), {cfg.gpus} GPU{'s' if cfg.gpus > 1 else ''} of {gib:.0f} GiB, {tokens} tokens per step per GPU, "
          f"checkpointing {'on' if cfg.grad_checkpointing else 'off'}")
    print(f"{'GiB per GPU':16s}" + "".join(f"{k:>14s}" for k in plans))
    for i, (name, _) in enumerate(next(iter(plans.values())).rows()):
        print(f"{name:16s}" + "".join(f"{p.rows()[i][1]:>14.1f}" for p in plans.values()))
    for k, v in fits.items():
        if isinstance(v, str):
            print(f"{k}: does not fit: {v}")
        else:
            print(f"{k}: {'fits as asked' if not v else 'fits with ' + ', '.join(v)}")
    return 0
