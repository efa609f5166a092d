"""``rmstudio models``: list, delete, export (a Hugging Face folder) and share (copies in the database) versions."""
from __future__ import annotations

import argparse

from cli.common import CLIError, open_db, pct, print_json, settings
from db.versions import (
    VersionNotFound,
    archived_versions,
    delete_version,
    list_versions,
    parse_version_ref,
    version_summary,
)
from rm_engine.versions.model_store import share_versions
from rm_engine.versions.registry import ModelFilesError, remove_version_files


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``models`` subcommand."""
    p = sub.add_parser("models", help="list model versions (or: models delete ID, models export ID OUT, "
                                      "models share ID|all)")
    p.add_argument("action", nargs="?", choices=("list", "delete", "export", "share"), default="list")
    p.add_argument("version", nargs="?", help="version id (for delete; for export also 'latest'; for share also "
                                              "'all')")
    p.add_argument("out", nargs="?", help="export: the new folder (a Hugging Face model loadable with "
                                          "AutoModelForSequenceClassification and trust_remote_code=True, plus a "
                                          "model card)")
    p.add_argument("--member", type=int, default=None,
                   help="export: which member of an ensemble (0..K-1); a head ensemble without it exports their mean")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)


def cmd_models(args: argparse.Namespace) -> int:
    """List versions (newest first), or delete one (row, cached scores, then files)."""

    if args.action == "export":
        return _export(args)
    if args.action == "share":
        return _share(args)
    db = open_db()
    try:
        if args.action == "delete":
            if not args.version:
                raise CLIError("models delete needs a version id")
            try:
                vid = parse_version_ref(args.version)
                if vid == "latest":
                    raise CLIError("models delete needs an explicit version id, not 'latest'")
                with db.write() as s:
                    path = delete_version(s, int(vid)).path
            except (VersionNotFound, ValueError) as exc:
                raise CLIError(str(exc)) from None
            removed = remove_version_files(settings(), path)
            if args.json:
                print_json({"deleted": vid, "files_removed": removed})
            else:
                print(f"deleted model version {vid}" + ("" if removed else " (its files were already gone)"))
            return 0
        with db.read() as s:
            copies = archived_versions(s)
            rows = [{**version_summary(v), "db_copy_bytes": copies.get(v.id)} for v in list_versions(s)]
    finally:
        db.dispose()
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print("no model versions yet: run `rmstudio train --inline` (or queue one for the worker)")
        return 0
    for r in rows:
        m = r["metrics"]
        print(f"{r['id']:>4}  {r['created_at'][:19]}  {r['mode']:8s}  {r['backbone'][:30]:30s}  pairs {r['n_pairs']:>6}  "
              f"val {pct(m['val_accuracy']):>6}  train {pct(m['train_accuracy']):>6}  K={r['ensemble_size']}  "
              f"({r['recipe']})" + ("  [files in db]" if r["db_copy_bytes"] else ""))
    return 0


def _export(args: argparse.Namespace) -> int:
    """``models export ID OUT``: a version as a Hugging Face folder (rm_engine.versions.export)."""
    from rm_engine.versions.export import ExportError, export_version

    if not args.version or not args.out:
        raise CLIError("models export needs a version id (or 'latest') and an output folder")
    db = open_db()
    try:
        info = export_version(db, settings(), args.version, args.out, member=args.member,
                              progress=None if args.json else (lambda msg: print(f"export: {msg}", flush=True)))
    except (VersionNotFound, ModelFilesError, ExportError) as exc:
        raise CLIError(str(exc)) from None
    finally:
        db.dispose()
    if args.json:
        print_json({"exported": info["version_id"], "out": str(args.out), **info})
    else:
        print(f"exported model version {info['version_id']} to {args.out} ({info['recipe']}; input "
              f"{info['input']['format']}): AutoModelForSequenceClassification.from_pretrained({str(args.out)!r}, "
              "trust_remote_code=True), or pipeline(\"text-classification\", "
              f"model={str(args.out)!r}, trust_remote_code=True) on one chat-templated string; see its README.md")
    return 0


def _share(args: argparse.Namespace) -> int:
    """``models share ID|all``: store database copies of versions published without one (rm_engine.versions.model_store)."""

    if not args.version:
        raise CLIError("models share needs a version id or 'all'")
    try:
        ids = None if args.version == "all" else [int(args.version)]
    except ValueError:
        raise CLIError(f"models share: {args.version!r} is neither a version id nor 'all'") from None

    def line(d: dict) -> None:
        size = f" ({d['bytes'] / 2**20:.1f} MiB)" if d["bytes"] else ""
        print(f"model version {d['version']}: {d['status']}{size}" + (f": {d['reason']}" if d["reason"] else ""),
              flush=True)

    db = open_db()
    try:
        done = share_versions(db, settings(), ids, progress=None if args.json else line)
    except ModelFilesError as exc:
        raise CLIError(str(exc)) from None
    finally:
        db.dispose()
    if args.json:
        print_json(done)
    skipped = [d for d in done if d["status"] == "skipped"]
    return 1 if skipped and ids is not None else 0
