"""`mace report PLAN|JOBID [-o report.html] [--json] [--refresh]`: one self-contained HTML page of a
submission (states, timeline, runtime and memory, the merged results with plots, the plan's
analysis) that opens offline from a copied file. Built from the state files and the shared
database: no scheduler call unless --refresh. --json prints the same data for other tools.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPORT_FILE = "report.html"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="one offline HTML report of a submitted plan", description=__doc__)
    p.add_argument("target", metavar="PLAN|JOBID", help="plan name or any of its job ids")
    p.add_argument("-o", "--output", metavar="FILE", help=f"where to write the page (default: the submission's {REPORT_FILE})")
    p.add_argument("--json", action="store_true", help="also print the report's data as JSON on stdout")
    p.add_argument("--refresh", action="store_true", help="ask the scheduler once for elements still queued or running")
    p.add_argument("--efficiency", action="store_true",
                   help="per element: elapsed vs requested time, MaxRSS vs requested mem, CPU efficiency, "
                        "core-hours used/wasted (one sacct call), p50/p95 and recommended time/mem; no page")
    p.add_argument("--site", metavar="NAME|PATH", help="site config (for its scratch_root)")
    p.set_defaults(handler=_run)


def _efficiency(args: argparse.Namespace) -> int:
    from ...config import load_config
    from ...schedulers.base import get_accounting
    from ...status.efficiency import efficiency_report
    from ...submission.control import find_submission
    from ..output import print_json, print_table

    _, record, manifest = find_submission(args.target, load_config(site=args.site))
    data = efficiency_report(record, manifest, get_accounting(record.backend, record.scheduler))
    if args.json:
        print_json(data, compact=True)
        return 0

    def num(v: float | None, scale: float = 1.0, digits: int = 0) -> str:
        return "-" if v is None else f"{v / scale:.{digits}f}"

    print_table(("index", "job", "state", "elapsed/limit s", "MaxRSS/req MiB", "cpu eff", "core-h", "wasted"), [
        (r["index"], r["job_id"] or "-", r["state"], f"{num(r['elapsed_s'])}/{num(r['time_limit_s'])}",
         f"{num(r['max_rss_bytes'], 1 << 20)}/{num(r['req_mem_bytes'], 1 << 20)}", num(r["cpu_efficiency"], 0.01) + "%"
         if r["cpu_efficiency"] is not None else "-", num(r["core_hours"], digits=3), num(r["core_hours_wasted"], digits=3))
        for r in data["elements"]])
    s = data["summary"]
    p = s["percentiles"]
    print(f"{data['plan']}: {s['completed']} of {s['elements']} completed; core-hours {s['core_hours']:.3f} used, "
          f"{s['core_hours_wasted']:.3f} wasted")
    print(f"elapsed p50/p95: {num(p['elapsed_s']['p50'])}/{num(p['elapsed_s']['p95'])} s; MaxRSS p50/p95: "
          f"{num(p['max_rss_bytes']['p50'], 1 << 20)}/{num(p['max_rss_bytes']['p95'], 1 << 20)} MiB; "
          f"CPU efficiency p50: {num(p['cpu_efficiency']['p50'], 0.01)}%")
    rec = s["recommended"]
    print(f"recommended: time {rec['time'] or '-'} min, mem {rec['mem'] or '-'} (p95 + {rec['margin']:.0%}; "
          f"requested: time {data['requested']['time']} min, mem {data['requested']['mem'] or '-'}); "
          f"apply with `mace-submit PLAN --rightsize`")
    if rec["pack"]:
        print(f"short elements (elapsed p50 {num(p['elapsed_s']['p50'], digits=1)} s): pack them, "
              f"`\"pack\": {rec['pack']}` in the plan (tasks of about a minute; docs/plan-format.md, \"When to pack\")")
    if data["scheduler_error"]:
        print(f"scheduler accounting not read ({data['scheduler_error']}): figures from the runner's records")
    return 0


def _run(args: argparse.Namespace) -> int:
    from ...config import load_config
    from ...errors import InputError
    from ...records.layout import SubmissionPaths
    from ...schedulers.base import get_backend
    from ...status.report import write_report
    from ...status.report_data import analysis_lines, build_report_data
    from ...submission.control import find_submission
    from ..output import print_json

    if args.efficiency:
        return _efficiency(args)
    directory, record, manifest = find_submission(args.target, load_config(site=args.site))
    out = Path(args.output).expanduser() if args.output else Path(directory) / REPORT_FILE
    if not out.parent.is_dir():
        raise InputError(f"-o {args.output}: directory {out.parent} does not exist; create it or choose another path")
    backend = get_backend(record.backend) if args.refresh else None
    data = build_report_data(SubmissionPaths(Path(directory)), record, manifest, backend)
    path = write_report(data, out)
    if args.json:
        print_json(data)
    else:
        for line in analysis_lines(data["analysis"]):
            print(line)
    print(f"report: {path.resolve()} ({data['total']} elements, {len(data['results']['rows'])} materials)",
          file=sys.stderr if args.json else sys.stdout)
    return 0
