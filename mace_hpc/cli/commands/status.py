"""`mace status [PLAN|JOBID] [--watch] [--json]`: every element's state, from its own state file
reconciled with one scheduler query per submission. Without an argument: the submissions.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

TABLE_COLUMNS = ("index", "workflow_id", "state", "attempts", "job_id", "message")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="element states of a submitted plan", description=__doc__)
    p.add_argument("target", nargs="?", metavar="PLAN|JOBID", help="plan name or any of its job ids")
    p.add_argument("--site", metavar="NAME|PATH", help="site config (for its scratch_root)")
    p.add_argument("--watch", action="store_true", help="live progress until every element has finished")
    p.add_argument("--interval", type=float, default=2.0, metavar="S", help="seconds between --watch polls")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from ...config import load_config

    cfg = load_config(site=args.site)
    if not args.target:
        return _list(cfg, args.json)
    if args.interval <= 0:
        from ...errors import InputError

        raise InputError(f"--interval: {args.interval} must be a positive number of seconds")
    from ...submission.control import status_of

    if args.watch:
        return _watch(args, cfg, status_of)
    report = status_of(args.target, cfg)
    _show(report, args.json)
    return 0


def _show(report: Any, as_json: bool) -> None:
    from ..output import format_table, print_json

    if as_json:
        print_json(report.to_json())
        return
    columns = TABLE_COLUMNS
    if report.stage_counts:  # multi-stage: the stage each element is in, after its state
        at = TABLE_COLUMNS.index("state") + 1
        columns = (*TABLE_COLUMNS[:at], "stage", *TABLE_COLUMNS[at:])
    rows = [[(r.get(c) or "-") if c == "stage" else _short(_why(r)) if c == "message" else r[c] for c in columns]
            for r in report.rows]
    sys.stdout.write(format_table(columns, rows) + "\n")
    print("\n".join([report.summary_line(), *report.stage_lines()]))


def _why(row: dict[str, Any]) -> str:
    """The message, after the last retry decision when there is one (why it was retried or given up)."""
    retries = row.get("retries") or []
    return "; ".join(x for x in (retries[-1] if retries else "", row["message"]) if x)


def _short(text: str, width: int = 70) -> str:
    text = " ".join(str(text or "").split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _watch(args: argparse.Namespace, cfg: Any, status_of: Any) -> int:
    """Poll (one scheduler query each time) and draw a progress bar until every element settles."""
    from ..output import Progress, print_json

    bar = Progress(f"{args.target}", stream=sys.stderr)
    while True:
        report = status_of(args.target, cfg)
        failed = sum(1 for r in report.rows if r["settled"] and r["run_state"] not in ("COMPLETED",))
        running = sum(1 for r in report.rows if not r["settled"] and r["state"] == "RUNNING")
        bar(report.settled(), report.total, failed, running)
        if report.all_settled():
            break
        waiting = [r for r in report.rows if not r["settled"] and r["state"] == "PENDING"]
        if not report.jobs and len(waiting) == report.total - report.settled() and report.backend != "local":
            # --no-submit: nothing of ours is queued, so nothing will settle until the user submits
            print(f"{args.target}: {len(waiting)} element(s) wait for a job that was never submitted "
                  f"(mace-submit --no-submit); submit jobscripts/ with MACE_MANIFEST set, then watch again",
                  file=sys.stderr)
            return 1
        time.sleep(args.interval)
    if args.json:
        print_json(report.to_json())
    else:
        for r in report.rows:
            if r["run_state"] != "COMPLETED":
                print(f"element {r['index']} ({r['workflow_id']}): {r['state']} {_short(r['message'])}")
        print(report.summary_line())
    return 0 if report.succeeded() else 1


def _list(cfg: Any, as_json: bool) -> int:
    """Every submission under the scratch root, with state counts from the files (no scheduler)."""
    from ...records.manifest import read_manifest
    from ...records.submission import list_records
    from ...status.reconcile import state_counts_from_files
    from ...submission.contexts import scratch_root_of
    from ..output import print_json, print_table

    root = scratch_root_of(cfg)
    out = []
    for paths, rec in list_records(root):
        manifest = read_manifest(paths.manifest)
        counts = state_counts_from_files(manifest) if manifest else {}  # half-written: no counts
        out.append({
            "plan": rec.plan, "backend": rec.backend, "elements": rec.elements,
            "jobs": [j.job_id for j in rec.array_jobs()], "submitted_at": rec.submitted_at, "states": counts,
        })
    if as_json:
        print_json(out)
        return 0
    if not out:
        print(f"no submissions under {root}")
        return 0
    rows = [
        [o["plan"], o["backend"], o["elements"], " ".join(o["jobs"][:3]) + (" ..." if len(o["jobs"]) > 3 else ""),
         time.strftime("%Y-%m-%d %H:%M", time.localtime(o["submitted_at"] or 0)),
         ", ".join(f"{n} {s}" for s, n in sorted(o["states"].items()))]
        for o in out
    ]
    print_table(("plan", "backend", "elements", "jobs", "submitted", "states"), rows)
    return 0
