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
import re
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..util.atomic import read_json

_SLURM_ID = re.compile(r"^\d+(_\d+)?$")
_KV = re.compile(r"(\w+(?::\w+)?)=(.*?)(?=\s+\w+(?::\w+)?=|$)")
SCHEDULER_TIMEOUT_S = 20.0


@dataclass
class Located:
    """The element a hook is about: its manifest (path + content) and index."""

    manifest_path: Path
    manifest: dict[str, Any]
    index: int

    @property
    def context_dir(self) -> Path:
        return Path(self.manifest["elements"][self.index]["context_dir"])


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


# ---------------------------------------------------------------------------- user side: SLURM
def parse_scontrol(text: str) -> dict[str, str]:
    """`scontrol show job -o` (one line of Key=Value) -> dict; values may contain spaces."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return {m.group(1): m.group(2).strip() for m in _KV.finditer(line)}


def scontrol_job(job_id: str) -> dict[str, str]:
    if not _SLURM_ID.fullmatch(job_id):
        return {}
    try:
        proc = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True,
                              timeout=SCHEDULER_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return {}
    return parse_scontrol(proc.stdout) if proc.returncode == 0 else {}


def _record_offset(record: Mapping[str, Any], job_id: str) -> tuple[bool, int]:
    """(listed as an array of this submission, its index offset)."""
    for job in record.get("jobs") or []:
        if isinstance(job, dict) and str(job.get("job_id", "")).split(".")[0].split("[")[0] == job_id:
            return job.get("kind", "array") == "array", int(job.get("offset") or 0)
    return False, 0


def _from_submission_dir(sub_dir: Path, array_job: str, task: int) -> Located | None:
    record = read_json(sub_dir / "record.json")
    manifest = read_json(sub_dir / "manifest.json")
    if not isinstance(record, dict) or not isinstance(manifest, dict):
        return None
    is_array, offset = _record_offset(record, array_job)
    if not is_array:
        return None
    index = task + offset
    elements = manifest.get("elements") or []
    if not 0 <= index < len(elements):
        return None
    return Located(sub_dir / "manifest.json", manifest, index)


def _search_records(array_job: str, task: int, scratch_root: Path | None = None) -> Located | None:
    if scratch_root is None:
        try:
            from ..config import load_config

            scratch_root = load_config().path("scratch_root").absolute()
        except Exception:  # noqa: BLE001
            return None
    base = scratch_root / ".submissions"
    for rec in sorted(base.glob("*/record.json")) if base.is_dir() else []:
        found = _from_submission_dir(rec.parent, array_job, task)
        if found:
            return found
    return None


def locate_slurm(job_id: str, info: Mapping[str, str] | None = None) -> Located | None:
    """The element of SLURM job `job_id` (an array task's own id or `123_4`), or None (not ours)."""
    info = scontrol_job(job_id) if info is None else info
    array_job, task = info.get("ArrayJobId"), info.get("ArrayTaskId")
    if not array_job or not task or not task.isdigit():
        return None  # not an array element: a plain job (our backstop merges by itself) or not ours
    if info.get("UserId") and not re.search(rf"\({os.getuid()}\)", info["UserId"]) and os.getuid() != 0:
        return None
    script = Path(info.get("Command", ""))
    if script.parent.name == "logs" and script.parent.parent.parent.name == ".submissions":
        found = _from_submission_dir(script.parent.parent, array_job, int(task))
        if found:
            return found
    return _search_records(array_job, int(task))


# ---------------------------------------------------------------------------- user side: PBS
def locate_pbs(job_id: str) -> Located | None:
    """The element of PBS subjob `job_id` (`123[4].server` / Torque `123-4`), or None."""
    from ..errors import InputError
    from ..submission.pbs import PbsBackend, parse_job_id

    try:
        jid = parse_job_id(job_id)
    except InputError:
        return None
    if jid.index is None:
        return None
    variables: dict[str, str] = {}
    try:
        states = PbsBackend().job_states([job_id])
        attrs = next(iter(states.values()), {}) if states else {}
        raw = attrs.get("Variable_List") or {}
        variables = {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}
    except Exception:  # noqa: BLE001 - qstat unavailable: fall back to the records
        pass
    listed = variables.get("MACE_ARRAY_INDICES")
    if listed and str(jid.index) not in listed.split(","):
        return None  # a covering-range filler subjob
    manifest_path = variables.get("MACE_MANIFEST")
    if manifest_path:
        found = _from_submission_dir(Path(manifest_path).parent, jid.seq, jid.index)
        if found:
            return found
        manifest = read_json(manifest_path)
        offset = int(variables.get("MACE_INDEX_OFFSET", "0") or 0)
        if isinstance(manifest, dict) and 0 <= jid.index + offset < len(manifest.get("elements") or []):
            return Located(Path(manifest_path), manifest, jid.index + offset)
    return _search_records(jid.seq, jid.index)
