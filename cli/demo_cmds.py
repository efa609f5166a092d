"""``rmstudio seed-demo``: store the built-in demo data (prompts, responses, comparisons, AI pre-labels)."""
from __future__ import annotations

import argparse

from cli.common import CLIError, open_db, print_json
from db.demo import DemoDataError, seed_demo


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``seed-demo`` subcommand."""
    p = sub.add_parser(
        "seed-demo",
        help="store the built-in demo data (idempotent)",
        description="Store the built-in demo prompts, their responses and all pairwise comparisons. Half of the "
        "comparisons get AI pre-labels (annotator demo-ai) so a first model can be trained at once; the rest "
        "wait for human labels. Running it again adds nothing.",
    )
    p.add_argument("--no-ai-labels", action="store_true", help="leave every comparison unlabeled for humans")
    p.add_argument("--json", action="store_true", help="print the counts as JSON")
    p.set_defaults(func=run_seed_demo)


def run_seed_demo(args: argparse.Namespace) -> int:
    """Seed the database named by RMSTUDIO_DB / RMSTUDIO_HOME and print what was added."""

    db = open_db()
    try:
        counts = seed_demo(db, ai_labels_share=0.0 if args.no_ai_labels else 0.5)
    except DemoDataError as exc:
        raise CLIError(str(exc)) from exc
    finally:
        db.dispose()
    if args.json:
        print_json(counts)
    else:
        print(
            f"demo data: added {counts['prompts']} prompts, {counts['responses']} responses, "
            f"{counts['comparisons']} comparisons, {counts['ai_labels']} AI labels (annotator demo-ai); "
            f"{counts['unlabeled']} of {counts['demo_comparisons']} demo comparisons wait for human labels"
        )
    return 0
