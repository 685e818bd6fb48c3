"""PBS dialects: flavors, job ids, array ranges, resources and dependencies (PBS Pro and Torque)."""

from __future__ import annotations

import functools
import math
import os
import re
import shutil
import subprocess
import typing as tp
from dataclasses import dataclass

from ...errors import ConfigError, InputError, SchedulerError, SchedulerUnavailable
from ..base import (
    check_script_value,
    expand_array_ids,
)

FLAVORS = ("pbspro", "torque")
PBSPRO_THROTTLE_SINCE = (22, 5)  # OpenPBS release that added `-J range%N` (max_run_subjobs)
DEFAULT_MAX_ARRAY_SIZE = 10000  # PBS Pro server attribute max_array_size default (pbs_server_attributes.7B)
PRE_TIMEOUT_SIGNAL = "USR2"  # same signal the SLURM backend asks for with --signal=B:USR2@margin
PBSPRO_WALLTIME_EXIT = -29  # JOB_EXEC_KILL_WALLTIME
TORQUE_WALLTIME_EXIT = -11  # Torque: "Job exceeded a walltime limit"
CLIENT_TIMEOUT_S = 60.0

_JOB_ID = re.compile(r"^(?P<seq>\d+)(?:\[(?P<idx>\d*)\]|-(?P<old>\d+))?(?P<server>\.[A-Za-z0-9._-]+)?(?:@[A-Za-z0-9._-]+)?$")
_DIRECTIVE_SAFE = re.compile(r"^[A-Za-z0-9_@%+=:./-]+$")
V_SAFE = re.compile(r"^[A-Za-z0-9_./:@+=%~-]*$")  # passes through `-v` and qstat's Variable_List verbatim
PATH_SAFE = re.compile(r"^[A-Za-z0-9_./+=@%~-]+$")  # `-o`/`-e` take [host:]path: no ':' or ','


# ---------------------------------------------------------------------------- flavors
def check_flavor(value: object, source: str = "scheduler.pbs_flavor") -> str:
    """`pbspro` | `torque`, else a ConfigError that names the key and the allowed values."""
    if value in FLAVORS:
        return tp.cast(str, value)
    raise ConfigError(f"{source}={value!r} is invalid; allowed: {' | '.join(FLAVORS)}")


def parse_version_output(text: str) -> tuple[str, tuple[int, ...] | None]:
    """`qstat --version` output -> (flavor, version tuple or None).

    PBS Pro/OpenPBS print `pbs_version = 22.05.11`; Torque prints `Version: 6.1.3`.
    """
    m = re.search(r"pbs_version\s*=\s*([0-9][0-9.]*)", text)
    if m:
        return "pbspro", _version_tuple(m.group(1))
    m = re.search(r"Version:\s*([0-9][0-9.]*)", text)
    if m or "torque" in text.lower():
        return "torque", _version_tuple(m.group(1)) if m else None
    raise SchedulerError(
        f"cannot tell PBS Pro from Torque from `qstat --version` ({text.strip()[:80]!r}); "
        f"set scheduler.pbs_flavor to {' | '.join(FLAVORS)}"
    )


def _version_tuple(text: str) -> tuple[int, ...] | None:
    parts = [int(p) for p in text.split(".") if p.isdigit()]
    return tuple(parts) or None


