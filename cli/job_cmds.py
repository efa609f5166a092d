"""``rmstudio worker``, ``workers`` (the live ones), ``jobs`` (list, cancel, logs), ``policy`` and ``serve`` (the app
plus a worker)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import subprocess
import sys
import time
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from cli.common import PORT, CLIError, bounded_type, field_flag, open_db, print_json, settings
from db import jobs as jobq
from db import policy as pol
from db import workers
from db.bounds import Bound, FieldError
from db.config import Settings
from db.policy import RetrainPolicy
from rm_engine.config import TrainConfig, parse_override, policy_train_config
from rm_engine.device import resolve_device
from worker.loop import WorkerConfig, main

#: ``jobs --limit``, ``jobs logs --tail``.
ROWS = Bound(1, 100_000, integer=True)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the job subcommands to the ``rmstudio`` parser."""
    w = sub.add_parser("worker", help="run the background worker (training, rescoring, automatic retrains)")
    w.add_argument("--once", action="store_true", help="run at most one job, then exit (at once if none is queued)")
    w.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: GPU for finetune jobs when available, else CPU (default auto)")
    field_flag(w, WorkerConfig, "gpus", default=1, metavar="N")
    field_flag(w, WorkerConfig, "poll_interval_s", "--poll-interval", default=1.0, metavar="S")
    field_flag(w, WorkerConfig, "lease_s", "--lease", default=30.0, metavar="S")
    w.add_argument("--kinds", default=None, help="comma-separated job kinds to take (default: all)")
    field_flag(w, WorkerConfig, "max_jobs", default=None, metavar="N")
    w.add_argument("--no-auto-retrain", action="store_true", help="do not apply the automatic retrain policy")
    w.add_argument("--no-preload", action="store_true", help="do not import torch and the engine ahead of the first job")
    w.set_defaults(func=cmd_worker)

    wk = sub.add_parser("workers", help="the live worker processes: host, device, job kinds, current job")
    wk.add_argument("--json", action="store_true", help="print a JSON list")
    wk.set_defaults(func=cmd_workers)

    j = sub.add_parser("jobs", help="list jobs; 'jobs cancel ID', 'jobs logs ID'")
    j.add_argument("--json", action="store_true", help="print a JSON list")
    j.add_argument("--limit", type=bounded_type(ROWS), default=30, metavar="N", help="newest N jobs (30)")
    j.add_argument("--status", default=None, help="comma-separated statuses to show")
    j.set_defaults(func=cmd_jobs)
    jsub = j.add_subparsers(dest="jobs_command", metavar="ACTION")
    c = jsub.add_parser("cancel", help="cancel a job (queued: at once; running: at the next step, publishing nothing)")
    c.add_argument("id", type=int)
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_jobs_cancel)
    lg = jsub.add_parser("logs", help="show a job's log")
    lg.add_argument("id", type=int)
    lg.add_argument("--json", action="store_true")
    lg.add_argument("--tail", type=bounded_type(ROWS), default=None, metavar="N", help="only the last N lines")
    lg.set_defaults(func=cmd_jobs_logs)

    p = sub.add_parser("policy", help="show or change the automatic retrain policy")
    onoff = p.add_mutually_exclusive_group()
    onoff.add_argument("--enable", dest="enabled", action="store_const", const=True, default=None)
    onoff.add_argument("--disable", dest="enabled", action="store_const", const=False)
    field_flag(p, RetrainPolicy, "min_new_labels", default=None, metavar="N")
    field_flag(p, RetrainPolicy, "min_interval_s", "--min-interval", default=None, metavar="S")
    p.add_argument("--mode", choices=("head", "finetune"), default=None, help="training mode of automatic retrains")
    p.add_argument("--train-param", action="append", default=[], metavar="FIELD=VALUE",
                   help="a TrainConfig field for automatic retrains, its value as the train flags take it (e.g. "
                        "epochs=40, lora=yes, sources=expert,crowd); FIELD= removes it")
    rs = p.add_mutually_exclusive_group()
    rs.add_argument("--rescore", dest="rescore", action="store_const", const=True, default=None)
    rs.add_argument("--no-rescore", dest="rescore", action="store_const", const=False)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_policy)

    s = sub.add_parser("serve", help="run the app and a worker together; Ctrl-C stops both")
    s.add_argument("--port", type=bounded_type(PORT), default=8501, help="the app's TCP port (default 8501)")
    s.add_argument("--address", default=None, help="address the app listens on (Streamlit's default if unset)")
    s.add_argument("--no-worker", action="store_true", help="run the app only")
    s.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="the worker's --device")
    field_flag(s, WorkerConfig, "gpus", default=1, metavar="N", help="the worker's --gpus (finetune jobs)")
    s.add_argument("--dev", action="store_true",
                   help="for working on RM Studio itself: watch the source files and rerun pages when one is saved")
    s.set_defaults(func=cmd_serve)


