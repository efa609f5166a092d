"""``rmstudio reward-server``: a model version (or several combined) as an HTTP reward endpoint for RL trainers."""
from __future__ import annotations

import argparse
import json
import os
from typing import Any

from cli.common import PORT, CLIError, bounded_type, field_flag, open_db, print_json
from cli.model_cmds import load_scorer, model_args
from db.served import clear_served, record_served, served_prompts, served_summary
from db.versions import get_version, version_summary
from rm_engine.device import resolve_device
from rm_engine.serving.chat_markup import MarkupError, load_markup
from rm_engine.serving.reward_server import ServerConfig, build_app, ensemble_scorer, model_scorer, serve

TOKEN_ENV = "RMSTUDIO_REWARD_TOKEN"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``reward-server`` and ``served`` subcommands."""
    p = sub.add_parser("reward-server", help="serve a reward model over HTTP (POST /score) for RL trainers",
                       description="POST /score with {prompts, completions} (TRL GRPO style: strings or chat "
                                   "messages) or OpenRLHF's {query, prompts}; answers {rewards: [...]}. "
                                   f"Set {TOKEN_ENV} to require 'Authorization: Bearer <token>'.")
    model_args(p)
    p.add_argument("--kind", choices=("raw", "z", "sigmoid"), default="z",
                   help="one --model: the reward returned (default z, the score against the version's training "
                        "statistics); several --model always give their combined z")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (0.0.0.0: every interface; set a token)")
    p.add_argument("--port", type=bounded_type(PORT), default=8600)  # checked before the model loads
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    field_flag(p, ServerConfig, "max_rows", metavar="ROWS", default=ServerConfig.max_rows,
               help="most rows one request may hold (413 beyond)")
    field_flag(p, ServerConfig, "time_budget_s", "--time-budget", metavar="SECONDS", default=ServerConfig.time_budget_s,
               help="longest a request may take, waiting included; one that cannot make it gets 503")
    field_flag(p, ServerConfig, "max_text_chars", metavar="CHARS", default=ServerConfig.max_text_chars,
               help="longest text in a request, in characters (413 beyond)")
    p.add_argument("--chat-template", metavar="NAME|FILE|DIR",
                   help="chat markup in prompts and queries to read before the built-in ones (inst: Llama-2 and "
                        "Mistral, chatml, llama3, gemma): a name, a Jinja template file or a tokenizer folder")
    p.add_argument("--drop-system", action="store_true",
                   help="leave system messages out of the scored conversation (default: scored as earlier turns, "
                        "as training saw them)")
    p.add_argument("--no-record-prompts", dest="record_prompts", action="store_false",
                   help="do not count the scored prompts in the database (the Coverage tab checks them)")
    p.set_defaults(func=cmd_reward_server)

    p = sub.add_parser("served", help="the prompts the reward server scored (the Dashboard's Coverage tab checks them)")
    p.add_argument("--clear", action="store_true", help="forget them")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_served)


def cmd_reward_server(args: argparse.Namespace) -> int:
    """Load the model(s) once, then serve until Ctrl-C or SIGTERM."""

    try:
        device = resolve_device(args.device)
        if args.chat_template:
            load_markup(args.chat_template)  # refused now, not after the model loads
    except (RuntimeError, MarkupError) as exc:
        raise CLIError(str(exc)) from None
    cfg = ServerConfig(host=args.host, port=args.port, token=os.environ.get(TOKEN_ENV) or None,
                       max_rows=args.max_rows, time_budget_s=args.time_budget_s, max_text_chars=args.max_text_chars,
                       record_prompts=args.record_prompts, chat_template=args.chat_template,
                       drop_system=args.drop_system)
    db = open_db()
    try:
        return _serve(db, args, cfg, device)
    finally:
        db.dispose()


def _serve(db: Any, args: argparse.Namespace, cfg: Any, device: str) -> int:

    loaded = load_scorer(db, args, device)
    if hasattr(loaded, "version_ids"):  # several versions: their combined z
        ids, scorer = list(loaded.version_ids), ensemble_scorer(loaded)
        reward = f"{args.combine} of z" + (f" (penalty {args.penalty})" if args.combine == "uwo" else "")
    elif args.combine == "uwo":  # one version: its own members' disagreement
        if args.kind != "z":
            raise CLIError("--combine uwo penalises z rewards: leave --kind at z")
        ids, scorer = [loaded.version_id], model_scorer(loaded, "z", penalty=args.penalty)
        reward = f"z - {args.penalty:g} x member std"
    elif args.combine == "min":
        raise CLIError("--combine min needs several --model (one version gives its members' mean and std: use "
                       "--combine uwo)")
    else:
        ids, scorer, reward = [loaded.version_id], model_scorer(loaded, args.kind), args.kind
    with db.read() as s:
        described = [version_summary(get_version(s, i)) for i in ids]
    scorer([("Hello?", None, "Hello.")])  # loads the backbone and tokenizer now, not in the first request's time
    describe = {"versions": ids, "reward": reward, "device": device,
                "recipes": {str(d["id"]): d["recipe"] for d in described}}
    record = (lambda texts: db.run_write(lambda s: record_served(s, texts))) if cfg.record_prompts else None
    url = f"http://{cfg.host}:{cfg.port}"
    print(f"serving model version{'s' if len(ids) > 1 else ''} {', '.join(map(str, ids))} ({reward}, {device}) at "
          f"{url}/score: POST {{\"prompts\": [...], \"completions\": [...]}} -> {{\"rewards\": [...]}}; "
          f"GET {url}/health. Ctrl-C stops.", flush=True)
    if cfg.token is None and cfg.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving {cfg.host} without a token: anyone who reaches this port can score; set "
              f"{TOKEN_ENV}", flush=True)
    serve(build_app(scorer, describe, cfg, record), cfg)
    return 0


def cmd_served(args: argparse.Namespace) -> int:
    """Summarise (or clear) the prompts the reward server counted (db/served.py)."""

    db = open_db()
    try:
        if args.clear:
            removed = db.run_write(clear_served)
            print(json.dumps({"cleared": removed}) if args.json else f"forgot {removed} served prompts")
            return 0
        with db.read() as s:
            summary, newest = served_summary(s), served_prompts(s, 5)
    finally:
        db.dispose()
    if args.json:
        print_json({**summary, "newest": newest})
    elif not summary["prompts"]:
        print("the reward server has scored no prompt yet (rmstudio reward-server records them)")
    else:
        print(f"{summary['prompts']} distinct prompts, {summary['responses']} responses scored, the last at "
              f"{summary['last_seen'][:19]}; newest: " + "; ".join(p[:60] for p in newest))
    return 0
