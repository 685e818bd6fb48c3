"""The element runner's command line, shared by `python -m mace_hpc.element` (what job scripts
run) and `mace run-element` (what a user's own array script runs): one parser, so both accept
the same arguments and run the same code (`element.run.run_parsed`). Only argparse here: `mace
--help` builds this without importing the runner."""

from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse

DESCRIPTION = ("Run one element of a submitted plan (inside an array job, or by hand with --index); for a "
               "multi-stage plan its stage ($MACE_STAGE in a job), or every stage in order.")


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    import argparse  # lazy: a job script's own command line is read without it (plain_arguments)

    parser.add_argument("manifest", help="the submission's manifest.json (exported as $MACE_MANIFEST)")
    parser.add_argument("--index", type=int, help="element index (default: from the scheduler's array env: "
                        "SLURM_ARRAY_TASK_ID / PBS_ARRAY_INDEX / PBS_ARRAYID, plus MACE_INDEX_OFFSET)")
    parser.add_argument("--task", type=int, help="packed arrays: the array task to run (its elements one "
                        "after another; default: from the scheduler's array env)")
    parser.add_argument("--lane", type=int, help=argparse.SUPPRESS)  # a laned pack's lane (element/lanes.py)
    parser.add_argument("--claims", help=argparse.SUPPRESS)  # ... and the directory its lanes share
    parser.add_argument("--stage", help="the stage to run (multi-stage plans; default: $MACE_STAGE, "
                        "else every stage in order)")
    parser.add_argument("--settle-stage", metavar="NAME", help="after stage NAME's arrays ended (the settle job): "
                        "record its elements that did not record an end, skip and cancel what waits for them")
    parser.add_argument("--jobs", default="", help="with --settle-stage: the stage's array job ids (comma-separated)")
    parser.add_argument("--no-epilogue", action="store_true", help="do not merge/archive when the element ends")
    return parser


def plain_arguments(argv: list[str]) -> SimpleNamespace | None:
    """What `add_arguments`' parser makes of the command lines job scripts run, `MANIFEST` and
    `MANIFEST --index N` (N digits), and the local backend's, the same plus `--no-epilogue`,
    without importing argparse (~3% of an element's start under `python -S`, ~1 ms per element in
    a local worker); None for any other command line, which argparse reads with its checks and messages."""
    no_epilogue = argv[-1:] == ["--no-epilogue"]
    if no_epilogue:
        argv = argv[:-1]
    if len(argv) == 1:
        index = None
    elif len(argv) == 3 and argv[1] == "--index" and argv[2].isascii() and argv[2].isdigit():
        index = int(argv[2])
    else:
        return None
    if not argv[0] or argv[0].startswith("-"):
        return None  # an option where the manifest goes, or an empty one: argparse says what is wrong
    return SimpleNamespace(manifest=argv[0], index=index, task=None, lane=None, claims=None, stage=None,
                           settle_stage=None, jobs="", no_epilogue=no_epilogue)
