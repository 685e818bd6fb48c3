"""`mace workflow --isolation-mode MODE --execute plan.json`: run a plan here, now."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("workflow", help="execute a workflow plan on this machine", description=__doc__)
    p.add_argument("--execute", metavar="PLAN", required=True, help="plan file (JSON or YAML)")
    p.add_argument("--isolation-mode", choices=("isolated", "shared"), help="default: from config (shared)")
    p.add_argument("--max-parallel", type=int, metavar="N", help="elements at once (default: plan, then config)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from ...workflow.executor_contextual import ContextualWorkflowExecutor
    from ..output import Progress, print_json, print_table

    executor = ContextualWorkflowExecutor(
        args.isolation_mode, max_parallel=args.max_parallel, progress=None if args.json else Progress("elements")
    )
    summary = executor.execute_workflow_plan(args.execute)
    if args.json:
        print_json(summary)
    else:
        print_table(
            ("index", "workflow_id", "state", "message"),
            [(r["index"], r["workflow_id"], r["state"], r.get("message") or "") for r in summary["results"]],
        )
        counts = ", ".join(f"{n} {s}" for s, n in sorted(summary["states"].items()))
        print(f"{summary['plan']}: {summary['elements']} elements ({counts}) in {summary['seconds']} s; "
              f"results in {summary['shared_database']}")
        for name, stage in summary.get("stages", {}).items():
            print(f"  stage {name}: " + ", ".join(f"{n} {s}" for s, n in sorted(stage["states"].items())))
    return 0 if summary["succeeded"] else 1