@functools.lru_cache(maxsize=8)
def _detect(path_key: str) -> tuple[str, tuple[int, ...] | None]:
    del path_key  # only part of the cache key: a different PATH may find another qstat
    if shutil.which("qstat") is None:
        raise SchedulerUnavailable("qstat not found on PATH: is this a PBS login node? (or set scheduler.pbs_flavor)")
    try:
        proc = subprocess.run(["qstat", "--version"], capture_output=True, text=True, timeout=CLIENT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise SchedulerUnavailable("qstat --version did not answer") from None
    return parse_version_output(proc.stdout + "\n" + proc.stderr)


def detect_flavor() -> tuple[str, tuple[int, ...] | None]:
    """(flavor, version) of the `qstat` on PATH, asked once per PATH."""
    return _detect(os.environ.get("PATH", ""))


# ---------------------------------------------------------------------------- job ids
@dataclass(frozen=True)
class PbsJobId:
    """`123[].srv` (array), `123[4].srv` (subjob; Torque < 2.3 wrote `123-4`), `123.srv` (job)."""

    seq: str
    index: int | None
    is_array: bool
    server: str  # "" or ".server"

    @property
    def array_id(self) -> str:
        return f"{self.seq}[]{self.server}"

    def subjob(self, index: int) -> str:
        return f"{self.seq}[{index}]{self.server}"

    def __str__(self) -> str:
        if self.index is not None:
            return self.subjob(self.index)
        return self.array_id if self.is_array else f"{self.seq}{self.server}"


def parse_job_id(job_id: str) -> PbsJobId:
    """Parse any PBS Pro / Torque job id; InputError if it is not one (it goes into argv)."""
    text = str(job_id).strip()
    m = _JOB_ID.fullmatch(text)
    if not m:
        raise InputError(f"job id {text!r} is not a PBS job id (e.g. 123.server, 123[].server, 123[4])")
    idx = m.group("idx") if m.group("idx") not in (None, "") else m.group("old")
    is_array = m.group("idx") is not None or m.group("old") is not None
    return PbsJobId(m.group("seq"), int(idx) if idx is not None else None, is_array, m.group("server") or "")


def parse_qsub_output(text: str) -> str:
    """The job id qsub printed (its last non-empty stdout line)."""
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    if not lines:
        raise SchedulerError("qsub printed no job id")
    parse_job_id(lines[-1])  # validates
    return lines[-1]


# ---------------------------------------------------------------------------- array ranges
def pbspro_range(task_ids: list[int]) -> tuple[str, bool]:
    """The `-J X-Y[:Z]` covering these task ids, and whether it is exact.

    PBS Pro takes one arithmetic range with X < Y. Sparse lists (a resubmit of [3, 7, 12]) are
    covered by the smallest range whose step divides every gap (3-12:1 here; [3, 7, 11] gives
    3-11:4, exact). We chose this over one array per arithmetic run because a submission stays one
    array: one job id, one throttle, one query. The job script skips unlisted subjobs itself (exit 0
    before running anything; `MACE_ARRAY_INDICES` carries the list) and `query` drops them, so
    they cost a scheduler slot for a moment but never run the element. A single index i becomes
    `i-(i+1)` with i+1 skipped, since `-J i-i` is refused.
    """
    ids = sorted(set(task_ids))
    if not ids:
        raise InputError("an array needs at least one index")
    if ids[0] < 0:
        raise InputError(f"array task ids must be >= 0, got {ids[0]}")
    if len(ids) == 1:
        return f"{ids[0]}-{ids[0] + 1}", False
    step = 0
    for a, b in zip(ids, ids[1:], strict=False):
        step = math.gcd(step, b - a)
    spec = f"{ids[0]}-{ids[-1]}" + (f":{step}" if step != 1 else "")
    exact = (ids[-1] - ids[0]) // step + 1 == len(ids)
    return spec, exact


def covered_ids(spec: str) -> list[int]:
    """Task ids of a `-J` range `X-Y[:Z][%N]`."""
    return expand_array_ids(spec)


# ---------------------------------------------------------------------------- resources
def format_walltime(minutes: int) -> str:
    minutes = int(minutes)
    if minutes < 1:
        raise InputError(f"scheduler.time must be >= 1 minute, got {minutes}")
    return f"{minutes // 60:02d}:{minutes % 60:02d}:00"


def convert_mem(value: str) -> str:
    """`2G`, `512M`, `4GB`, `4gb`, `1024` (MB, as SLURM) -> PBS size `2gb`, `512mb`, `1024mb`."""
    text = check_script_value(str(value), "scheduler.mem").strip()
    m = re.fullmatch(r"^(\d+)\s*([KkMmGgTt]?)[Bb]?$", text)
    if not m:
        raise ConfigError(f"scheduler.mem={text!r} is invalid; use a size such as 512M, 4G or 4gb")
    unit = (m.group(2) or "m").lower()
    return f"{int(m.group(1))}{unit}b"


def gpu_count(gres: str | None) -> int | None:
    if gres is None:
        return None
    m = re.fullmatch(r"^gpu(?::[A-Za-z0-9_-]+)?:(\d+)$", str(gres).strip())
    if not m:
        raise ConfigError(f"scheduler.gres={gres!r} cannot be expressed on PBS; only gpu:N (or gpu:type:N)")
    return int(m.group(1))


def directive_value(value: object, key: str) -> str:
    text = check_script_value(str(value), f"scheduler.{key}")
    if not _DIRECTIVE_SAFE.fullmatch(text):
        raise InputError(f"scheduler.{key}={text!r} has characters a #PBS directive cannot carry")
    return text


def v_list(values: dict[str, str]) -> str:
    """`-v` list; a value with commas is single-quoted as qsub.1B requires (`var2='A,B'`)."""
    parts = []
    for key, value in values.items():
        if "," in value:
            if not re.fullmatch(r"^[0-9,-]+$", value):  # only our own index lists carry commas here
                raise InputError(f"{key}: a comma-bearing value cannot go into -v: {value!r}")
            parts.append(f"{key}='{value}'")
        else:
            parts.append(f"{key}={value}")
    return ",".join(parts)


def translate_dependency(dep: str, flavor: str) -> str:
    """Our `afterany:ID[:ID...]` -> PBS `depend=` value; Torque wants `afteranyarray` for arrays."""
    dep = check_script_value(dep, "dependency").strip()
    out = []
    for clause in dep.split(","):
        kind, _, rest = clause.partition(":")
        if kind not in ("after", "afterok", "afternotok", "afterany") or not rest:
            raise InputError(f"dependency {dep!r} is invalid; e.g. afterany:123[].server or afterok:124")
        ids = [parse_job_id(j) for j in rest.split(":")]
        arrays = [j for j in ids if j.is_array and j.index is None]
        if flavor == "torque" and arrays:
            if len(arrays) != len(ids):
                raise InputError(f"dependency {dep!r} mixes arrays and jobs; Torque needs one clause per kind")
            out.append(f"{kind}array:" + ":".join(str(j) for j in ids))
        else:
            out.append(f"{kind}:" + ":".join(str(j) for j in ids))
    return ",".join(out)


