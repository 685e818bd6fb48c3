"""`mace cancel PLAN|JOBID`: cancel every array of a submission; its elements become CANCELLED.

Elements still queued are marked CANCELLED at once; running ones receive the scheduler's signal
and record CANCELLED themselves (and run their epilogue).
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cancel", help="cancel a submitted plan's job arrays", description=__doc__)
    p.add_argument("target", metavar="PLAN|JOBID", help="plan name or any of its job ids")
    p.add_argument("--site", metavar="NAME|PATH", help="site config (for its scratch_root)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from ...config import load_config
    from ...submission.control import cancel
    from ..output import print_json

    result = cancel(args.target, load_config(site=args.site))
    if args.json:
        print_json(result.__dict__)
    else:
        print(
            f"cancelled {result.plan}: jobs {' '.join(result.job_ids) or 'none'}; {result.marked} queued "
            f"element(s) marked CANCELLED, {result.running} running element(s) signalled"
        )
    return 0
