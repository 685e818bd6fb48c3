"""Finding the element from a scheduler hook that has no job environment, and running as its user.

The SLURM site `Epilog` runs as root with only SLURM_JOB_ID / SLURM_JOB_UID / SLURM_JOB_USER;
the PBS mom `epilogue` runs as root with the job id and user name as arguments. As root we read
nothing the user controls: we only look the user up in the password database and re-run
`mace epilogue --slurm-job ID` (or `--pbs-job ID`) as that user, with a clean environment
(subprocess `user=`/`group=`/`extra_groups=`, i.e. setuid after fork, like setpriv).

As the user, the job is resolved with one scheduler call: `scontrol show job -o ID` gives the
array job and task ids and the batch script path (`<scratch>/.submissions/<plan>/logs/*.sbatch`,
next to the manifest); `qstat -f ID` gives the job's Variable_List (MACE_MANIFEST,
MACE_INDEX_OFFSET). When those do not lead to a manifest, the user's submission records under the
configured scratch root are searched for the job id.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import load_config
from ..records import env as env_names
from ..records.layout import RECORD_FILE, SubmissionPaths, submissions_root
from ..records.manifest import Manifest, read_manifest
from ..records.submission import read_record
from ..schedulers.pbs.jobenv import subjob_of
from ..schedulers.slurm.jobenv import array_task_of, parse_scontrol, scontrol_job

__all__ = ["Located", "locate_pbs", "locate_slurm", "parse_scontrol", "run_as_user", "self_argv", "user_env"]


@dataclass
class Located:
    """The element a hook is about: its manifest (path + content) and index."""

    manifest_path: Path
    manifest: Manifest
    index: int
    indices: tuple[int, ...] = ()  # a packed task: every element it runs (else just `index`)

    @property
    def context_dir(self) -> Path:
        return Path(self.manifest.elements[self.index].context_dir)

    @property
    def context_dirs(self) -> list[Path]:
        return [Path(self.manifest.elements[i].context_dir) for i in self.indices or (self.index,)]


# ---------------------------------------------------------------------------- root side
def user_env(pw: pwd.struct_passwd) -> dict[str, str]:
    """The minimal environment a dropped-privilege epilogue gets (nothing from root's)."""
    return {
        "HOME": pw.pw_dir, "USER": pw.pw_name, "LOGNAME": pw.pw_name, "SHELL": pw.pw_shell or "/bin/sh",
        "PATH": os.environ.get("PATH") or "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
    }


def run_as_user(user: str | int, argv: list[str], timeout: float) -> int:
    """Run `argv` as `user` (name or uid) with its groups and a clean env; the exit code (or 0 on trouble).

    Running as root is refused for non-root jobs: only uid 0 jobs run as root.
    """
    try:
        pw = pwd.getpwuid(int(user)) if str(user).isdigit() else pwd.getpwnam(str(user))
    except (KeyError, ValueError):
        print(f"mace epilogue: unknown job user {user!r}; nothing done", file=sys.stderr)
        return 0
    cwd = pw.pw_dir if os.path.isdir(pw.pw_dir) else "/"
    kwargs: dict[str, Any] = {}
    if os.geteuid() == 0 and pw.pw_uid != 0:
        kwargs = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": os.getgrouplist(pw.pw_name, pw.pw_gid)}
    elif os.geteuid() not in (0, pw.pw_uid):
        print(f"mace epilogue: cannot act for user {pw.pw_name} as uid {os.geteuid()}", file=sys.stderr)
        return 0
    try:
        return subprocess.run(argv, env=user_env(pw), cwd=cwd, stdin=subprocess.DEVNULL, timeout=timeout,
                              **kwargs).returncode
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"mace epilogue: running as {pw.pw_name} failed: {exc}", file=sys.stderr)
        return 0


def self_argv(*args: str) -> list[str]:
    """This interpreter running `mace epilogue <args>` (root's installation, readable by users)."""
    return [sys.executable, "-m", "mace_hpc.cli.main", "epilogue", *args]


# ---------------------------------------------------------------------------- user side
def _from_submission_dir(sub_dir: Path, array_job: str, task: int) -> Located | None:
    paths = SubmissionPaths(sub_dir)
    record, manifest = read_record(paths.record), read_manifest(paths.manifest)
    if record is None or manifest is None:
        return None
    job = next((j for j in record.jobs if j.matches(array_job)), None)
    if job is None or not job.is_array:
        return None
    indices = [i for i in job.elements_of(task) if 0 <= i < len(manifest.elements)]
    if not indices:
        return None
    return Located(paths.manifest, manifest, indices[0], tuple(indices))


def _search_records(array_job: str, task: int, scratch_root: Path | None = None) -> Located | None:
    if scratch_root is None:
        try:
            scratch_root = load_config().path("scratch_root").absolute()
        except Exception:  # noqa: BLE001
            return None
    base = submissions_root(scratch_root)
    for rec in sorted(base.glob(f"*/{RECORD_FILE}")) if base.is_dir() else []:
        found = _from_submission_dir(rec.parent, array_job, task)
        if found:
            return found
    return None


def locate_slurm(job_id: str, info: Mapping[str, str] | None = None) -> Located | None:
    """The element of SLURM job `job_id` (an array task's own id or `123_4`), or None (not ours)."""
    info = scontrol_job(job_id) if info is None else info
    found = array_task_of(info, os.getuid())
    if found is None:
        return None  # not an array element: a plain job (our backstop merges by itself) or not ours
    array_job, task, command = found
    script = Path(command)
    if script.parent.name == "logs" and script.parent.parent.parent.name == ".submissions":
        located = _from_submission_dir(script.parent.parent, array_job, task)
        if located:
            return located
    return _search_records(array_job, task)


def locate_pbs(job_id: str) -> Located | None:
    """The element of PBS subjob `job_id` (`123[4].server` / Torque `123-4`), or None."""
    found = subjob_of(job_id)
    if found is None:
        return None
    seq, task, variables = found
    manifest_path = variables.get(env_names.MANIFEST)
    if manifest_path:
        located = _from_submission_dir(Path(manifest_path).parent, seq, task)
        if located:
            return located
        manifest = read_manifest(manifest_path)
        offset = int(variables.get(env_names.INDEX_OFFSET, "0") or 0)
        if manifest is not None and 0 <= task + offset < len(manifest.elements):
            return Located(Path(manifest_path), manifest, task + offset)
    return _search_records(seq, task)