# ---------------------------------------------------------------- worker


def cmd_worker(args: argparse.Namespace) -> int:
    """Run the worker loop in this process."""
    from transformers.utils import logging as hf_logging  # transformers loads in seconds: only for this command

    hf_logging.disable_progress_bar()  # the worker's log is one line per event: no bar per model load

    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip()) if args.kinds else None
    try:
        cfg = WorkerConfig(
            lease_s=args.lease_s, poll_interval_s=args.poll_interval_s, device=args.device, gpus=args.gpus, kinds=kinds,
            once=args.once, auto_retrain=not args.no_auto_retrain, max_jobs=args.max_jobs, preload=not args.no_preload,
        )
    except FieldError:  # named by its flag (cli.main)
        raise
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    if cfg.device == "cuda":
        try:
            resolve_device(cfg.device)
        except RuntimeError:
            raise CLIError("--device cuda: torch sees no CUDA device here (use --device auto or cpu)") from None
    return main(cfg, settings())


# ---------------------------------------------------------------- jobs


def _progress_text(p: dict[str, Any] | None) -> str:
    if not p:
        return ""
    parts = []
    if p.get("step") is not None:
        parts.append(f"{p['step']}/{p.get('total', '?')}")
    if p.get("loss") is not None:
        parts.append(f"loss {float(p['loss']):.4f}")
    if p.get("val_accuracy") is not None:
        parts.append(f"val acc {float(p['val_accuracy']):.3f}")
    if p.get("eta_s") is not None:
        parts.append(f"eta {float(p['eta_s']):.0f}s")
    return ", ".join(parts)


def _result_text(r: dict[str, Any]) -> str:
    """What a succeeded job produced: a train job's version, a cv job's pooled accuracy."""
    res = r["result"] or {}
    if r["status"] != "succeeded":
        return ""
    if res.get("version_id") is not None:
        return f"published version {res['version_id']}"
    if r["kind"] == "cv" and res.get("accuracy") is not None:
        se = f" +- {100 * res['std_error']:.1f}" if res.get("std_error") is not None else ""
        return f"cross-validated accuracy {100 * res['accuracy']:.1f}%{se} ({res.get('k')} folds, {res.get('n')} pairs)"
    return ""


def cmd_jobs(args: argparse.Namespace) -> int:
    """List the newest jobs with their progress."""
    statuses = [x.strip() for x in args.status.split(",") if x.strip()] if args.status else None
    db = open_db()
    try:
        with db.read() as s:
            try:
                rows = [jobq.job_to_dict(j) for j in jobq.list_jobs(s, limit=args.limit, statuses=statuses)]
            except ValueError as exc:
                raise CLIError(str(exc)) from None
            live = workers.live_workers(s)
            active = [jobq.job_to_dict(j) for j in jobq.active_jobs(s)]
    finally:
        db.dispose()
    if args.json:
        print_json(rows)
        return 0
    print(workers.describe(live, active) + ("" if live else ": queued jobs wait until one starts (`rmstudio worker`)"))
    if not rows:
        print("no jobs")
        return 0
    print(f"{'id':>5}  {'kind':<8} {'status':<10} {'tries':<5} {'device':<7} progress / error")
    for r in rows:
        extra = _result_text(r) or _progress_text(r["progress"])
        if r["error"]:
            extra = (extra + "  " if extra else "") + "error: " + r["error"].splitlines()[0][:100]
        if r["cancel_requested"] and r["status"] == "running":
            extra += "  (cancel requested)"
        print(f"{r['id']:>5}  {r['kind']:<8} {r['status']:<10} {r['attempts']}/{r['max_attempts']:<3} "
              f"{(r['device'] or '-'):<7} {extra}")
    return 0


def cmd_workers(args: argparse.Namespace) -> int:
    """List the live workers (db/workers.py)."""
    db = open_db()
    try:
        with db.read() as s:
            live = workers.live_workers(s)
            active = [jobq.job_to_dict(j) for j in jobq.active_jobs(s)]
    finally:
        db.dispose()
    if args.json:
        print_json(live)
    else:
        doing, _ = workers.worker_status(live, active)
        print(workers.describe(live, active))
        for w in live:
            print(f"  {w['name']}: {w['device'] or '?'}, {doing[w['name']]}, "
                  f"kinds {', '.join(w['kinds']) if w['kinds'] else 'all'}, seen {w['seen_s_ago']:g} s ago")
    return 0


