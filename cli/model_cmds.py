"""``rmstudio train``, ``eval`` and ``score``: the engine on the command line (``models``: version_cmds)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cli.common import CLIError, bounded_type, field_flag, open_db, pct, print_json, progress, settings
from db.bounds import Bound, FieldError
from db.formats import FormatError, parse_file
from db.formats.base import RowError
from db.jobs import enqueue
from db.models import JobKind
from db.versions import VersionNotFound, parse_version_ref
from rm_engine.config import COMBINE, MODES, TrainConfig, check_queueable, env_var, field_mode
from rm_engine.metrics import TEMPERATURE_BOUNDS
from rm_engine.versions.registry import ModelFilesError

#: ``--penalty``: the weight of the std in ``--combine uwo``.
PENALTY = Bound(0, 100)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``train``, ``eval`` and ``score`` subcommands."""
    p = sub.add_parser("train", help="train a reward model (queued for the worker, or --inline here)",
                       description="Train on the stored labels. Without --inline the run is queued for `rmstudio worker`; "
                                   "with --inline it trains in this process with a progress bar.")
    train_flags(p)
    p.add_argument("--inline", action="store_true", help="train in this process instead of queueing a job")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="measure a model on a labelled file (nothing is stored)")
    p.add_argument("file", help="any importable file (comparisons, rankings, HH-RLHF, TRL, mapped)")
    p.add_argument("--format", help="force the file format (default: detect; 'mixed' reads each line by its fields)")
    p.add_argument("--map", dest="mapping", help="field mapping for other layouts (as for import)")
    p.add_argument("--winner-values", dest="winner_values", help="winner column values (as for import)")
    p.add_argument("--winner-scale", dest="winner_scale", metavar="LOW:a,HIGH:b",
                   help="a numeric winner column (as for import)")
    model_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("score", help="score responses to a prompt")
    model_args(p)
    p.add_argument("--prompt", help="the prompt")
    p.add_argument("--response", action="append", default=[], help="a response (repeat for several)")
    p.add_argument("--file", help="JSONL of {prompt, response | responses, history?} lines")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_score)


def train_flags(p: argparse.ArgumentParser) -> None:
    """Every ``TrainConfig`` field as a flag (``--field-name``; ``TrainConfig.from_args`` reads them), built from the
    field's metadata (help, range or choices; switches also as ``--no-name``) and grouped by mode; shared by
    ``train`` and ``cv``."""
    groups = {None: p.add_argument_group("training options (both modes)"),
              **{mode: p.add_argument_group(f"{words} options") for mode, words in MODES.items()}}
    for f in dataclasses.fields(TrainConfig):
        field_flag(groups[field_mode(f)], TrainConfig, f.name)


def model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", action="append", default=None,
                   help="latest (default) or a version id; repeat to use several versions as one ensemble reward")
    p.add_argument("--combine", choices=COMBINE, default="mean",
                   help="several --model: mean z (default), min z (worst case) or uwo (mean z - penalty x std)")
    p.add_argument("--penalty", type=bounded_type(PENALTY), default=1.0,
                   help="--combine uwo: weight of the std over versions")


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig the train flags describe (a CLIError naming the bad flag or variable otherwise)."""
    try:
        return TrainConfig.from_args(args)
    except FieldError as exc:
        raise CLIError(f"{_origin(exc.field, args)}: {exc.reason} (got {exc.value!r})") from None
    except ValueError as exc:
        raise CLIError(str(exc)) from None


def _origin(field: str, args: argparse.Namespace) -> str:
    """Where a TrainConfig field's value came from: its flag, else its environment variable."""
    if getattr(args, field, None) is not None:
        return "--" + field.replace("_", "-")
    var = env_var(field)
    return var if os.environ.get(var) else f"TrainConfig.{field}"


