"""`mace cleanup [--older-than 14d] [--max-total-size 50G] [--dry-run]`: free scratch space safely.

Removes the data of finished-and-safe contexts, oldest first: ARCHIVED ones whose archive is on
disk (sidecar checksum) or in the bucket (object size and SHA-256, one HEAD each), MERGED ones the shared database's ledger lists (archived first unless
context_settings.archive_results is off). Never an unmerged, unarchived, running or quarantined
context. A tombstone (state.json, context.json) stays so `mace status` still knows the outcome.
Without limits: --older-than 14d.
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cleanup", help="remove finished, merged/archived contexts (oldest first)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.add_argument("--scratch-root", help="default: config scratch_root")


def add_arguments(p: argparse.ArgumentParser, default_age: str | None = None) -> None:
    """The cleanup options, shared by `mace cleanup` and `mace contexts cleanup`."""
    p.add_argument("--older-than", metavar="AGE", default=default_age,
                   help=f"finished more than AGE ago: 14d, 12h, 30m (default {default_age or '14d'})")
    p.add_argument("--max-total-size", metavar="SIZE", help="remove oldest safe contexts until all fit: 50G, 500M")
    p.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    p.add_argument("--no-archive", action="store_true", help="do not archive MERGED contexts before removing them")
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.set_defaults(handler=run)


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "K", "M", "G", "T"):
        if size < 1024 or unit == "T":
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    return f"{n}B"


def run(args: argparse.Namespace) -> int:
    from ...epilogue.cleanup import cleanup, parse_age, parse_size
    from ..output import print_json

    report = cleanup(
        args.scratch_root,
        older_than=parse_age(args.older_than) if args.older_than else None,
        max_total_size=parse_size(args.max_total_size) if args.max_total_size else None,
        dry_run=args.dry_run,
        archive_merged=False if args.no_archive else None,
    )
    if args.json:
        print_json(report.to_dict())
        return 0
    verb = "would remove" if args.dry_run else "removed"
    for c in report.removed:
        print(f"{verb} {c.directory} ({c.state}, {_human(c.size)})")
    unsafe = [c for c in report.kept if not c.safe and c.why and not c.why.startswith("already removed")]
    if unsafe:
        print(f"kept {len(unsafe)} context(s) that are not safe to remove, e.g. "
              + "; ".join(f"{c.workflow_id}: {c.why}" for c in unsafe[:3]))
    done = "would be removed" if args.dry_run else "removed"
    print(f"{len(report.removed)} context(s) {done}, {_human(report.total_before - report.total_after)} freed; "
          f"scratch contexts {'would then take' if args.dry_run else 'now take'} {_human(report.total_after)}")
    return 0
