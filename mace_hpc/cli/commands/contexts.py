"""`mace contexts list|show|export|archive|restore|cleanup`: inspect and manage workflow contexts."""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Any

from . import cleanup as cleanup_cmd


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("contexts", help="list, inspect, export, archive and clean up contexts", description=__doc__)
    p.add_argument("--scratch-root", help="default: config scratch_root")
    csub = p.add_subparsers(dest="contexts_command", metavar="ACTION")

    ls = csub.add_parser("list", help="every context under the scratch root, with state and size")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(handler=_list)

    show = csub.add_parser("show", help="one context's status")
    show.add_argument("workflow_id")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=_show)

    exp = csub.add_parser("export", help="export a context's results (JSON, or merge into a .db)")
    exp.add_argument("workflow_id")
    exp.add_argument("--to", metavar="FILE", help=".json file or .db database (default: JSON in the context)")
    exp.set_defaults(handler=_export)

    arc = csub.add_parser("archive", help="archive a context to archive_dir, a directory or s3:// (kept unless --remove)")
    arc.add_argument("workflow_id")
    arc.add_argument("--remove", action="store_true", help="remove the context once archived")
    arc.set_defaults(handler=_archive)

    res = csub.add_parser("restore", help="restore an archived context (to resume it)")
    res.add_argument("archive", metavar="ARCHIVE|s3://...|WORKFLOW_ID",
                     help="a .tar.gz written by `mace contexts archive` or the epilogue, its s3:// URL, "
                          "or a workflow id (its recorded archive, else archive_dir/<id>.tar.gz)")
    res.set_defaults(handler=_restore)

    cl = csub.add_parser("cleanup", help="remove old finished contexts that are merged or archived (see mace cleanup)")
    cleanup_cmd.add_arguments(cl, default_age="7d")
    cl.set_defaults(handler=_cleanup)
    p.set_defaults(handler=lambda a: p.print_help() or 2)


def _root(args: argparse.Namespace) -> Path:
    from ...config import load_config, resolve_scratch_root

    return resolve_scratch_root(load_config(), args.scratch_root)


def _context(args: argparse.Namespace) -> Any:
    from ...errors import InputError
    from ...records.identity import read_identity
    from ...workflow.context import WorkflowContext

    root = _root(args)
    ident = read_identity(root / args.workflow_id)
    ctx = WorkflowContext(args.workflow_id, ident.isolation_mode if ident else "isolated",
                          cleanup_on_exit=False, scratch_root=root)
    if not ctx.directory.is_dir():
        raise InputError(f"no context {args.workflow_id!r} under {root} (see `mace contexts list`)")
    return ctx


def _rows(root: Path) -> list[dict[str, Any]]:
    from ...context import registry
    from ...records.element_state import read_state
    from ...records.identity import read_identity
    from ...records.layout import ContextPaths

    active = {e["workflow_id"]: e["status"] for e in registry.list_entries(root)}
    rows = []
    if not root.is_dir():
        return rows
    for d in sorted(root.iterdir()):
        if d.name.startswith(".") or not d.is_dir() or d.is_symlink():
            continue
        ident = read_identity(d)
        if ident is None and not ContextPaths(d).state.exists():
            continue
        rows.append({
            "workflow_id": d.name, "isolation_mode": ident.isolation_mode if ident else None,
            "state": read_state(d).state, "active": active.get(d.name, "no"),
            "modified": d.stat().st_mtime, "directory": str(d),
        })
    return rows


def _list(args: argparse.Namespace) -> int:
    from ..output import print_json, print_table

    rows = _rows(_root(args))
    if args.json:
        print_json(rows)
    else:
        print_table(("workflow_id", "mode", "state", "active", "modified"),
                    [(r["workflow_id"], r["isolation_mode"], r["state"], r["active"],
                      time.strftime("%Y-%m-%d %H:%M", time.localtime(r["modified"]))) for r in rows])
    return 0


def _show(args: argparse.Namespace) -> int:
    from ...records.element_state import read_state
    from ..output import print_json

    ctx = _context(args)
    status = {**ctx.get_status(), "element_state": read_state(ctx.directory).to_dict()}
    if args.json:
        print_json(status)
    else:
        for key, value in status.items():
            if key != "element_state":
                print(f"{key:16} {value}")
        print(f"{'element state':16} {status['element_state'].get('state')}")
    return 0


def _export(args: argparse.Namespace) -> int:
    path = _context(args).export_results(args.to)
    print(path)
    return 0


def _archive(args: argparse.Namespace) -> int:
    from ...config import load_config
    from ...context.archive_store import archive_to
    from ...records.manifest import plan_of_context

    ctx = _context(args)
    record = archive_to(ctx.directory, load_config().archive_dir(), ctx.workflow_id,
                        plan=plan_of_context(ctx.directory))
    if args.remove:  # only now: archive_to raised if the archive is not complete and verified
        shutil.rmtree(ctx.directory)
    print(record.location)
    return 0


def _restore(args: argparse.Namespace) -> int:
    from ...config import load_config
    from ...context.archive_store import resolve_source, restore_from

    root = _root(args)
    source, sha256 = resolve_source(args.archive, root, load_config().archive_dir())
    print(restore_from(source, root, sha256=sha256))
    return 0


def _cleanup(args: argparse.Namespace) -> int:
    """`mace cleanup` with a 7-day default, plus pruning registry entries of dead processes."""
    from ...context import registry

    root = _root(args)
    if not args.dry_run:
        pruned = registry.prune_stale(root)
        if pruned and not args.json:
            print(f"pruned {len(pruned)} stale registry entr{'y' if len(pruned) == 1 else 'ies'}")
    args.scratch_root = str(root)
    return cleanup_cmd.run(args)