def cmd_jobs_cancel(args: argparse.Namespace) -> int:
    """Cancel one job."""
    db = open_db()
    try:
        try:
            status = jobq.request_cancel(db, args.id)
        except LookupError as exc:
            raise CLIError(str(exc)) from None
    finally:
        db.dispose()
    status_s = status.value
    if args.json:
        print_json({"id": args.id, "status": status_s, "cancel_requested": status_s in ("running", "cancelled")})
    elif status_s == "running":
        print(f"job {args.id}: cancel requested; the worker stops it at its next step and publishes nothing")
    elif status_s == "cancelled":
        print(f"job {args.id}: cancelled")
    else:
        print(f"job {args.id} already finished ({status_s}); nothing to cancel")
    return 0


def cmd_jobs_logs(args: argparse.Namespace) -> int:
    """Print a job's log."""
    db = open_db()
    try:
        with db.read() as s:
            if jobq.get_job(s, args.id) is None:
                raise CLIError(f"no job with id {args.id}")
            lines = [(r.created_at.isoformat(timespec="seconds"), r.line) for r in jobq.job_logs(s, args.id, args.tail)]
    finally:
        db.dispose()
    if args.json:
        print_json([{"at": t, "line": line} for t, line in lines])
    else:
        for t, line in lines:
            print(f"{t}  {line}")
    return 0


# ---------------------------------------------------------------- policy


def _parse_train_params(items: list[str]) -> dict[str, Any]:
    """``--train-param FIELD=VALUE`` items -> ``{field: value}``, each value read as the train flags read it
    (``rm_engine.config.parse_override``); ``FIELD=`` gives None, which removes the field."""
    out: dict[str, Any] = {}
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    for item in items:
        name, sep, raw = item.partition("=")
        key = name.strip().lstrip("-").replace("-", "_")
        if sep and not key:
            raise CLIError(f"--train-param {item!r}: the field is empty, e.g. --train-param epochs=100")
        if sep and (not raw.strip() or key not in known):  # a removal, or an unknown field (named afterwards)
            out[key] = raw.strip() or None
            continue
        try:
            key, value = parse_override(item)
        except FieldError as exc:
            raise CLIError(f"--train-param {exc.field}: {exc.reason} (got {exc.value!r})") from None
        except ValueError as exc:
            raise CLIError(f"--train-param {exc}") from None
        out[key] = value
    return out


def cmd_policy(args: argparse.Namespace) -> int:
    """Show the retrain policy, change it when options are given, and say whether a retrain is due."""
    changes: dict[str, Any] = {}
    if args.enabled is not None:
        changes["enabled"] = args.enabled
    if args.min_new_labels is not None:
        changes["min_new_labels"] = args.min_new_labels
    if args.min_interval_s is not None:
        changes["min_interval_s"] = args.min_interval_s
    if args.mode is not None:
        changes["mode"] = args.mode
    if args.rescore is not None:
        changes["rescore"] = args.rescore
    process_settings = settings()
    db = open_db(process_settings)
    try:
        if changes or args.train_param:
            tp_changes = _parse_train_params(args.train_param)
            if tp_changes:
                _check_train_params(tp_changes)

            def _write(s: Any) -> None:
                if tp_changes or "mode" in changes:
                    current = pol.get_policy(s)
                    tp = dict(current.train_params)
                    for k, v in tp_changes.items():
                        if v is None:
                            tp.pop(k, None)
                        else:
                            tp[k] = v
                    _check_retrain_config(tp, changes.get("mode", current.mode), process_settings)
                    changes["train_params"] = tp
                pol.set_policy(s, **changes)

            try:
                db.run_write(_write)
            except FieldError:  # named by its flag (cli.main)
                raise
            except ValueError as exc:
                raise CLIError(str(exc)) from None
        with db.read() as s:
            policy = pol.get_policy(s)
            due, reason = pol.should_retrain(s)
            new = pol.labels_since_last_version(s)
    finally:
        db.dispose()
    out = {**policy.to_dict(), "new_labels": new, "retrain_due": due, "reason": reason}
    if args.json:
        print_json(out)
        return 0
    print(f"automatic retraining: {'on' if policy.enabled else 'off'} (mode {policy.mode})")
    print(f"  retrain after {policy.min_new_labels} new labels, at most every {policy.min_interval_s:g} s")
    print(f"  training parameters: {json.dumps(policy.train_params) if policy.train_params else 'defaults'}")
    print(f"  rescore stored responses after a new version: {'yes' if policy.rescore else 'no'}")
    print(f"now: {reason}{' -> a worker will enqueue a retrain' if due else ''}")
    return 0


