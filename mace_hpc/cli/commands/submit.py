"""`mace-submit plan.json`: one isolated context per element, submitted as job arrays.

With the local backend (the default) the elements run here and the merged results are printed.
On a cluster the job ids and a one-line summary are printed; follow with `mace status PLAN`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

DRY_RUN_ELEMENTS = 3  # elements shown in full by --dry-run; the rest are counted


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("submit", help="submit a plan as job arrays (mace-submit)", description=__doc__)
    p.add_argument("plan", help="plan file (JSON or YAML)")
    p.add_argument("--site", metavar="NAME|PATH", help="site config (site-configs/NAME.yaml or a path)")
    p.add_argument("--backend", choices=("local", "slurm", "pbs"), help="default: site config, then local")
    p.add_argument("--isolation-mode", choices=("isolated", "shared"), help="default: plan, then config")
    p.add_argument("--max-parallel", type=int, metavar="N", help="elements running at once (the %%N throttle)")
    p.add_argument("--dry-run", action="store_true", help="show contexts, env, job script, command; create nothing")
    p.add_argument(
        "--no-submit", action="store_true",
        help="create the contexts and manifest only; submit yourself (jobscripts/slurm-array.sh)",
    )
    p.add_argument("--rightsize", action="store_true",
                   help="set resources time/mem from what the plan's previous submission used "
                        "(`mace report PLAN --efficiency`: p95 + 25%%)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=_run)


def dry_run_data(result: Any, limit: int | None = DRY_RUN_ELEMENTS) -> dict[str, Any]:
    """What --dry-run shows: every element's identity and env (or the first few), scripts, commands."""
    from ...element.run import step_env

    sub, plan = result.submission, result.plan
    shown = sub.entries if limit is None else sub.entries[:limit]
    base_env = result.requests[0].env if result.requests else {}
    elements = []
    for entry in shown:
        element = plan.elements[entry.index]
        req = next((r for r in result.requests if entry.index in (r.indices or [])), None)
        env = {**(req.env if req else base_env),
               **step_env(sub.isolation_mode, entry.workflow_id, Path(entry.context_dir), element.to_dict())}
        elements.append({**entry.to_dict(), "env": env})
    return {
        "plan": sub.name,
        "backend": result.backend,
        "isolation_mode": sub.isolation_mode,
        "total_elements": len(sub.entries),
        "elements": elements,
        "arrays": [
            {"index_offset": req.index_offset, "task_ids": len(req.task_ids()), "script": script, "command": argv,
             **({"pack": req.pack, "lanes": req.lanes, "elements": len(set(req.indices or [])),
                 "tasks": {str(t): req.elements_of(t) for t in req.task_ids()[:limit or None]}} if req.pack > 1 else {}),
             **({"stage": req.stage, "after": [result.requests[u].stage for u in req.after]} if req.stage else {})}
            for (script, argv), req in zip(result.rendered, result.requests, strict=True)
        ],
        "created": False,
    }


