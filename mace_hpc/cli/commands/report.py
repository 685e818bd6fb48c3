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
    p.add_argument("--site", metavar="NAME|PATH", help="site config (for its scratch_root)")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from ...config import load_config
    from ...errors import InputError
    from ...records.layout import SubmissionPaths
    from ...schedulers.base import get_backend
    from ...status.report import write_report
    from ...status.report_data import analysis_lines, build_report_data
    from ...submission.control import find_submission
    from ..output import print_json

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
