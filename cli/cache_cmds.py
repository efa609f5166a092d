"""``rmstudio cache``: report, compact and prune the on-disk feature caches (``rm_engine/head/cache_admin.py``)."""
from __future__ import annotations

import argparse

from cli.common import CLIError, bounded_type, print_json, settings
from db.bounds import Bound
from rm_engine.head.cache_admin import cache_dirs, cache_report, compact, prune

_MB = 1024 * 1024


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``cache``, ``cache compact`` and ``cache prune``."""
    p = sub.add_parser("cache", help="feature caches on disk; 'cache compact', 'cache prune --older-than DAYS'",
                       description="The frozen-backbone feature caches under RMSTUDIO_HOME/cache/features: one dir per "
                                   "backbone, pooling, max length and quantization.")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_cache)
    csub = p.add_subparsers(dest="cache_command", metavar="ACTION")
    c = csub.add_parser("compact", help="merge each cache's shard files into one (safe while others read and write)")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_cache_compact)
    pr = csub.add_parser("prune", help="remove caches not written for DAYS days, and temp files older than an hour")
    pr.add_argument("--older-than", dest="older_than", type=bounded_type(Bound(0, 36_500)), required=True, metavar="DAYS")
    pr.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    pr.add_argument("--json", action="store_true")
    pr.set_defaults(func=cmd_cache_prune)


def _no_cache_yet() -> str:
    return f"no feature cache yet (head-mode training fills {settings().cache_dir / 'features'})"


def cmd_cache(args: argparse.Namespace) -> int:
    """A table of the caches: dir, shards, vectors, MB, last written."""

    rows = cache_report(settings())
    if args.json:
        print_json([{"name": r.name, "path": str(r.path), "shards": r.shards, "vectors": r.vectors, "bytes": r.bytes,
                     "last_written": r.last_written.isoformat() if r.last_written else None, "stale_tmp": r.stale_tmp}
                    for r in rows])
        return 0
    if not rows:
        print(_no_cache_yet())
        return 0
    width = max(len("config dir"), *(len(r.name) for r in rows))
    print(f"{'config dir':{width}s}  {'shards':>6}  {'vectors':>9}  {'MB':>9}  last written")
    for r in rows:
        when = r.last_written.astimezone().strftime("%Y-%m-%d %H:%M") if r.last_written else "-"
        tmp = f"  ({r.stale_tmp} stale temp files)" if r.stale_tmp else ""
        print(f"{r.name:{width}s}  {r.shards:>6}  {r.vectors:>9}  {r.bytes / _MB:>9.1f}  {when}{tmp}")
    return 0


def cmd_cache_compact(args: argparse.Namespace) -> int:
    """Compact every cache dir."""

    results = [compact(d) for d in cache_dirs(settings())]
    if args.json:
        print_json([{"name": r.path.name, "shards_before": r.shards_before, "shards_after": r.shards_after,
                     "vectors": r.vectors} for r in results])
        return 0
    if not results:
        print(_no_cache_yet())
    for r in results:
        print(f"{r.path.name}: {r.shards_before} -> {r.shards_after} shards, {r.vectors} vectors")
    return 0


def cmd_cache_prune(args: argparse.Namespace) -> int:
    """Remove old caches and stale temp files (or list them with --dry-run)."""

    if args.older_than < 0:
        raise CLIError("--older-than must be 0 days or more")
    res = prune(settings(), args.older_than, dry_run=args.dry_run)
    if args.json:
        print_json({"dry_run": res.dry_run, "bytes": res.bytes,
                    "removed": [{"path": str(r.path), "kind": r.kind, "bytes": r.bytes} for r in res.removed]})
        return 0
    verb = "would remove" if res.dry_run else "removed"
    if not res.removed:
        print(f"nothing to prune (no cache older than {args.older_than:g} days, no stale temp files)")
        return 0
    for r in res.removed:
        what = "cache" if r.kind == "cache" else "temp file"
        print(f"{verb} {what} {r.path} ({r.bytes / _MB:.1f} MB)")
    print(f"{verb} {len(res.removed)} item(s), {res.bytes / _MB:.1f} MB")
    return 0