def dry_run_text(data: dict[str, Any]) -> str:
    import shlex

    from ...records.pack import task_count

    n, arrays = data["total_elements"], data["arrays"]
    lines = [
        f"plan {data['plan']}: {n} elements, backend {data['backend']}, isolation {data['isolation_mode']}, "
        f"{len(arrays)} array(s)"
    ]
    stages: dict[str, list[dict[str, Any]]] = {}
    for a in arrays:
        if a.get("stage"):
            stages.setdefault(a["stage"], []).append(a)
    for a in arrays[:1]:
        if a.get("pack"):
            tasks = list(a["tasks"].items())
            first = ", ".join(f"task {t}: elements {','.join(map(str, e))}" for t, e in tasks[:3])
            more = ", ..." if len(tasks) > 3 or len(tasks) < a["task_ids"] else ""
            lanes = int(a.get("lanes") or 1)
            how = f"{lanes} at once (its cpus)" if lanes > 1 else "one after another"
            lines.append(f"packed: {a['pack']} elements per array task, {how} ({first}{more}); "
                         f"the throttle counts tasks; a task's time limit is {task_count(a['pack'], lanes)}x an element's")
    for name, chunks in stages.items():
        after = sorted(set(chunks[0]["after"]))
        how = f", after stage {', '.join(after)} element by element" if after else ""
        lines.append(f"stage {name}: {len(chunks)} array(s){how}")
    for e in data["elements"]:
        lines.append(f"element {e['index']}: workflow id {e['workflow_id']}")
        lines.append(f"  context {e['context_dir']}")
        lines += [f"  {k}={shlex.quote(v)}" for k, v in sorted(e["env"].items())]
    if n > len(data["elements"]):
        lines.append(f"... and {n - len(data['elements'])} more elements (--dry-run --json lists them all)")
    for k, a in enumerate(arrays):
        if k == 0 or len(arrays) <= 3 or a.get("stage") != arrays[k - 1].get("stage"):
            stage = f"stage {a['stage']}, " if a.get("stage") else ""
            at_once = f", {a['lanes']} at once" if int(a.get("lanes") or 1) > 1 else ""
            packed = f" running {a['elements']} elements, {a['pack']} per task{at_once}" if a.get("pack") else ""
            lines.append(f"--- job script {k + 1}/{len(arrays)} ({stage}index offset {a['index_offset']}, "
                         f"{a['task_ids']} tasks{packed}) ---")
            lines.append(a["script"].rstrip())
        else:
            lines.append(
                f"--- job script {k + 1}/{len(arrays)}: as above with index offset {a['index_offset']} and "
                f"{a['task_ids']} tasks (--dry-run --json shows it)"
            )
        lines.append(f"--- submit: {shlex.join(a['command'])}")
    lines.append("dry run: nothing was created or submitted")
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    import sys

    from ...submission.submit import submit_plan
    from ..output import Progress, print_json

    progress = None if args.json else Progress("elements")
    plan: Any = args.plan
    if args.rightsize:
        from ...config import load_config
        from ...plan import plan_from_any
        from ...submission.rightsize import rightsize

        plan, note = rightsize(plan_from_any(args.plan), load_config(site=args.site))
        print(f"mace-submit: {note}", file=sys.stderr)
    result = submit_plan(
        plan, site=args.site, backend=args.backend, isolation_mode=args.isolation_mode,
        max_parallel=args.max_parallel, dry_run=args.dry_run, prepare_only=args.no_submit, progress=progress,
    )
    sub = result.submission
    if args.dry_run:
        if args.json:
            print_json(dry_run_data(result, limit=None))
        else:
            print(dry_run_text(dry_run_data(result)))
        return 0
    for warning in result.warnings:
        print(f"mace-submit: warning: {warning}", file=sys.stderr)
    if args.no_submit:
        if args.json:
            print_json({**result.record.to_dict(), "seconds": result.seconds})
        else:
            n = len(sub.entries)
            print(f"prepared {sub.name}: {n} contexts under {sub.scratch_root}, nothing submitted")
            print(f"MACE_MANIFEST={sub.manifest_path}")
            print(
                f"submit it yourself, e.g.: MACE_MANIFEST={sub.manifest_path} "
                f"sbatch --array=0-{n - 1}%{result.record.max_parallel} jobscripts/slurm-array.sh"
            )
        return 0
    if result.backend != "local":
        if args.json:
            print_json({**result.record.to_dict(), "seconds": result.seconds})
        else:
            print(" ".join(result.job_ids))
            backstop = f", backstop merge job {result.backstop_job_id}" if result.backstop_job_id else ""
            print(
                f"submitted {sub.name}: {len(sub.entries)} elements as {len(result.job_ids)} array(s) "
                f"{' '.join(result.job_ids)} (at most {result.record.max_parallel} running){backstop} in "
                f"{result.seconds:.2f} s; follow with `mace status {sub.name}`"
            )
        return 0
    if result.plan is not None and result.plan.retry and not args.dry_run:
        from ...config import load_config
        from ...records.submission import read_record
        from ...submission.retry import local_retries

        for p in local_retries(sub.name, load_config(site=args.site, cli={"backend": "local"})):
            for d in p.decisions:
                print(f"mace-submit: element {d.index}: {d.summary()}", file=sys.stderr)
        result.record = read_record(sub.record_path) or result.record
    return _local_report(args, result)


def _local_report(args: argparse.Namespace, result: Any) -> int:
    """The local backend ran everything: states, and the merged results table."""
    import sys

    from ...status.reconcile import collect
    from ...status.report import write_report
    from ...status.report_data import analysis_lines, build_report_data
    from ...status.results import results_table
    from ..output import print_json, print_table
    from .report import REPORT_FILE

    sub = result.submission
    report = collect(result.record, sub.manifest(), None, query=False)
    ok = report.succeeded()
    page = build_report_data(sub.paths, result.record, sub.manifest())
    html = write_report(page, sub.paths.root / REPORT_FILE)
    if args.json:
        print_json({**result.record.to_dict(), "states": report.counts, "succeeded": ok, "seconds": result.seconds,
                    "elements": [{k: r.get(k) for k in ("index", "workflow_id", "state", "message")} for r in report.rows],
                    "analysis": page["analysis"], "report": str(html)})
        return 0 if ok else 1
    material_ids = [m["material_id"] for e in result.plan.elements for m in e.materials]
    headers, table = results_table(sub.shared_database, material_ids)
    if table:
        print(f"results merged into {sub.shared_database}:")
        print_table(headers, table)
    for r in report.rows:
        if r["run_state"] != "COMPLETED":
            print(f"element {r['index']} ({r['workflow_id']}): {r['state']} {r.get('message', '')}", file=sys.stderr)
    print("\n".join([f"{report.summary_line()} in {result.seconds:.1f} s", *report.stage_lines()]))
    for line in analysis_lines(page["analysis"]):
        print(line)
    print(f"report: {html} (open it in a browser; `mace report {sub.name}` rebuilds it)")
    return 0 if ok else 1
