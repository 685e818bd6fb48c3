"""`mace run-element MANIFEST [--index N] [--stage NAME]`: run one array element (inside a job, or by
hand); for a multi-stage plan its stage NAME ($MACE_STAGE in a job), or every stage in order.
The same command line and code as `python -m mace_hpc.element` (element/arguments.py)."""

from __future__ import annotations

import argparse

from ...element.arguments import DESCRIPTION, add_arguments


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run-element", help="run one element of a submitted plan", description=DESCRIPTION)
    add_arguments(p).set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from ...element.run import run_parsed

    return run_parsed(args)
