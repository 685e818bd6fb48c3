"""The backstop merge job: one plain job per submission, run after every array element has ended.

Per-element epilogues can fail to bring results home (shared-database lock held past their
deadline, a node killed mid-merge, an element killed hard at its time limit). They leave a
PENDING_MERGE record instead (or a stale RUNNING state). The backstop job, submitted with
`--dependency=afterany:<every array job id>`, runs `mace merge <plan> --ended` once all of them
are done and picks up exactly those elements; the exactly-once ledger makes a second merge of an
element the epilogue already merged a no-op, so the backstop never needs to know what happened.

Usage (submission/submit.py, slurm and pbs backends, after the arrays are queued):

    req = backstop_request(sub.name, result.job_ids, scratch_root=sub.scratch_root,
                           work_dir=sub.directory / "logs", scheduler=requests[0].scheduler,
                           elements=len(sub.entries))
    job_id = be.submit(req)
    record = record.with_jobs([backstop_record(job_id, result.job_ids)])

The local backend needs no backstop: `submit` returns after every element, so it can call
`mace_hpc.epilogue.pending.merge_pending(scratch_root, [plan_name])` directly if it wants a sweep.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..records import env as env_names
from ..records.submission import BACKSTOP, JobEntry
from ..schedulers.base import ArrayRequest, check_job_name
from ..util.ids import validate_workflow_id

BACKSTOP_SUFFIX = "-merge"
# scheduler keys a merge job inherits from the plan's: where and as whom it may run, and how to
# find the right python. Not gres/mem/cpus (a merge needs no GPU) nor requeue.
_INHERITED = ("partition", "account", "qos", "setup", "python", "pbs_flavor")


# SLURM array ids are digits; PBS ones look like 123[].server (each backend translates "afterany:")
_JOB_ID_RE = re.compile(r"^[0-9]+(\[\])?(\.[A-Za-z0-9._-]+)?$")

def backstop_time_minutes(elements: int) -> int:
    """A generous limit for merging `elements` contexts (> 1,000/s measured; 10 min floor)."""
    return max(10, 10 + math.ceil(elements / 1000))


def backstop_command(plan_name: str, python: str | None = None) -> list[str]:
    """`python -m mace_hpc.cli.main merge <plan> --ended`: argv, never a shell string."""
    return [python or sys.executable, "-m", "mace_hpc.cli.main", "merge", plan_name, "--ended"]


def backstop_request(
    plan_name: str,
    job_ids: Sequence[str],
    *,
    scratch_root: str | Path,
    work_dir: str | Path,
    scheduler: Mapping[str, Any] | None = None,
    elements: int = 0,
    extra_env: Mapping[str, str] | None = None,
    max_time: int | None = None,
) -> ArrayRequest:
    """The backstop merge job for a submitted plan, as an ArrayRequest with `indices=None`.

    `job_ids`: every array job id of the submission (all chunks); the job depends on
    `afterany:<id>:<id>...` so it runs once, after all their elements ended however they ended.
    `scheduler`: the arrays' scheduler dict; only partition/account/qos/setup/python are kept.
    `max_time`: the partition's MaxTime in minutes, when it has one.
    The job gets `MACE_SCRATCH_ROOT` so `mace merge` finds the submission record wherever the
    user's default config points.
    """
    validate_workflow_id(plan_name, "plan name")
    ids = [str(j).strip() for j in job_ids]
    if not ids or not all(_JOB_ID_RE.fullmatch(j) for j in ids):
        raise ValueError(f"backstop needs the array job ids (123 or 123[].server), got {list(job_ids)!r}")
    sched = {k: v for k, v in (scheduler or {}).items() if k in _INHERITED and v is not None}
    # never above the partition's MaxTime: SLURM would leave it pending (PartitionTimeLimit) forever
    minutes = backstop_time_minutes(elements)
    sched.update(time=min(minutes, max_time) if max_time else minutes, cpus=1, requeue=False, signal_margin=60)
    env = {env_names.SCRATCH_ROOT: str(Path(scratch_root).absolute()), env_names.BACKSTOP: "1"}
    env.update(extra_env or {})
    name = check_job_name(f"{plan_name}{BACKSTOP_SUFFIX}"[:128])
    return ArrayRequest(
        name=name,
        indices=None,
        max_parallel=1,
        command=backstop_command(plan_name, sched.get("python")),
        env=env,
        work_dir=Path(work_dir),
        scheduler=sched,
        dependency="afterany:" + ":".join(dict.fromkeys(ids)),
    )


def backstop_record(job_id: str, depends_on: Sequence[str]) -> JobEntry:
    """The entry for record.json's `jobs` list; `kind: backstop` so status skips it as an array."""
    return JobEntry(str(job_id), kind=BACKSTOP, depends_on=tuple(str(j) for j in depends_on))
