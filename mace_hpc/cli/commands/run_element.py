"""`mace run-element MANIFEST [--index N] [--stage NAME]`: run one array element (inside a job, or by
hand); for a multi-stage plan its stage NAME ($MACE_STAGE in a job), or every stage in order."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run-element", help="run one element of a submitted plan", description=__doc__)
    p.add_argument("manifest", help="the submission's manifest.json ($MACE_MANIFEST in a job)")
    p.add_argument("--index", type=int, help="element index (default: SLURM_ARRAY_TASK_ID / PBS_ARRAY_INDEX / PBS_ARRAYID)")
    p.add_argument("--stage", help="the stage to run (multi-stage plans; default: $MACE_STAGE, else every stage in order)")
    p.add_argument("--no-epilogue", action="store_true", help="do not merge/archive when the element ends")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from ...element.run import run_element

    return run_element(args.manifest, args.index, stage=args.stage, run_epilogue=not args.no_epilogue)
