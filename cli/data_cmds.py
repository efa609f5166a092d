"""``rmstudio import``, ``export``, ``stats`` and ``guidelines``: the data layer on the command line."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from cli.common import CLIError, open_db, print_json, progress
from db.exporter import export
from db.formats import FormatError
from db.guidelines import get_guidelines, set_guidelines
from db.importer import import_file, preview
from db.stats import dataset_stats, format_stats

IMPORT_FORMATS = ("hh-rlhf", "trl", "comparisons", "rankings", "unlabeled", "mapped", "mixed")
EXPORT_FORMATS = ("trl", "comparisons", "csv", "parquet")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``import``, ``export``, ``stats`` and ``guidelines`` subcommands."""
    p = sub.add_parser(
        "import",
        help="import preference data (HH-RLHF, TRL, comparisons, rankings, unlabeled, mapped CSV/JSONL/Parquet)",
        description=(
            "Import a file into the database, all or nothing: a bad row rejects the whole file (naming file, line "
            "and field) unless --skip-invalid. Importing the same file twice adds nothing. One file is one format: "
            "every line is read as the detected (or given) format; --format mixed reads each line by its own fields "
            "as a comparison, ranking or unlabeled line (what export writes; an export is detected as mixed)."
        ),
    )
    p.add_argument("file", help="path to the file (plain or .gz); '-' reads standard input")
    p.add_argument("--format", choices=IMPORT_FORMATS, help="force the format (default: detect it); mixed: "
                                                             "comparison, ranking and unlabeled lines in one file")
    p.add_argument("--map", dest="mapping", metavar="TARGET=COLUMN,...",
                   help="field mapping for other layouts, e.g. prompt=question,a=answer_a,b=answer_b,winner=overall_preference; "
                        "winner=COL1|COL2|COL3: one verdict column per annotator, named like the column")
    p.add_argument("--winner-values", metavar="VALUE:OUTCOME,...",
                   help="the winner column's values, e.g. --winner-values=-1:a,1:b,0:tie (outcomes a, b, tie, both_bad)")
    p.add_argument("--winner-scale", metavar="LOW:a,HIGH:b",
                   help="a numeric winner column, e.g. --winner-scale 1:a,2:b: nearer LOW is a, nearer HIGH b, the "
                        "midpoint a tie; the distance from the midpoint sets the strength (2 from half way on, else 1)")
    p.add_argument("--source", choices=("expert", "crowd", "ai"), help="label source for records that name none (default crowd)")
    p.add_argument("--annotator", help="annotator for records that name none (default 'unknown')")
    p.add_argument("--category", help="prompt category for records that name none")
    p.add_argument("--split", choices=("train", "test"), default="train", help="split for records that name none")
    p.add_argument("--skip-invalid", action="store_true", help="import the valid rows and report each skipped one")
    p.add_argument("--dry-run", action="store_true", help="only validate: report the format, valid rows and errors; write nothing")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("export", help="export labels and rankings (trl, comparisons, csv, parquet)",
                       description="Write the database's preference data to a file. TRL leaves out ties and both-bad verdicts and says how many.")
    p.add_argument("out_pos", nargs="?", metavar="OUT", help="output path ('.gz' compresses JSONL/CSV); '-' or none: standard output")
    p.add_argument("--format", choices=EXPORT_FORMATS, required=True, help="output format")
    p.add_argument("-o", "--out", default=None, help="output path (same as OUT)")
    p.add_argument("--split", choices=("train", "test"), help="only labels and rankings of this split")
    p.add_argument("--json", action="store_true", help="print the report as JSON (on stderr when writing to stdout)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("stats", help="dataset statistics and size tier")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("guidelines", help="show or set the labeling guidelines (Markdown shown on the Label page)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--set", dest="set_file", metavar="FILE", help="a Markdown file ('-': standard input) as the "
                                                                   "next revision")
    g.add_argument("--clear", action="store_true", help="remove them (a revision of its own)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_guidelines)


def cmd_import(args: argparse.Namespace) -> int:
    """Import one file and print what was added."""

    src: Any = args.file
    filename = None
    if args.file == "-":
        src, filename = sys.stdin.buffer.read(), "<stdin>"
    if args.dry_run:
        return _dry_run(args, src, filename)
    db = open_db()
    bar = None

    def on_progress(done: int, total: int) -> None:
        nonlocal bar
        if args.no_progress or args.json:
            return
        if bar is None:
            bar = progress(total=total, desc="importing", unit="rec")
        bar.update(done - bar.n)

    try:
        report = import_file(
            db, src, format=args.format, mapping=args.mapping, winner_values=args.winner_values,
            winner_scale=args.winner_scale, source=args.source,
            annotator=args.annotator, category=args.category, split=args.split, skip_invalid=args.skip_invalid,
            filename=filename, progress=on_progress,
        )
    except FormatError as exc:
        raise CLIError(str(exc)) from exc
    finally:
        if bar is not None:
            bar.close()
        db.dispose()
    if args.json:
        print_json(report.to_dict())
    else:
        for err in report.skipped:
            print(f"skipped {err}", file=sys.stderr)
        print(f"imported {report.filename}: {report.summary()}")
    return 0


def _dry_run(args: argparse.Namespace, src: Any, filename: str | None) -> int:
    """Validate the whole file without opening the database; exit 1 when a row is invalid."""

    try:
        pv = preview(src, format=args.format, mapping=args.mapping, winner_values=args.winner_values,
                     winner_scale=args.winner_scale, source=args.source,
                     annotator=args.annotator, category=args.category, split=args.split, n=3, max_errors=1000,
                     scan_limit=None, filename=filename)
    except FormatError as exc:
        raise CLIError(str(exc)) from exc
    if pv.format is None:
        raise CLIError(str(pv.errors[0]))
    if args.json:
        print_json({"format": pv.format, "container": pv.container, "filename": pv.filename, "records": pv.n_records,
                    "invalid": pv.n_errors, "errors": [str(e) for e in pv.errors], "columns": pv.columns})
    else:
        for err in pv.errors:
            print(str(err), file=sys.stderr)
        more = f" (first {len(pv.errors)} listed)" if pv.n_errors > len(pv.errors) else ""
        print(f"{pv.filename}: {pv.format} ({pv.container}), {pv.n_records} valid records, {pv.n_errors} invalid{more}; nothing written")
    return 1 if pv.n_errors else 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export to a file or standard output; the summary goes to stderr when the data goes to stdout."""

    if args.out and args.out_pos and args.out != args.out_pos:
        raise CLIError(f"two output paths given ({args.out_pos} and --out {args.out}); give one")
    args.out = args.out or args.out_pos or "-"
    if args.out == "-" and args.format == "parquet":
        raise CLIError("parquet needs an output file: --out data.parquet")
    db = open_db()
    try:
        out: Any = sys.stdout.buffer if args.out == "-" else args.out
        if args.out == "-":
            sys.stdout.flush()
        report = export(db, args.format, out, split=args.split)
    finally:
        db.dispose()
    stream = sys.stderr if args.out == "-" else sys.stdout
    if args.json:
        import json

        print(json.dumps({"format": report.format, "n_written": report.n_written, "excluded": report.excluded, "path": report.path}), file=stream)
    else:
        print(report.summary(), file=stream)
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    """Print the dataset statistics (``--json`` for machines)."""

    db = open_db()
    try:
        with db.read() as s:
            stats = dataset_stats(s)
    finally:
        db.dispose()
    if args.json:
        print_json(stats)
    else:
        print(format_stats(stats))
    return 0


def cmd_guidelines(args: argparse.Namespace) -> int:
    """Print the labeling guidelines, or store a new revision from a file (db/guidelines.py)."""
    import getpass


    text = None
    if args.set_file:
        try:
            text = sys.stdin.read() if args.set_file == "-" else Path(args.set_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CLIError(f"{args.set_file}: cannot read it ({exc})") from None
    db = open_db()
    try:
        if text is not None or args.clear:
            with db.write() as s:
                try:
                    g = set_guidelines(s, text or "", by=getpass.getuser())
                except ValueError as exc:
                    raise CLIError(f"{args.set_file or 'guidelines'}: {exc}") from None
        else:
            with db.read() as s:
                g = get_guidelines(s)
    finally:
        db.dispose()
    if args.json:
        print_json(g.to_dict() if g else None)
    elif g is None:
        print("no labeling guidelines yet: write them on the Data page or with `rmstudio guidelines --set FILE`")
    else:
        print(f"revision {g.revision}, saved {g.updated_at}" + (f" by {g.updated_by}" if g.updated_by else "") + ":")
        print(g.text or "(cleared)")
    return 0
