"""`mace resubmit PLAN [--failed | --elements 3,7,12]`: run only those elements again.

They go out as one sparse array (`--array=3,7,12`) into their existing contexts: each resumes by
workflow id, skips the steps it completed, and counts the attempt in its state file.
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("resubmit", help="rerun failed (or chosen) elements of a plan", description=__doc__)
    p.add_argument("target", metavar="PLAN|JOBID", help="plan name or any of its job ids")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--failed", action="store_true", help="the FAILED, TIMEOUT and CANCELLED elements (default)")
    which.add_argument("--elements", metavar="LIST", help="element indices, e.g. 3,7,12 or 0-4,9")
    p.add_argument("--max-parallel", type=int, metavar="N", help="default: as first submitted")
    p.add_argument("--site", metavar="NAME|PATH", help="site config (for its scratch_root)")
    p.add_argument("--dry-run", action="store_true",
                   help="with --failed: show what the plan's retry policy would decide now (cause, new "
                        "resources or why not); queue nothing")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from ...config import load_config
    from ...submission.control import resubmit
    from ..output import Progress, print_json

    if args.dry_run:
        return _dry_run(args)
    progress = None if args.json else Progress("elements")
    cfg = load_config(site=args.site)
    result = resubmit(args.target, elements=args.elements, max_parallel=args.max_parallel, cfg=cfg, progress=progress)
    if args.json:
        print_json({k: v for k, v in result.__dict__.items() if k != "record"})
        return 0
    for warning in result.warnings:
        print(f"mace resubmit: warning: {warning}")
    if not result.indices:
        print(f"{result.plan}: nothing to resubmit (no FAILED, TIMEOUT or CANCELLED elements)")
        return 0
    shown = ",".join(map(str, result.indices[:20])) + (" ..." if len(result.indices) > 20 else "")
    if result.backend == "local":  # they ran here already: say how it went
        from ...status.reconcile import SUCCESS
        from ...submission.control import status_of

        report = status_of(result.plan, cfg)
        again = [r for r in report.rows if r["index"] in set(result.indices)]
        for r in again:
            print(f"element {r['index']} ({r['workflow_id']}): {r['state']} (attempt {r['attempts']}) {r['message']}")
        print(report.summary_line())
        return 0 if all(r["state"] in SUCCESS and r["run_state"] in SUCCESS for r in again) else 1
    print(" ".join(result.job_ids))
    print(
        f"resubmitted {len(result.indices)} element(s) of {result.plan} ({shown}) as "
        f"{len(result.job_ids)} array(s) {' '.join(result.job_ids)}; follow with `mace status {result.plan}`"
    )
    return 0


def _dry_run(args: argparse.Namespace) -> int:
    """The retry policy's decisions for the elements that ended badly, without acting on them."""
    from ...config import load_config
    from ...errors import InputError
    from ...submission.retry import retry_pass
    from ..output import print_json, print_table

    if args.elements:
        raise InputError("--dry-run: shows the retry policy's decisions for --failed elements; drop --elements")
    result = retry_pass(args.target, load_config(site=args.site), dry_run=True)
    if args.json:
        print_json(result.to_json())
        return 0
    if not result.decisions:
        print(f"{result.plan}: no ended element waits for a decision")
        return 0
    print_table(("index", "attempt", "cause", "decision", "resources", "why"), [
        (d.index, d.attempt, d.cause, d.action,
         ", ".join(f"{k} {d.old.get(k, '-')} -> {v}" for k, v in d.new.items() if d.old.get(k) != v) or "same",
         d.reason) for d in result.decisions])
    n = sum(1 for d in result.decisions if d.action == "retry")
    print(f"{result.plan}: {n} of {len(result.decisions)} element(s) would be retried (dry run: nothing queued)")
    return 0