def _check_train_params(tp: dict[str, Any]) -> None:
    """Reject unknown TrainConfig fields early, naming them."""
    names = {f.name for f in dataclasses.fields(TrainConfig)} - {"mode"}
    unknown = sorted(k for k in tp if k not in names)
    if unknown:
        raise CLIError(f"--train-param: unknown TrainConfig field(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")


def _check_retrain_config(train_params: dict[str, Any], mode: str, s: Settings) -> None:
    """The automatic retrain's settings checked as the worker will check them, before they are stored."""
    try:
        policy_train_config(train_params, mode, s)
    except FieldError as exc:
        raise CLIError(f"--train-param {exc.field}: {exc.reason} (got {exc.value!r})") from None
    except ValueError as exc:
        raise CLIError(f"--train-param: {exc}") from None


# ---------------------------------------------------------------- serve


def app_main_path() -> Path:
    """``app/main.py`` of the installed package (works from a checkout and from an installed wheel)."""
    spec = find_spec("app")
    if spec is None or not spec.submodule_search_locations:
        raise CLIError("cannot find the 'app' package; is rmstudio installed (pip install -e .)?")
    path = Path(list(spec.submodule_search_locations)[0]) / "main.py"
    if not path.is_file():
        raise CLIError(f"{path} is missing")
    return path


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the parent dies, even by kill -9 (Linux)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - other systems: the parent's own handlers still stop the children
        pass


def _spawn(cmd: list[str]) -> subprocess.Popen[bytes]:
    # A new session, so that a terminal's Ctrl-C reaches only `serve`, which then stops each child once.
    return subprocess.Popen(cmd, start_new_session=True, preexec_fn=_die_with_parent if sys.platform == "linux" else None)


def stop_children(children: dict[str, subprocess.Popen[bytes]], grace_s: float = 15.0) -> None:
    """SIGTERM every live child, wait ``grace_s``, then SIGKILL what is left; reap them all."""
    for p in children.values():
        if p.poll() is None:
            try:
                p.terminate()
            except ProcessLookupError:
                pass
    end = time.time() + grace_s
    for name, p in children.items():
        try:
            p.wait(timeout=max(0.1, end - time.time()))
        except subprocess.TimeoutExpired:
            print(f"rmstudio serve: {name} did not stop in {grace_s:g} s; killing it", file=sys.stderr)
            p.kill()
            p.wait()


def cmd_serve(args: argparse.Namespace) -> int:
    """Run ``streamlit run app/main.py`` and ``rmstudio worker`` as children; stop both together."""
    main_py = app_main_path()
    app_cmd = [sys.executable, "-m", "streamlit", "run", str(main_py), "--server.headless", "true",
               "--server.port", str(args.port),
               # the server itself refuses bigger uploads (before holding them in memory), not only the pages
               "--server.maxUploadSize", str(settings().max_upload_mb),
               # no "Deploy" button for labelers; no usage statistics leave the machine
               "--client.toolbarMode", "minimal", "--browser.gatherUsageStats", "false"]
    if not args.dev:
        # Streamlit's file watcher walks every imported module, transformers' lazy ones included, and logs a
        # traceback for each that cannot import (torchvision, ...): noise for users, and nothing here is edited.
        app_cmd += ["--server.fileWatcherType", "none", "--server.runOnSave", "false"]
    if args.address:
        app_cmd += ["--server.address", args.address]
    stop = {"signal": 0}

    def _on_signal(signum: int, _frame: Any) -> None:
        stop["signal"] = signum

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    children: dict[str, subprocess.Popen[bytes]] = {}
    rc = 0
    try:
        if not args.no_worker:
            children["worker"] = _spawn([sys.executable, "-m", "cli", "worker", "--device", args.device,
                                          "--gpus", str(args.gpus)])
        children["app"] = _spawn(app_cmd)
        pids = ", ".join(f"{n} pid {p.pid}" for n, p in children.items())
        print(f"RM Studio on http://localhost:{args.port} ({pids}); Ctrl-C stops everything", file=sys.stderr, flush=True)
        while not stop["signal"]:
            dead = [(n, p.returncode) for n, p in children.items() if p.poll() is not None]
            if dead:
                name, code = dead[0]
                print(f"rmstudio serve: {name} exited with code {code}; stopping the rest", file=sys.stderr)
                rc = code if code else 1
                break
            time.sleep(0.3)
    finally:
        stop_children(children)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stop["signal"]:
        print(f"rmstudio serve: stopped by signal {stop['signal']}", file=sys.stderr)
    return rc