def queueable(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` checked as the worker will check it (``config.check_queueable``), before it is queued."""
    try:
        return check_queueable(cfg, settings())
    except ValueError as exc:
        raise CLIError(f"--backbone: {exc}") from None


def cmd_train(args: argparse.Namespace) -> int:
    """Queue a training job, or train here with ``--inline``."""
    cfg = train_config(args)
    if not args.inline:
        queueable(cfg)  # the worker's own checks, before anything is stored
    db = open_db()
    try:
        if not args.inline:

            params = cfg.to_dict()
            if getattr(args, "gpus", None) is None and cfg.gpus == 1 and not os.environ.get(env_var("gpus")):
                del params["gpus"]  # not asked for: the worker's --gpus decides
            with db.write() as s:
                job = enqueue(s, JobKind.train, params=params, created_by="cli")
                job_id = job.id if job is not None else None
            if args.json:
                print_json({"job_id": job_id, "queued": job_id is not None})
            elif job_id is None:
                print("a training job is already queued; not adding another")
            else:
                print(f"queued training job {job_id}; run `rmstudio worker` to process it (or use --inline)")
            return 0
        return _train_inline(db, cfg, args.json)
    finally:
        db.dispose()


def phase_bars() -> tuple[Callable[[dict[str, Any]], None], Callable[[], None]]:
    """A training progress callback drawing one bar per phase (features, train, finetune, rescore) with the
    loss and validation accuracy, and the function that closes the bars."""
    bars: dict[str, Any] = {}

    def on_progress(ev: dict[str, Any]) -> None:
        phase = ev.get("phase", "")
        total = ev.get("total") or 0
        if phase not in ("features", "train", "finetune", "rescore") or not total:
            return
        bar = bars.get(phase)
        if bar is None:
            for other in bars.values():
                other.close()
            bar = bars[phase] = progress(total=total, desc=phase, unit="text" if phase == "features" else "step")
        bar.total = total
        bar.update(max(0, int(ev.get("step", 0)) - bar.n))
        post = {}
        if ev.get("loss") is not None:
            post["loss"] = f"{ev['loss']:.4f}"
        if ev.get("val_accuracy") is not None and ev["val_accuracy"] == ev["val_accuracy"]:
            post["val_acc"] = f"{ev['val_accuracy']:.3f}"
        if post:
            bar.set_postfix(post, refresh=False)

    def close() -> None:
        for bar in bars.values():
            bar.close()
        bars.clear()

    return on_progress, close


def _train_inline(db: Any, cfg: Any, as_json: bool) -> int:
    from rm_engine.training import train_and_publish

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:  # started by torchrun: one process per GPU, on this machine or several
        return _train_torchrun(db, cfg, world, as_json)
    on_progress, close = phase_bars()
    try:
        version = train_and_publish(db, settings(), cfg, progress=on_progress)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    finally:
        close()
    return _report(version, as_json)


def _train_torchrun(db: Any, cfg: Any, world: int, as_json: bool) -> int:
    """One rank of ``torchrun ... -m cli train --inline``: rank 0 trains and publishes as usual, handing each
    fine-tune to the other ranks (``rm_engine.finetune.ddp``), which take part and print nothing."""
    import torch.distributed as dist

    from rm_engine.finetune import ddp
    from rm_engine.training import train_and_publish

    if cfg.mode != "finetune":
        raise CLIError("--mode: a torchrun launch trains in fine-tune mode (head mode runs in one process)")
    ddp.init_from_env()
    try:
        if dist.get_rank() != 0:
            ddp.follow(settings())
            return 0
        on_progress, close = phase_bars()
        try:
            version = train_and_publish(db, settings(), cfg.replace(gpus=world), progress=on_progress)
        except ValueError as exc:  # the other ranks wait for a hand-off: this rank's exit makes torchrun stop them
            raise CLIError(str(exc)) from None
        finally:
            close()
        ddp.release()
        return _report(version, as_json)
    finally:
        dist.destroy_process_group()


def _report(version: Any, as_json: bool) -> int:
    """Print what a finished inline training published."""
    assert version is not None  # no publish guard here
    m = version.metrics
    if as_json:
        print_json({"model_version": version.id, "path": version.path, "metrics": _headline(m), "config": version.config})
    else:
        val, train = m.get("val", {}), m.get("train", {})
        print(f"model version {version.id}: train accuracy {pct(train.get('accuracy'))}, validation accuracy "
              f"{pct(val.get('accuracy'))} on {val.get('n', 0)} pairs ({(val.get('band') or {}).get('message', '')})")
        if m.get("test", {}).get("n"):
            print(f"  test split: accuracy {pct(m['test'].get('accuracy'))} on {m['test']['n']} pairs")
        if (m.get("overfitting") or {}).get("overfitting"):
            print(f"  warning: {m['overfitting']['message']}")
        if (val.get("length_bias") or {}).get("flag"):
            print(f"  warning: length bias: {val['length_bias']['message']}")
        if m.get("excluded"):
            print(f"  excluded: {', '.join(f'{k} {v}' for k, v in m['excluded'].items())}")
    return 0


def _headline(m: dict[str, Any]) -> dict[str, Any]:
    """Metrics without the bulky histograms (for --json output)."""
    drop = {"score_hist", "margins", "reliability"}
    out: dict[str, Any] = {}
    for k, v in m.items():
        if isinstance(v, dict) and k in ("train", "val", "test"):
            out[k] = {kk: vv for kk, vv in v.items() if kk not in drop}
        elif k == "training":
            out[k] = {kk: vv for kk, vv in v.items() if kk != "history"}
        else:
            out[k] = v
    return out


def _load_model(db: Any, ref: str, device: str = "cpu") -> Any:
    from rm_engine.serving.scoring import load_usable

    try:
        model = load_usable(db, settings(), ref, device=device)
    except (VersionNotFound, ModelFilesError, ValueError) as exc:
        raise CLIError(str(exc)) from None
    if model.fallback_message:
        print(f"warning: {model.fallback_message}", file=sys.stderr)
    return model


def load_scorer(db: Any, args: argparse.Namespace, device: str = "cpu") -> Any:
    """One ``--model``: that version (or the newest usable one before it, with a warning). Several: a
    ``VersionEnsemble`` of exactly those versions."""
    from rm_engine.serving.ensemble import VersionEnsemble

    refs = args.model or ["latest"]
    if len(refs) == 1:
        return _load_model(db, refs[0], device)
    try:
        return VersionEnsemble.load(db, settings(), [parse_version_ref(r) for r in refs], how=args.combine,
                                    penalty=args.penalty, device=device)
    except (VersionNotFound, ModelFilesError, ValueError) as exc:
        raise CLIError(str(exc)) from None


def cmd_eval(args: argparse.Namespace) -> int:
    """Score a labelled file and print accuracy, tie rate, per-source accuracy and Spearman."""
    from rm_engine.serving.scoring import evaluate_records

    if not Path(args.file).is_file():
        raise CLIError(f"{args.file}: no such file")
    try:
        items = list(parse_file(args.file, format=args.format, mapping=args.mapping, winner_values=args.winner_values,
                                winner_scale=args.winner_scale))
    except FormatError as exc:
        raise CLIError(str(exc)) from None
    errors = [r for r in items if isinstance(r, RowError)]
    records = [r for r in items if not isinstance(r, RowError)]
    if not records:
        raise CLIError(f"{args.file}: no usable records" + (f" (first problem: {errors[0]})" if errors else ""))
    db = open_db()
    try:
        out = evaluate_records(load_scorer(db, args), records)
    finally:
        db.dispose()
    out["invalid_rows"] = len(errors)
    out["file"] = args.file
    if args.json:
        print_json(out)
        return 0
    who = (f"model version {out['model_version']}" if "model_version" in out else
           f"model versions {', '.join(map(str, out['model_versions']))} ({out['combine']} of z)")
    print(f"{args.file} with {who}: accuracy {pct(out['accuracy'])} on {out['n']} pairs, "
          f"equal scores {pct(out['tie_rate'])}")
    if errors:
        print(f"  {len(errors)} invalid row(s) left out; the first: {errors[0]}")
    for src, v in (out.get("per_source") or {}).items():
        print(f"  {src}: {pct(v['accuracy'])} on {v['n']} pairs")
    if (out.get("length_bias") or {}).get("n"):
        print(f"  length bias: {out['length_bias']['message']}")
    t = out.get("temperature") or {}
    if t.get("temperature") is not None:
        stored = (f"; under the version's own T = {t['version_temperature']:.3g}: ECE "
                  f"{t['ece_version_temperature']:.3f}" if t.get("ece_version_temperature") is not None else "")

        flat = (" (its upper bound: on this file the score gaps predict nothing)"
                if t["temperature"] >= TEMPERATURE_BOUNDS[1] * 0.999 else "")
        print(f"  calibration: ECE {t['ece_before']:.3f} of sigmoid(score gap); the temperature that fits this file is "
              f"T = {t['temperature']:.3g}{flat} (ECE {t['ece_after']:.3f}, in-sample){stored}")
    if out.get("spearman", {}).get("mean") is not None:
        print(f"  Spearman over {out['spearman']['n_prompts']} rankings: {out['spearman']['mean']:.3f}")
    if errors:
        print(f"  {len(errors)} invalid rows skipped (first: {errors[0]})", file=sys.stderr)
    return 0


def _score_inputs(args: argparse.Namespace) -> list[tuple[str, Any, str]]:
    rows: list[tuple[str, Any, str]] = []
    if args.file:
        path = Path(args.file)
        if not path.is_file():
            raise CLIError(f"{args.file}: no such file")
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except ValueError as exc:
                    raise CLIError(f"{args.file}:{n}: not JSON ({exc})") from None
                if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str):
                    raise CLIError(f"{args.file}:{n}: field 'prompt' is missing or not text")
                resps = obj.get("responses", [obj["response"]] if "response" in obj else None)
                if not isinstance(resps, list) or not resps or not all(isinstance(r, str) for r in resps):
                    raise CLIError(f"{args.file}:{n}: field 'response' / 'responses' is missing or not text")
                rows += [(obj["prompt"], obj.get("history"), r) for r in resps]
    if args.prompt is not None or args.response:
        if args.prompt is None or not args.response:
            raise CLIError("give --prompt and at least one --response (or --file)")
        rows += [(args.prompt, None, r) for r in args.response]
    if not rows:
        raise CLIError("nothing to score: give --prompt and --response, or --file")
    return rows


def cmd_score(args: argparse.Namespace) -> int:
    """Print raw, z, sigmoid, percentile and ensemble std per response (several ``--model``: the combined
    reward of their z-scores, see ``rm_engine.serving.ensemble``)."""
    from rm_engine.serving.ensemble import VersionEnsemble

    rows = _score_inputs(args)
    db = open_db()
    try:
        model = load_scorer(db, args)
        scores = model.score_rows(rows)
    finally:
        db.dispose()
    if isinstance(model, VersionEnsemble):
        return _print_ensemble_scores(args, model, rows, scores)
    out = [{"prompt": p, "response": r, **s.to_dict()} for (p, _, r), s in zip(rows, scores)]
    if args.json:
        print_json({"model_version": model.version_id, "scores": out})
        return 0
    for o in out:
        resp = o["response"].replace("\n", " ")
        print(f"{o['raw']:+.4f}  z {o['z']:+.2f}  p {o['sigmoid']:.3f}  pct {o['percentile']:5.1f}  std {o['std']:.3f}  "
              f"{resp[:70]}")
    return 0


def _print_ensemble_scores(args: argparse.Namespace, ens: Any, rows: list[tuple[str, Any, str]], scores: list) -> int:
    out = [{"prompt": p, "response": r, **s.to_dict()} for (p, _, r), s in zip(rows, scores)]
    if args.json:
        print_json({"model_versions": ens.version_ids, "combine": args.combine, "penalty": args.penalty, "scores": out})
        return 0
    print(f"versions {', '.join(map(str, ens.version_ids))}, combined by {args.combine} of their z-scores")
    for o, s in zip(out, scores):
        zs = " ".join(f"v{k} {v:+.2f}" for k, v in s.z.items())
        print(f"{o['reward']:+.3f}  std {o['std']:.3f}  ({zs})  {o['response'].replace(chr(10), ' ')[:60]}")
    return 0
