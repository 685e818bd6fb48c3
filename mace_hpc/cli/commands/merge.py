"""`mace merge [PLAN ... | --all]`: bring home every element whose run ended but is not merged/archived yet.

Picks up PENDING_MERGE (an epilogue could not finish), finished elements that never ran their
epilogue, and elements whose job ended while their state still says RUNNING (asks the scheduler
once per plan; `--ended` says every job is over, as in the backstop job). Applies the plan's
policies (or --on-complete / --on-failure), merging through one lock in batched transactions.
Idempotent: a second run finds nothing to do. Exit 1 if anything is left pending or quarantined.
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("merge", help="merge/archive every finished element not brought home yet",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("plans", nargs="*", metavar="PLAN", help="submitted plan name(s) (see `mace status`)")
    p.add_argument("--all", action="store_true", help="every submitted plan and stray context under the scratch root")
    p.add_argument("--scratch-root", help="default: config scratch_root")
    p.add_argument("--on-complete", choices=("merge", "archive", "merge+archive", "keep"), help="override the policy")
    p.add_argument("--on-failure", choices=("keep", "archive"), help="override the policy")
    p.add_argument("--lock-timeout", type=float, default=600.0, metavar="S",
                   help="seconds to wait for the shared database's merge lock (default 600)")
    p.add_argument("--ended", action="store_true",
                   help="every element's job is over: RUNNING means its runner was killed (backstop job)")
    p.add_argument("--json", action="store_true", help="machine-readable summary")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    import os
    import sys

    from ...epilogue.finalize import Options
    from ...epilogue.pending import merge_pending
    from ...errors import InputError
    from ..output import print_json, print_table

    if args.all and args.plans:
        raise InputError("mace merge: give plan names or --all, not both")
    by = "backstop" if os.environ.get("MACE_BACKSTOP") == "1" else "mace merge"
    opts = Options(args.on_complete, args.on_failure, lock_timeout=args.lock_timeout, ended=args.ended, by=by)
    summary = merge_pending(args.scratch_root, args.plans, all_plans=args.all, options=opts)
    if by == "backstop":  # after the merge: classify, retry with more resources, notify (no daemon)
        _retry_from_backstop(args.plans)
    if args.json:
        print_json(summary.to_dict())
    else:
        problems = summary.problems()
        if problems:
            print_table(("index", "workflow_id", "state", "reason"),
                        [(o.index, o.workflow_id, o.state, o.reason or "quarantined by an earlier run (see `mace status`)")
                         for o in problems])
        counts = summary.counts()
        done = {k: v for k, v in counts.items() if k not in ("skipped",)}
        text = ", ".join(f"{n} {k}" for k, n in sorted(done.items())) or "nothing to do"
        skipped = counts.get("skipped", 0)
        extra = f"; {skipped} already done or not finished" if skipped else ""
        conflicts = summary.conflicts()
        if conflicts:
            extra += f"; {conflicts} material conflict(s) kept the shared version (see `mace status`)"
        plans = ", ".join(summary.plans) or "no plans"
        print(f"mace merge ({plans}): {text}{extra}", file=sys.stdout)
    return 1 if summary.problems() else 0


def _retry_from_backstop(plans: list[str]) -> None:
    """The backstop's retry pass for each plan; its failure is printed, never raised (the merge
    above is the backstop's first duty, and an element's results must never wait on a retry)."""
    import sys

    from ...submission.retry import backstop_retry

    for plan in plans:
        try:
            result = backstop_retry(plan)
        except Exception as exc:  # noqa: BLE001 - one line in the backstop's log
            print(f"mace merge: retry pass of {plan} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        if result is None:
            continue
        for d in result.decisions:
            print(f"mace merge: element {d.index}: {d.summary()}")
        for line in result.warnings + [f"notified {n}" for n in result.notified]:
            print(f"mace merge: {line}")
