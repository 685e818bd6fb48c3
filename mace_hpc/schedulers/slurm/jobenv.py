"""Inside a SLURM job: the array task id, the ids to record, requeue, and finding the element of a
job id from a site hook (which runs without the job's environment)."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Mapping

from ..jobenv import JobEnvironment

# patterns, compiled (and cached by `re`) when a site hook first asks: an element's start never does
_SLURM_ID = r"\d+(_\d+)?"
_KV = r"(\w+(?::\w+)?)=(.*?)(?=\s+\w+(?::\w+)?=|$)"
SCONTROL_TIMEOUT_S = 20.0


class SlurmJobEnv(JobEnvironment):
    name = "slurm"
    detect_var = "SLURM_JOB_ID"
    index_vars = ("SLURM_ARRAY_TASK_ID",)
    id_vars = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID")

    def task_key(self) -> str | None:
        """`<job id>.<restart count>`: what jobscripts/slurm-task-epilog.sh tests (a requeued task
        is a new run: its earlier marker does not count)."""
        job = self.environ.get("SLURM_JOB_ID")
        return f"{job}.{self.environ.get('SLURM_RESTART_COUNT') or 0}" if job and job.isdigit() else None

    def requeue_argv(self) -> list[str] | None:
        env = self.environ
        if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
            return ["scontrol", "requeue", f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"]
        if env.get("SLURM_JOB_ID"):
            return ["scontrol", "requeue", env["SLURM_JOB_ID"]]
        return None


def parse_scontrol(text: str) -> dict[str, str]:
    """`scontrol show job -o` (one line of Key=Value) -> dict; values may contain spaces."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return {m.group(1): m.group(2).strip() for m in re.finditer(_KV, line)}


def scontrol_job(job_id: str) -> dict[str, str]:
    """One `scontrol show job -o ID` (an array task's own id or `123_4`); {} when unknown."""
    if not re.fullmatch(_SLURM_ID, job_id):
        return {}
    try:
        proc = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True,
                              timeout=SCONTROL_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return {}
    return parse_scontrol(proc.stdout) if proc.returncode == 0 else {}


def array_task_of(info: Mapping[str, str], uid: int) -> tuple[str, int, str] | None:
    """(array job id, task id, batch script path) of a job `scontrol` described, when it is an
    array element owned by `uid` (root sees every job); None for plain or other users' jobs."""
    array_job, task = info.get("ArrayJobId"), info.get("ArrayTaskId")
    if not array_job or not task or not task.isdigit():
        return None
    if info.get("UserId") and not re.search(rf"\({uid}\)", info["UserId"]) and uid != 0:
        return None
    return array_job, int(task), info.get("Command", "")
