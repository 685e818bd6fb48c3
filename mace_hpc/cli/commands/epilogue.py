"""`mace epilogue` / `mace-epilogue`: finalize one element (merge | archive | keep). Always exits 0.

Which element, first match wins:
  CONTEXT_DIR argument; --manifest M [--index N]; $MACE_CONTEXT_DIR; $MACE_MANIFEST with the
  array index from SLURM_ARRAY_TASK_ID / PBS_ARRAY_INDEX / PBS_ARRAYID (+ MACE_INDEX_OFFSET)
  (TaskEpilog, user epilogues); --slurm-job ID or, as root, $SLURM_JOB_ID + $SLURM_JOB_UID
  (site Epilog: drops to the job's user first); --pbs-job ID --user U (PBS mom epilogue, as root).
Not a mace-hpc job: says so and exits 0. See docs/epilogue.md for installing the hooks.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("epilogue", help="finalize one element (scheduler hooks; always exits 0)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("context", nargs="?", help="context directory (default: from the job environment)")
    p.add_argument("--manifest", help="a submission's manifest.json (with --index or the array env)")
    p.add_argument("--index", type=int, help="element index in the manifest")
    p.add_argument("--slurm-job", metavar="ID", help="SLURM job id of the element (site Epilog)")
    p.add_argument("--pbs-job", metavar="ID", help="PBS job id of the element (mom epilogue argv[1])")
    p.add_argument("--user", help="with --pbs-job as root: the job owner (mom epilogue argv[2])")
    p.add_argument("--on-complete", choices=("merge", "archive", "merge+archive", "keep"), help="override the policy")
    p.add_argument("--on-failure", choices=("keep", "archive"), help="override the policy")
    p.add_argument("--deadline", type=float, metavar="S", help="seconds before giving up (config epilogue_deadline)")
    p.add_argument("--ended", action="store_true",
                   help="the job is over (hooks): a RUNNING state means the runner was killed")
    p.add_argument("--no-retry", action="store_true",
                   help="leave PENDING_MERGE (an epilogue already tried) to the backstop / mace merge")
    p.add_argument("--json", action="store_true", help="print the resulting state as JSON")
    p.add_argument("--quiet", "-q", action="store_true", help="print nothing unless something went wrong")
    p.set_defaults(handler=_run)

    def never_fail(message: str) -> None:  # usage errors too: a hook must not drain a node
        p.exit(0, f"{p.prog}: error: {message} (ignored: the epilogue always exits 0)\n")

    p.error = never_fail  # type: ignore[method-assign]


def _say(args: argparse.Namespace, text: str) -> None:
    if not args.quiet:
        print(f"mace epilogue: {text}", file=sys.stderr)


def _run(args: argparse.Namespace) -> int:
    try:
        _dispatch(args)
    except BaseException as exc:  # noqa: BLE001 - never fail a node, whatever happened
        if isinstance(exc, SystemExit) and not exc.code:
            return 0
        print(f"mace epilogue: {type(exc).__name__}: {exc} (exit 0 regardless)", file=sys.stderr)
    return 0


def _dispatch(args: argparse.Namespace) -> None:
    from ...epilogue import sitehook
    from ...records import env as env_names
    from ...records.manifest import Manifest, load_manifest
    from ...schedulers import job_environment

    env = os.environ
    located: tuple[list[Path], Manifest | None] | None = None
    from_scheduler = False  # found through a job id: the job is over (site Epilog / PBS epilogue)
    if args.context:
        located = ([Path(args.context)], None)
    elif args.manifest or (not env.get(env_names.CONTEXT_DIR) and env.get(env_names.MANIFEST)):
        path = Path(args.manifest or env[env_names.MANIFEST]).absolute()
        job = job_environment(env)
        if args.index is None and job.pack() > 1:  # a packed task: every element it ran
            indices = job.packed_elements()
        else:
            index = job.element_index(args.index)
            if not args.manifest and job.is_filler(index):
                _say(args, f"index {index} was not submitted (covering range filler); nothing to do")
                return
            indices = [index]
        manifest = load_manifest(path)
        located = ([Path(manifest.entry(i, str(path)).context_dir) for i in indices], manifest)
    elif env.get(env_names.CONTEXT_DIR):
        located = ([Path(env[env_names.CONTEXT_DIR])], None)
    elif args.pbs_job:
        if os.geteuid() == 0 and args.user:
            argv = sitehook.self_argv("--pbs-job", args.pbs_job, "--ended", *_passthrough(args))
            sitehook.run_as_user(args.user, argv, timeout=_deadline(args) + 30)
            return
        from_scheduler = True
        found = sitehook.locate_pbs(args.pbs_job)
        if found is None:
            _say(args, f"PBS job {args.pbs_job} is not a mace-hpc element; nothing to do")
            return
        located = (found.context_dirs, found.manifest)
    elif args.slurm_job or (os.geteuid() == 0 and env.get("SLURM_JOB_ID")):
        job = args.slurm_job or env["SLURM_JOB_ID"]
        user = env.get("SLURM_JOB_UID") or env.get("SLURM_JOB_USER")
        if not args.slurm_job and user is not None and str(user) not in ("0", "root"):
            argv = sitehook.self_argv("--slurm-job", job, "--ended", *_passthrough(args))
            sitehook.run_as_user(user, argv, timeout=_deadline(args) + 30)
            return
        from_scheduler = True
        found = sitehook.locate_slurm(job)
        if found is None:
            _say(args, f"SLURM job {job} is not a mace-hpc element; nothing to do")
            return
        located = (found.context_dirs, found.manifest)
    if located is None:
        _say(args, "not a mace-hpc job (no context, manifest or job id); nothing to do")
        return
    for context_dir in located[0]:  # a packed task: each of its elements, one after another
        _finalize(args, context_dir, located[1], ended=args.ended or from_scheduler)


def _deadline(args: argparse.Namespace) -> float:
    if args.deadline:
        return float(args.deadline)
    try:
        from ...config import load_config

        return float(load_config()["epilogue_deadline"])
    except Exception:  # noqa: BLE001
        return 60.0


def _passthrough(args: argparse.Namespace) -> list[str]:
    out: list[str] = []
    for flag, value in (("--on-complete", args.on_complete), ("--on-failure", args.on_failure),
                        ("--deadline", args.deadline)):
        if value is not None:
            out += [flag, str(value)]
    return out + (["--quiet"] if args.quiet else []) + (["--no-retry"] if args.no_retry else [])


def _finalize(args: argparse.Namespace, context_dir: Path, manifest: Any, *, ended: bool) -> None:
    from ...epilogue.hook import run_epilogue
    from ...records.states import PENDING_MERGE, QUARANTINED
    from ..output import print_json

    result = run_epilogue(context_dir, manifest=manifest, on_complete=args.on_complete, on_failure=args.on_failure,
                          deadline=args.deadline, ended=ended, retry_pending=not args.no_retry, by="mace epilogue")
    if args.json:
        print_json(result.to_dict())
        return
    state = result.state
    text = f"{context_dir.name}: {state.state}"
    if result.outcome is not None and result.outcome.action != "skipped":
        text += f" ({result.outcome.action})"
    if state.pending_reason:
        text += f": {state.pending_reason}"
    if state.state in (PENDING_MERGE, QUARANTINED) or not args.quiet:
        print(f"mace epilogue: {text}", file=sys.stderr)
