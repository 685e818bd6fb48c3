"""`mace-submit plan.json`: one isolated context per element, submitted as job arrays.

With the local backend (the default) the elements run here and the merged results are printed.
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("submit", help="submit a plan as job arrays (mace-submit)", description=__doc__)
    p.add_argument("plan", help="plan file (JSON or YAML)")
    p.add_argument("--site", metavar="NAME|PATH", help="site config (site-configs/NAME.yaml or a path)")
    p.add_argument("--backend", choices=("local", "slurm", "pbs"), help="default: site config, then local")
    p.add_argument("--isolation-mode", choices=("isolated", "shared"), help="default: plan, then config")
    p.add_argument("--max-parallel", type=int, metavar="N", help="elements running at once (the %%N throttle)")
    p.add_argument("--dry-run", action="store_true", help="show contexts, env, job script, command; create nothing")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=_run)


def _dry_run_text(result, limit: int = 3) -> str:  # noqa: ANN001
    sub = result.submission
    lines = [f"plan {sub.name}: {len(sub.entries)} elements, backend {result.backend}, "
             f"isolation {sub.isolation_mode}, {len(result.requests)} array(s)"]
    for entry in sub.entries[:limit]:
        lines.append(f"  [{entry['index']}] MACE_WORKFLOW_ID={entry['workflow_id']}  context {entry['context_dir']}")
    if len(sub.entries) > limit:
        lines.append(f"  ... and {len(sub.entries) - limit} more elements")
    for (script, argv), req in zip(result.rendered, result.requests, strict=False):
        lines.append(f"--- job script (array offset {req.index_offset}) ---")
        lines.append(script.rstrip())
        lines.append(f"--- submit command: {' '.join(argv)}")
    lines.append("dry run: nothing was created or submitted")
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    import sys

    from ...submission.submit import submit_plan
    from ..output import Progress, print_json, print_table

    backend = args.backend
    progress = None if args.json else Progress("elements")
    result = submit_plan(
        args.plan, site=args.site, backend=backend, isolation_mode=args.isolation_mode,
        max_parallel=args.max_parallel, dry_run=args.dry_run, progress=progress,
    )
    sub = result.submission
    if args.dry_run:
        if args.json:
            print_json({"plan": sub.name, "backend": result.backend, "elements": sub.entries,
                        "scripts": [s for s, _ in result.rendered], "commands": [a for _, a in result.rendered]})
        else:
            print(_dry_run_text(result))
        return 0
    if result.backend != "local":
        if args.json:
            print_json({**result.record, "seconds": result.seconds})
        else:
            print(f"submitted {sub.name}: {len(sub.entries)} elements as {len(result.job_ids)} array(s): "
                  f"{' '.join(result.job_ids)} ({result.seconds:.2f} s); follow with `mace status {sub.name}`")
        return 0
    from ...status.collect import element_states, summarize
    from ...status.results import results_table

    rows = element_states(sub.manifest())
    counts = summarize(rows)
    ok = all(r.get("run_state") == "COMPLETED" for r in rows)
    if args.json:
        print_json({**result.record, "states": counts, "succeeded": ok, "seconds": result.seconds,
                    "elements": [{k: r.get(k) for k in ("index", "workflow_id", "state", "message")} for r in rows]})
        return 0 if ok else 1
    from ...plan import plan_from_any

    plan = plan_from_any(args.plan)
    material_ids = [m["material_id"] for e in plan.elements for m in e.materials]
    headers, table = results_table(sub.shared_database, material_ids)
    if table:
        print(f"results merged into {sub.shared_database}:")
        print_table(headers, table)
    for r in rows:
        if r.get("run_state") != "COMPLETED":
            print(f"element {r['index']} ({r['workflow_id']}): {r['state']} {r.get('message', '')}", file=sys.stderr)
    state_text = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    print(f"{sub.name}: {len(rows)} elements ({state_text}) in {result.seconds:.1f} s")
    return 0 if ok else 1
