"""``rmstudio cv``: K-fold cross-validated accuracy of a training configuration (nothing is published)."""
from __future__ import annotations

import argparse
from typing import Any

from cli.common import CLIError, bounded_type, open_db, pct, print_json, settings
from cli.model_cmds import phase_bars, queueable, train_config, train_flags
from db.bounds import Bound
from db.jobs import enqueue
from db.models import JobKind
from rm_engine.config import MAX_FOLDS, MIN_FOLDS, parse_override


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``cv`` subcommand."""
    p = sub.add_parser("cv", help="cross-validated accuracy of a training configuration (publishes nothing)",
                       description="Train the configuration K times, each on K-1 folds of the prompts, and measure "
                                   "each model on the fold it did not see: every pair is held out once, so the "
                                   "pooled accuracy is a steadier estimate than one validation split (about +-3 "
                                   "points at a few hundred pairs). Runs here; takes the same flags as train.")
    p.add_argument("--folds", type=bounded_type(Bound(MIN_FOLDS, MAX_FOLDS, integer=True)), default=5, metavar="K",
                   help=f"K folds, {MIN_FOLDS}-{MAX_FOLDS} (default 5)")
    train_flags(p)
    p.add_argument("--vs", action="append", default=[], metavar="FIELD=VALUE",
                   help="also cross-validate the settings with this change (repeat for several, e.g. --vs head=mlp "
                        "--vs weight-decay=1) on the same folds, and compare the two pair by pair")
    p.add_argument("--queue", action="store_true",
                   help="queue it for `rmstudio worker` (e.g. a GPU machine for finetune mode) instead of running "
                        "here; the Train page and `rmstudio jobs` show its result")
    p.add_argument("--json", action="store_true", help="print the pooled result and each fold as JSON")
    p.set_defaults(func=cmd_cv)


def cmd_cv(args: argparse.Namespace) -> int:
    """Cross-validate the configuration the flags describe on the stored labels."""
    from rm_engine.crossval import compare_configs, cross_validate, fold_line
    from rm_engine.training import load_pair_set

    cfg = train_config(args)
    other = _changed(cfg, args.vs) if args.vs else None
    if args.queue:
        if other is not None:
            raise CLIError("--vs runs here (the comparison needs both runs' pairs): queue each setting on its own")
        return _queue(queueable(cfg), args)
    on_progress, close = phase_bars()

    def on_fold(f: dict[str, Any]) -> None:
        close()  # the fold's bars end here; the next fold draws its own
        if not args.json:
            tag = f"{f['config'].upper()} " if "config" in f else ""
            print(tag + fold_line(f), flush=True)

    db = open_db()
    try:
        ps = load_pair_set(db, cfg)
        if other is not None:
            res = compare_configs(settings(), cfg, other, ps, args.folds, progress=on_progress, on_fold=on_fold)
        else:
            res = cross_validate(settings(), cfg, ps, args.folds, progress=on_progress, on_fold=on_fold)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    finally:
        close()
        db.dispose()
    if args.json:
        print_json({**res, "vs": args.vs} if other is not None else res)
        return 0
    if other is not None:
        return _print_comparison(res, args.vs)
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
    from rm_engine.crossval import check_folds

    try:
        check_folds(args.folds)  # before queueing: the worker would only find out later
    except ValueError as exc:
        raise CLIError(str(exc)) from None

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


def _changed(cfg: Any, overrides: list[str]) -> Any:
    """``cfg`` with each ``--vs FIELD=VALUE`` applied (a CLIError naming a bad one)."""

    try:
        return cfg.replace(**dict(parse_override(o) for o in overrides))
    except (ValueError, TypeError) as exc:
        raise CLIError(f"--vs: {exc}") from None


def _print_comparison(res: dict[str, Any], vs: list[str]) -> int:
    a, b, d = res["a"], res["b"], res["paired"]
    for tag, r, what in (("A", a, "the settings as given"), ("B", b, "with " + ", ".join(vs))):
        se = f" +- {100 * r['std_error']:.1f}" if r["std_error"] is not None else ""
        print(f"{tag} ({what}): cross-validated accuracy {pct(r['accuracy'])}{se} over {r['n']} held-out pairs")
    if d["difference"] is None:
        print("no held-out pairs to compare")
        return 0
    se, z = d["std_error"], d["z"]
    verdict = ("B is better" if z >= 2 else "A is better" if z <= -2 else "not distinguishable at this size") \
        if z is not None else "they rank every held-out pair the same way"
    se_txt = f" +- {100 * se:.1f}" if se is not None else ""
    z_txt = f", z {z:.1f}" if z is not None else ""
    print(f"B - A: {100 * d['difference']:+.1f} points{se_txt} (paired on the same {d['n']} pairs and "
          f"{res['k']} folds{z_txt}): {verdict}")
    print(f"  pairs only A ranked right: {d['a_only']}; only B: {d['b_only']}")
    return 0
