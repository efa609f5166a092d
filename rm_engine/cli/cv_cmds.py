"""``rmstudio cv``: K-fold cross-validated accuracy of a training configuration (nothing is published)."""
from __future__ import annotations

import argparse
from typing import Any

from rm_engine.cli.common import CLIError, open_db, pct, print_json, settings


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add the ``cv`` subcommand."""
    from rm_engine.cli.model_cmds import train_flags
    from rm_engine.crossval import MAX_FOLDS, MIN_FOLDS

    p = sub.add_parser("cv", help="cross-validated accuracy of a training configuration (publishes nothing)",
                       description="Train the configuration K times, each on K-1 folds of the prompts, and measure "
                                   "each model on the fold it did not see: every pair is held out once, so the "
                                   "pooled accuracy is a steadier estimate than one validation split (about +-3 "
                                   "points at a few hundred pairs). Runs here; takes the same flags as train.")
    p.add_argument("--folds", type=int, default=5, metavar="K", help=f"K folds, {MIN_FOLDS}-{MAX_FOLDS} (default 5)")
    train_flags(p)
    p.add_argument("--queue", action="store_true",
                   help="queue it for `rmstudio worker` (e.g. a GPU machine for finetune mode) instead of running "
                        "here; the Train page and `rmstudio jobs` show its result")
    p.add_argument("--json", action="store_true", help="print the pooled result and each fold as JSON")
    p.set_defaults(func=cmd_cv)


def cmd_cv(args: argparse.Namespace) -> int:
    """Cross-validate the configuration the flags describe on the stored labels."""
    from rm_engine.cli.model_cmds import phase_bars, train_config
    from rm_engine.crossval import cross_validate
    from rm_engine.training import load_pair_set

    cfg = train_config(args)
    if args.queue:
        return _queue(cfg, args)
    on_progress, close = phase_bars()

    def on_fold(f: dict[str, Any]) -> None:
        close()  # the fold's bars end here; the next fold draws its own
        if not args.json:
            print(f"fold {f['fold'] + 1}/{f['k']}: held-out accuracy {pct(f['accuracy'])} on {f['n_held_out']} "
                  f"pairs (train {pct(f['train_accuracy'])}, {f['n_train']} pairs, {f['seconds']:.1f} s)", flush=True)

    db = open_db()
    try:
        ps = load_pair_set(db, cfg)
        res = cross_validate(settings(), cfg, ps, args.folds, progress=on_progress, on_fold=on_fold)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    finally:
        close()
        db.dispose()
    if args.json:
        print_json(res)
        return 0
    se = f" +- {100 * res['std_error']:.1f} points" if res["std_error"] is not None else ""
    print(f"cross-validated accuracy {pct(res['accuracy'])}{se} over {res['n']} held-out pairs "
          f"({res['k']} folds of {res['n_prompts']} prompts; folds {pct(res['fold_min'])}-{pct(res['fold_max'])}): "
          f"{res['band']['message']}")
    sigma = res["sigma_above_chance"]
    if sigma is not None and "standard errors" not in res["band"]["message"]:  # the band may have said it already
        print(f"  {sigma:.1f} standard errors above chance (50%)" if sigma >= 2 else
              f"  not distinguishable from chance (50%) at this size ({sigma:.1f} standard errors)")
    for source, m in res["per_source"].items():
        print(f"  {source}: {pct(m['accuracy'])} on {m['n']} pairs")
    print(res["advice"])
    return 0


def _queue(cfg: Any, args: argparse.Namespace) -> int:
    from rm_engine.crossval import MAX_FOLDS, MIN_FOLDS

    if not MIN_FOLDS <= args.folds <= MAX_FOLDS:
        raise CLIError(f"--folds must be between {MIN_FOLDS} and {MAX_FOLDS}, got {args.folds}")
    from db.jobs import enqueue
    from db.models import JobKind

    db = open_db()
    try:
        with db.write() as s:
            job = enqueue(s, JobKind.cv, {**cfg.to_dict(), "folds": args.folds}, created_by="cli")
            job_id = job.id
    finally:
        db.dispose()
    if args.json:
        print_json({"job_id": job_id, "queued": True})
    else:
        print(f"queued cross-validation job {job_id}; `rmstudio worker` runs it, `rmstudio jobs` shows its result")
    return 0
