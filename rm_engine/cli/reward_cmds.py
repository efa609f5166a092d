"""``rmstudio reward-server``: a model version (or several combined) as an HTTP reward endpoint for RL trainers."""
from __future__ import annotations

import argparse
import os

from rm_engine.cli.common import CLIError, open_db
from rm_engine.cli.model_cmds import load_scorer, model_args

TOKEN_ENV = "RMSTUDIO_REWARD_TOKEN"


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add the ``reward-server`` subcommand."""
    p = sub.add_parser("reward-server", help="serve a reward model over HTTP (POST /score) for RL trainers",
                       description="POST /score with {prompts, completions} (TRL GRPO style: strings or chat "
                                   "messages) or OpenRLHF's {query, prompts}; answers {rewards: [...]}. "
                                   f"Set {TOKEN_ENV} to require 'Authorization: Bearer <token>'.")
    model_args(p)
    p.add_argument("--kind", choices=("raw", "z", "sigmoid"), default="z",
                   help="one --model: the reward returned (default z, the score against the version's training "
                        "statistics); several --model always give their combined z")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (0.0.0.0: every interface; set a token)")
    p.add_argument("--port", type=int, default=8600)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--max-rows", type=int, default=4096, help="most rows one request may hold")
    p.set_defaults(func=cmd_reward_server)


def cmd_reward_server(args: argparse.Namespace) -> int:
    """Load the model(s) once, then serve until Ctrl-C or SIGTERM."""
    from db.versions import version_summary, get_version
    from rm_engine.reward_server import ServerConfig, build_app, ensemble_scorer, model_scorer, serve
    from rm_engine.training import resolve_device

    if args.max_rows < 1:
        raise CLIError("--max-rows must be at least 1")
    try:
        device = resolve_device(args.device)
    except RuntimeError as exc:
        raise CLIError(str(exc)) from None
    cfg = ServerConfig(host=args.host, port=args.port, token=os.environ.get(TOKEN_ENV) or None,
                       max_rows=args.max_rows)
    db = open_db()
    try:
        loaded = load_scorer(db, args, device)
        if hasattr(loaded, "version_ids"):  # several versions: their combined z
            ids, scorer = list(loaded.version_ids), ensemble_scorer(loaded)
            reward = f"{args.combine} of z" + (f" (penalty {args.penalty})" if args.combine == "uwo" else "")
        else:
            ids, scorer, reward = [loaded.version_id], model_scorer(loaded, args.kind), args.kind
        with db.read() as s:
            described = [version_summary(get_version(s, i)) for i in ids]
    finally:
        db.dispose()
    describe = {"versions": ids, "reward": reward, "device": device,
                "recipes": {str(d["id"]): d["recipe"] for d in described}}
    url = f"http://{cfg.host}:{cfg.port}"
    print(f"serving model version{'s' if len(ids) > 1 else ''} {', '.join(map(str, ids))} ({reward}, {device}) at "
          f"{url}/score: POST {{\"prompts\": [...], \"completions\": [...]}} -> {{\"rewards\": [...]}}; "
          f"GET {url}/health. Ctrl-C stops.", flush=True)
    if cfg.token is None and cfg.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving {cfg.host} without a token: anyone who reaches this port can score; set "
              f"{TOKEN_ENV}", flush=True)
    serve(build_app(scorer, describe, cfg), cfg)
    return 0
