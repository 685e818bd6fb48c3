"""PBS backend: PBS Pro / OpenPBS (`qsub -J`, `PBS_ARRAY_INDEX`) and Torque (`qsub -t`, `PBS_ARRAYID`).

submitit has no PBS executor, so this module is one, registered as a submitit plugin (entry-point
group `submitit`, names `executor` / `job_environment`, the way the external `submitit-oar` plugin
does it): `submitit.AutoExecutor(folder, cluster="pbs")` finds `PbsExecutor`. mace-hpc's own
`PbsBackend` (the Backend protocol of `backend.py`) is built on that executor: the same job-script
renderer, `qsub` argv, job-id parser, `qstat` parser and state mapping, so local, SLURM and PBS
share one shape.

Two dialects, chosen by `scheduler.pbs_flavor` or detected from `qstat --version` (PBS Pro prints
`pbs_version = 22.05.11`, Torque `Version: 6.1.3`). Facts from the docs this code relies on
(OpenPBS man pages in github.com/openpbs/openpbs doc/man1, Adaptive Computing Torque docs):

- PBS Pro `-J X-Y[:Z]` only takes one range with a step, X < Y (a one-element range is refused by
  `parse_subjob_index`, src/lib/Libutil/range.c). `%N` (the `max_run_subjobs` attribute) exists
  only since OpenPBS 22.05 (commit 50d9114, "Adding max_run_subjobs limit to array jobs").
  Array jobs are always rerunnable: `-J` with `-r n` is refused ("cannot submit non-rerunable
  Array Job", qsub.c), so we only ever send `-r y`.
- Torque `-t 3,7,12%2` takes any list plus a slot limit; dependencies on a whole array need the
  `*array` types (`afteranyarray:123[]`), added with Torque 2.5's array rework.
- PBS Pro `afterany`: "This job will not run if a job in the arg list was deleted without ever
  having been run" (qsub.1B): a backstop job after a fully cancelled array stays held.
- `-v` values containing commas must be quoted: `-v "a=10,var2='A,B'"` (qsub.1B).
- Jobs start in $HOME, not in the submit directory; PBS_O_WORKDIR names the latter.
- Exit_status: 0 ok; a job killed by a signal reports 256 + signal (PBS Pro mom_start.c
  `WTERMSIG(statloc) + 0x100`), so 271 = SIGTERM (walltime kill or qdel of a running job);
  PBS Pro JOB_EXEC_KILL_WALLTIME = -29 (src/include/job.h); Torque -11 = walltime exceeded
  (Adaptive Computing KB "exit codes", Torque 6.1.2); note -11 in PBS Pro is JOB_EXEC_RERUN.
- `qstat -x` means "include finished jobs" in PBS Pro but "XML output" in Torque; PBS Pro has
  `qstat -f -F json`, Torque only the text `-f` format (kept for `keep_completed` seconds).
- Torque's mom runs `epilogue` with argv[1] = job id ... argv[10] = exit code and an EMPTY
  environment: an epilogue recovers the array index from the id (`parse_job_id`), never from
  PBS_ARRAYID.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import typing as tp
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from submitit.core import core, job_environment, logger, utils

from ..errors import ConfigError, InputError, SchedulerError, SchedulerUnavailable
from ..util.atomic import atomic_write_text
from .backend import (
    CANCELLED,
    COMPLETED,
    FAILED,
    PENDING,
    RUNNING,
    TIMEOUT,
    ArrayRequest,
    array_spec,
    check_env,
    check_job_name,
    check_script_value,
    expand_array_ids,
    first_message,
    run_scheduler_command,
    scheduler_number,
    shell_quote,
)

FLAVORS = ("pbspro", "torque")
PBSPRO_THROTTLE_SINCE = (22, 5)  # OpenPBS release that added `-J range%N` (max_run_subjobs)
DEFAULT_MAX_ARRAY_SIZE = 10000  # PBS Pro server attribute max_array_size default (pbs_server_attributes.7B)
PRE_TIMEOUT_SIGNAL = "USR2"  # same signal the SLURM backend asks for with --signal=B:USR2@margin
PBSPRO_WALLTIME_EXIT = -29  # JOB_EXEC_KILL_WALLTIME
TORQUE_WALLTIME_EXIT = -11  # Torque: "Job exceeded a walltime limit"
_TIMEOUT_S = 60.0

_JOB_ID = re.compile(r"^(?P<seq>\d+)(?:\[(?P<idx>\d*)\]|-(?P<old>\d+))?(?P<server>\.[A-Za-z0-9._-]+)?(?:@[A-Za-z0-9._-]+)?$")
_DIRECTIVE_SAFE = re.compile(r"^[A-Za-z0-9_@%+=:./-]+$")
_V_SAFE = re.compile(r"^[A-Za-z0-9_./:@+=%~-]*$")  # passes through `-v` and qstat's Variable_List verbatim
_PATH_SAFE = re.compile(r"^[A-Za-z0-9_./+=@%~-]+$")  # `-o`/`-e` take [host:]path: no ':' or ','


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
        proc = subprocess.run(["qstat", "--version"], capture_output=True, text=True, timeout=_TIMEOUT_S)
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
    m = _JOB_ID.match(text)
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
    m = re.match(r"^(\d+)\s*([KkMmGgTt]?)[Bb]?$", text)
    if not m:
        raise ConfigError(f"scheduler.mem={text!r} is invalid; use a size such as 512M, 4G or 4gb")
    unit = (m.group(2) or "m").lower()
    return f"{int(m.group(1))}{unit}b"


def _gpus(gres: str | None) -> int | None:
    if gres is None:
        return None
    m = re.match(r"^gpu(?::[A-Za-z0-9_-]+)?:(\d+)$", str(gres).strip())
    if not m:
        raise ConfigError(f"scheduler.gres={gres!r} cannot be expressed on PBS; only gpu:N (or gpu:type:N)")
    return int(m.group(1))


def _directive(value: object, key: str) -> str:
    text = check_script_value(str(value), f"scheduler.{key}")
    if not _DIRECTIVE_SAFE.match(text):
        raise InputError(f"scheduler.{key}={text!r} has characters a #PBS directive cannot carry")
    return text


def _v_list(values: dict[str, str]) -> str:
    """`-v` list; a value with commas is single-quoted as qsub.1B requires (`var2='A,B'`)."""
    parts = []
    for key, value in values.items():
        if "," in value:
            if not re.match(r"^[0-9,-]+$", value):  # only our own index lists carry commas here
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


# ---------------------------------------------------------------------------- job script
@dataclass
class JobSpec:
    """Everything a PBS job script says, already validated; rendered by `render_script`."""

    flavor: str
    name: str
    command: str  # one shell line, already quoted
    work_dir: Path
    log_stem: str
    task_ids: list[int] | None = None
    max_parallel: int | None = None
    queue: str | None = None
    account: str | None = None
    qos: str | None = None  # Torque with Moab only (`-l qos=`); PBS Pro has none
    time_min: int = 60
    cpus: int = 1
    mem: str | None = None
    gpus: int | None = None
    setup: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # -v; values must match _V_SAFE or be index lists
    exports: list[str] = field(default_factory=list)  # extra `export K='v'` lines in the body
    dependency: str | None = None  # already translated
    requeue: bool = False
    signal_margin: int | None = None
    pbspro_throttle: bool = True
    index_offset: int | None = None


def _array_lines(spec: JobSpec) -> tuple[list[str], list[str]]:
    """(#PBS array directive lines, body lines) for the array part of the spec."""
    assert spec.task_ids is not None
    ids = sorted(set(spec.task_ids))
    throttle = spec.max_parallel if spec.max_parallel and spec.max_parallel < len(ids) else None
    body: list[str] = []
    if spec.flavor == "torque":
        return [f"#PBS -t {array_spec(ids, throttle)}"], body
    rng, exact = pbspro_range(ids)
    if throttle and spec.pbspro_throttle:
        rng += f"%{throttle}"
    directives = [f"#PBS -J {rng}"]
    if throttle and not spec.pbspro_throttle:
        body.append(f"# max_parallel={throttle} is NOT enforced: this PBS Pro predates -J range%N (OpenPBS 22.05)")
    if not exact:
        listed = array_spec(ids)
        spec.env["MACE_ARRAY_INDICES"] = listed
        body += [
            "# -J takes one range; subjobs the submission did not list exit 0 at once (see pbs.py)",
            "mace_listed() {",
            "    local IFS=, r",
            "    for r in $MACE_ARRAY_INDICES; do",
            '        case $r in',
            '            *-*) [ "$1" -ge "${r%-*}" ] && [ "$1" -le "${r#*-}" ] && return 0 ;;',
            '            *) [ "$1" -eq "$r" ] && return 0 ;;',
            "        esac",
            "    done",
            "    return 1",
            "}",
            'mace_listed "$PBS_ARRAY_INDEX" || exit 0',
        ]
    return directives, body


def render_script(spec: JobSpec) -> str:
    """The job script: #PBS directives, cd, setup, exports, pre-timeout signal, `exec` command."""
    check_flavor(spec.flavor)
    work_dir = check_script_value(str(spec.work_dir), "work_dir")
    if not _PATH_SAFE.match(work_dir):
        raise InputError(f"work_dir {work_dir!r} has characters PBS -o/-e paths cannot carry (':', ',', spaces)")
    lines = ["#!/bin/bash", f"#PBS -N {spec.name}"]
    if spec.queue:
        lines.append(f"#PBS -q {_directive(spec.queue, 'partition')}")
    if spec.account:
        lines.append(f"#PBS -A {_directive(spec.account, 'account')}")
    if spec.flavor == "pbspro":
        chunk = f"select=1:ncpus={int(spec.cpus)}"
        if spec.mem:
            chunk += f":mem={spec.mem}"
        if spec.gpus:
            chunk += f":ngpus={spec.gpus}"
        lines.append(f"#PBS -l {chunk}")
    else:
        nodes = f"nodes=1:ppn={int(spec.cpus)}" + (f":gpus={spec.gpus}" if spec.gpus else "")
        lines.append(f"#PBS -l {nodes}")
        if spec.mem:
            lines.append(f"#PBS -l mem={spec.mem}")
        if spec.qos:
            lines.append(f"#PBS -l qos={_directive(spec.qos, 'qos')}")
    lines.append(f"#PBS -l walltime={format_walltime(spec.time_min)}")
    body: list[str] = []
    if spec.task_ids is not None:
        array_directives, body = _array_lines(spec)
        lines += array_directives
        if spec.flavor == "pbspro":  # ^array_index^ is expanded per subjob (PBS_FILE_ARRAY_INDEX_TAG)
            log = f"{work_dir}/{spec.log_stem}.^array_index^.log"
        else:  # a directory: Torque names each subjob's file <name>.o<seq>-<index>
            log = f"{work_dir}/"
    else:
        log = f"{work_dir}/{spec.log_stem}.log"
    lines += ["#PBS -j oe", f"#PBS -o {log}"]
    if spec.env:
        lines.append(f'#PBS -v "{_v_list(spec.env)}"')
    if spec.dependency:
        lines.append(f"#PBS -W depend={spec.dependency}")
    if spec.requeue:
        lines.append("#PBS -r y")
    lines += ["", f"cd {shlex.quote(work_dir)} || exit 1"]
    if spec.setup:
        lines += ["", "# setup"] + list(spec.setup)
    lines.append("")
    if spec.index_offset is not None:
        lines.append(f"export MACE_INDEX_OFFSET={int(spec.index_offset)}")
    lines += spec.exports
    lines += body
    margin = spec.signal_margin
    if margin and spec.time_min * 60 > margin:
        # PBS has no --signal: a watchdog signals the element runner (which `exec` makes $$)
        # margin seconds before the walltime kill, so its epilogue runs (invariant 1).
        lines.append(
            f"( sleep {spec.time_min * 60 - margin} && kill -s {PRE_TIMEOUT_SIGNAL} $$ ) >/dev/null 2>&1 &"
        )
    lines += [spec.command, ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- qstat parsing
def parse_qstat_json(text: str) -> dict[str, dict[str, tp.Any]]:
    """`qstat -f -F json` -> {job id: attributes}; nested objects as qstat prints them."""
    data = json.loads(text)
    jobs = data.get("Jobs") or {}
    return {str(k): dict(v) for k, v in jobs.items() if isinstance(v, dict)}


def parse_qstat_text(text: str) -> dict[str, dict[str, tp.Any]]:
    """`qstat -f` text (PBS Pro and Torque) -> {job id: attributes}.

    Attribute lines are `    name = value` (4 spaces); long values wrap onto continuation lines
    that start with a tab. `Resource_List.walltime` style keys become nested dicts like the JSON
    format; Variable_List becomes a dict (commas inside values are escaped `\\,`).
    """
    jobs: dict[str, dict[str, tp.Any]] = {}
    current: dict[str, tp.Any] | None = None
    last_key: str | None = None
    for raw in text.splitlines():
        if raw.startswith("Job Id:"):
            current = {}
            jobs[raw.split(":", 1)[1].strip()] = current
            last_key = None
            continue
        if current is None or not raw.strip():
            continue
        m = re.match(r"^ {4}(\S+) = ?(.*)$", raw)
        if m and not raw.startswith("\t"):
            last_key = m.group(1)
            current[last_key] = m.group(2)
        elif last_key is not None:  # continuation of a wrapped value
            current[last_key] += raw.strip()
    for attrs in jobs.values():
        for key in [k for k in attrs if "." in k]:
            top, _, sub = key.partition(".")
            attrs.setdefault(top, {})[sub] = attrs.pop(key)
        if isinstance(attrs.get("Variable_List"), str):
            attrs["Variable_List"] = _split_variable_list(attrs["Variable_List"])
    return jobs


def _split_variable_list(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in re.split(r"(?<!\\),", text):
        key, _, value = item.partition("=")
        if key:
            out[key.strip()] = value.replace("\\,", ",")
    return out


def _seconds(value: object) -> int | None:
    if value is None:
        return None
    parts = str(value).strip().split(":")
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        return None
    total = 0
    for n in nums:
        total = total * 60 + n
    return total


def normalize_pbs_state(attrs: dict[str, tp.Any], flavor: str) -> str:
    """One qstat job record -> PENDING | RUNNING | COMPLETED | FAILED | TIMEOUT | CANCELLED.

    Q/H/W/T/M: not started. R/E/B/S/U: started, not final (E is "exiting", B an array with a running
    subjob, S suspended). F (PBS Pro finished), X (PBS Pro subjob expired) and C (Torque
    completed) are final; then the exit status decides: none (deleted before it ran) -> CANCELLED;
    0 -> COMPLETED; the dialect's walltime code -> TIMEOUT; 256+signal (271 = SIGTERM) -> TIMEOUT
    when the job used its whole walltime, else CANCELLED (qdel of a running job; Torque documents
    271 for cancelled running jobs); anything else -> FAILED.
    """
    state = str(attrs.get("job_state", "")).strip().upper()[:1]
    if state in ("R", "E", "B", "S", "U"):
        return RUNNING
    if state not in ("F", "X", "C"):
        return PENDING
    raw = attrs.get("Exit_status", attrs.get("exit_status"))
    if raw is None or str(raw).strip() == "":
        return CANCELLED
    try:
        code = int(str(raw).strip())
    except ValueError:
        return FAILED
    if code == 0:
        return COMPLETED
    if code == (PBSPRO_WALLTIME_EXIT if flavor == "pbspro" else TORQUE_WALLTIME_EXIT):
        return TIMEOUT
    if code > 256:
        used = _seconds((attrs.get("resources_used") or {}).get("walltime"))
        limit = _seconds((attrs.get("Resource_List") or {}).get("walltime"))
        if used is not None and limit is not None and used >= limit:
            return TIMEOUT
        return CANCELLED
    return FAILED


def _variables(attrs: dict[str, tp.Any]) -> dict[str, str]:
    value = attrs.get("Variable_List") or {}
    if isinstance(value, str):
        value = _split_variable_list(value)
    return {str(k): str(v) for k, v in value.items()}


def _subjob_index(job_id: str, attrs: dict[str, tp.Any]) -> int | None:
    for key in ("array_index", "job_array_id"):  # PBS Pro / Torque attribute names
        if attrs.get(key) not in (None, ""):
            return int(str(attrs[key]))
    try:
        return parse_job_id(job_id).index
    except InputError:
        return None


def element_states(records: dict[str, dict[str, tp.Any]], flavor: str,
                   offsets: dict[str, int] | None = None) -> dict[int, str]:
    """Subjob records -> {element index: state}: index = array index + MACE_INDEX_OFFSET.

    The offset and (PBS Pro sparse submissions) the listed task ids come from the job's own
    Variable_List, so any process can map a qstat answer back to elements without a side file.
    """
    out: dict[int, str] = {}
    for job_id, attrs in records.items():
        try:
            jid = parse_job_id(job_id)
        except InputError:
            continue
        if jid.index is None:
            continue  # the array parent or a plain job
        index = _subjob_index(job_id, attrs)
        if index is None:
            continue
        variables = _variables(attrs)
        listed = variables.get("MACE_ARRAY_INDICES")
        if listed and index not in set(expand_array_ids(listed)):
            continue  # a covering-range filler, never an element
        offset = (offsets or {}).get(jid.seq)
        if offset is None:
            offset = int(variables.get("MACE_INDEX_OFFSET", "0") or 0)
        out[index + offset] = normalize_pbs_state(attrs, flavor)
    return out


def qstat_argv(flavor: str, job_ids: list[str]) -> list[str]:
    """One qstat call for these ids: PBS Pro JSON with subjobs and finished jobs, Torque text."""
    if flavor == "pbspro":
        return ["qstat", "-t", "-x", "-f", "-F", "json", *job_ids]
    return ["qstat", "-t", "-f", *job_ids]  # Torque: -x would mean XML


def parse_qstat(flavor: str, text: str) -> dict[str, dict[str, tp.Any]]:
    if flavor == "pbspro":
        try:
            return parse_qstat_json(text)
        except ValueError:
            pass  # an old PBS Pro without -F json: same text format as Torque
    return parse_qstat_text(text)


# ---------------------------------------------------------------------------- submitit plugin
def _submitit_id(pbs_id: str) -> str:
    """PBS id -> submitit id: `123[4].srv` -> `123_4`, `123.srv` -> `123` (submitit's `%A_%a` shape)."""
    jid = parse_job_id(pbs_id)
    return f"{jid.seq}_{jid.index}" if jid.index is not None else jid.seq


def _pbs_id(submitit_id: str, array: bool = False) -> str:
    seq, sep, idx = submitit_id.partition("_")
    if sep:
        return f"{seq}[{idx}]"
    return f"{seq}[]" if array else seq


class PbsInfoWatcher(core.InfoWatcher):
    """One qstat call for every registered job (arrays asked as `123[]`), states normalized."""

    flavor: str | None = None

    def _flavor(self) -> str:
        if self.flavor is None:
            self.flavor = detect_flavor()[0]
        return self.flavor

    def _make_command(self) -> list[str] | None:
        to_check = self._registered - self._finished
        if not to_check:
            return None
        ids = sorted({_pbs_id(j.split("_")[0], array="_" in j) for j in to_check})
        return qstat_argv(self._flavor(), ids)

    def get_state(self, job_id: str, mode: str = "standard") -> str:
        return self.get_info(job_id, mode=mode).get("State") or "UNKNOWN"

    def read_info(self, string: bytes | str) -> dict[str, dict[str, str]]:
        text = string.decode() if isinstance(string, bytes) else string
        if not text.strip():
            return {}
        flavor = self._flavor()
        out = {}
        for job_id, attrs in parse_qstat(flavor, text).items():
            try:
                key = _submitit_id(job_id)
            except InputError:
                continue
            out[key] = {"JobID": key, "State": normalize_pbs_state(attrs, flavor)}
        return out


class PbsJob(core.Job[core.R]):
    _cancel_command = "qdel"
    watcher = PbsInfoWatcher(delay_s=600)

    def cancel(self, check: bool = True) -> None:
        (subprocess.check_call if check else subprocess.call)(
            [self._cancel_command, _pbs_id(self.job_id)], shell=False
        )


class PbsJobEnvironment(job_environment.JobEnvironment):
    """Inside a PBS job started by PbsExecutor (SUBMITIT_EXECUTOR=pbs): ids and ranks from PBS_*."""

    _env = {"job_id": "PBS_JOBID"}

    @property
    def raw_job_id(self) -> str:
        return parse_job_id(os.environ["PBS_JOBID"]).seq

    @property
    def array_job_id(self) -> str | None:
        return self.raw_job_id if self.array_task_id is not None else None

    @property
    def array_task_id(self) -> str | None:
        return os.environ.get("PBS_ARRAY_INDEX") or os.environ.get("PBS_ARRAYID")

    @property
    def num_tasks(self) -> int:
        return 1

    @property
    def num_nodes(self) -> int:
        return 1

    @property
    def node(self) -> int:
        return 0

    @property
    def global_rank(self) -> int:
        return 0

    @property
    def local_rank(self) -> int:
        return 0

    @property
    def hostnames(self) -> list[str]:
        nodefile = os.environ.get("PBS_NODEFILE")
        if nodefile and Path(nodefile).is_file():
            return list(dict.fromkeys(Path(nodefile).read_text().split())) or [self.hostname]
        return [self.hostname]

    def _requeue(self, countdown: int) -> None:
        jid = os.environ["PBS_JOBID"]
        subprocess.check_call(["qrerun", jid], timeout=60)
        logger.get_logger().info(f"Requeued job {jid} ({countdown} remaining timeouts)")


def _executor_defaults() -> dict[str, tp.Any]:
    return {
        "job_name": "submitit",
        "queue": None,
        "account": None,
        "time": 5,
        "cpus": 1,
        "mem": None,
        "ngpus": None,
        "nodes": 1,
        "tasks_per_node": 1,
        "setup": [],
        "env": {},
        "array_parallelism": 256,
        "requeue": False,
        "dependency": None,
        "signal_margin": None,
    }


class PbsExecutor(core.PicklingExecutor):
    """submitit executor for PBS Pro / OpenPBS and Torque (`cluster="pbs"`).

    Parameters (update_parameters): job_name, queue, account, time [min], cpus, mem ("4gb"),
    ngpus, setup [shell lines], env {K: V}, array_parallelism, requeue, dependency, signal_margin.
    One node, one task: enough for mace-hpc's single-process elements; nodes/tasks_per_node > 1 are
    refused rather than silently ignored.
    """

    job_class = PbsJob

    def __init__(self, folder: str | Path, max_num_timeout: int = 3, max_pickle_size_gb: float = 1.0,
                 python: str | None = None, flavor: str | None = None) -> None:
        super().__init__(folder, max_num_timeout=max_num_timeout, max_pickle_size_gb=max_pickle_size_gb)
        self.python = shlex.quote(sys.executable) if python is None else python
        self.flavor = check_flavor(flavor) if flavor is not None else None
        self.version: tuple[int, ...] | None = None
        self.parameters = dict(_executor_defaults())

    # -- flavor --------------------------------------------------------------
    def resolve_flavor(self) -> str:
        if self.flavor is None:
            self.flavor, self.version = detect_flavor()
        return self.flavor

    def pbspro_throttle(self) -> bool:
        """Whether `-J range%N` may be sent: OpenPBS >= 22.05, or a PBS Pro whose version we cannot read."""
        if self.resolve_flavor() != "pbspro":
            return False
        if self.version is None:
            try:
                flavor, version = detect_flavor()
            except SchedulerError:
                return True
            if flavor != "pbspro" or version is None:
                return True
            self.version = version
        return self.version[:2] >= PBSPRO_THROTTLE_SINCE

    # -- parameters ----------------------------------------------------------
    @classmethod
    def _equivalence_dict(cls) -> core.EquivalenceDict:
        return {
            "name": "job_name",
            "timeout_min": "time",
            "mem_gb": "mem",
            "nodes": "nodes",
            "cpus_per_task": "cpus",
            "gpus_per_node": "ngpus",
            "tasks_per_node": "tasks_per_node",
        }

    @classmethod
    def _valid_parameters(cls) -> set[str]:
        return set(_executor_defaults())

    def _convert_parameters(self, params: dict[str, tp.Any]) -> dict[str, tp.Any]:
        params = super()._convert_parameters(params)
        if isinstance(params.get("mem"), (int, float)):
            gb = float(params["mem"])
            params["mem"] = f"{int(gb)}gb" if gb == int(gb) else f"{int(gb * 1024)}mb"
        return params

    def _internal_update_parameters(self, **kwargs: tp.Any) -> None:
        unknown = sorted(set(kwargs) - self._valid_parameters())
        if unknown:
            raise ValueError(f"Unavailable parameter(s): {unknown}; valid: {sorted(self._valid_parameters())}")
        for key in ("nodes", "tasks_per_node"):
            if key in kwargs and int(kwargs[key] or 1) != 1:
                raise ValueError(f"PbsExecutor runs one task on one node; {key}={kwargs[key]} is not supported")
        super()._internal_update_parameters(**kwargs)

    # -- submission ----------------------------------------------------------
    @property
    def _submitit_command_str(self) -> str:
        return " ".join([self.python, "-u -m submitit.core._submit", shlex.quote(str(self.folder))])

    def _num_tasks(self) -> int:
        return 1

    def spec_from_parameters(self, command: str) -> JobSpec:
        p = self.parameters
        flavor = self.resolve_flavor()
        folder = utils.JobPaths.get_first_id_independent_folder(self.folder)
        n = p.get("map_count")
        name = re.sub(r"[^A-Za-z0-9._-]", "_", str(p["job_name"]))[:128] or "submitit"
        return JobSpec(
            flavor=flavor,
            name=name if name[0].isalpha() else f"j{name}",
            command=command,
            work_dir=folder,
            log_stem="pbs",
            task_ids=list(range(n)) if n else None,
            max_parallel=int(p["array_parallelism"]),
            queue=p["queue"],
            account=p["account"],
            time_min=int(p["time"]),
            cpus=int(p["cpus"]),
            mem=convert_mem(p["mem"]) if p["mem"] else None,
            gpus=int(p["ngpus"]) if p["ngpus"] else None,
            setup=[check_script_value(s, "setup") for s in p["setup"]],
            env=check_env(p["env"]) if p["env"] else {},
            dependency=translate_dependency(p["dependency"], flavor) if p["dependency"] else None,
            requeue=bool(p["requeue"]),
            signal_margin=p["signal_margin"],
            pbspro_throttle=self.pbspro_throttle() if n else True,
        )

    def _make_submission_file_text(self, command: str, uid: str) -> str:
        folder = shlex.quote(str(self.folder))
        # submitit reads <folder>/<id>_0_log.out|err; PBS cannot name files after the job id at submit
        # time, so the script redirects itself once PBS_JOBID is known.
        redirect = [
            "export SUBMITIT_EXECUTOR=pbs",
            'SUBMITIT_JOB_ID="${PBS_JOBID%%[[.]*}"',
            'if [ -n "${PBS_ARRAY_INDEX:-${PBS_ARRAYID:-}}" ]; then '
            'SUBMITIT_JOB_ID="${SUBMITIT_JOB_ID}_${PBS_ARRAY_INDEX:-$PBS_ARRAYID}"; fi',
            f'SUBMITIT_DIR={folder}',
            'SUBMITIT_DIR="${SUBMITIT_DIR//%j/$SUBMITIT_JOB_ID}"',
            'mkdir -p "$SUBMITIT_DIR"',
            'exec >>"$SUBMITIT_DIR/${SUBMITIT_JOB_ID}_0_log.out" 2>>"$SUBMITIT_DIR/${SUBMITIT_JOB_ID}_0_log.err"',
        ]
        spec = self.spec_from_parameters(command)
        spec.exports = redirect
        return render_script(spec)

    def _make_submission_command(self, submission_file_path: Path) -> list[str]:
        return ["qsub", str(submission_file_path)]

    @staticmethod
    def _get_job_id_from_submission_command(string: bytes | str) -> str:
        text = string.decode() if isinstance(string, bytes) else string
        try:
            return _submitit_id(parse_qsub_output(text)).split("_")[0]
        except (InputError, SchedulerError):
            raise utils.FailedSubmissionError(f'Could not make sense of qsub output "{text}"') from None

    def _submit_command(self, command: str) -> core.Job[tp.Any]:
        PbsJob.watcher.flavor = self.resolve_flavor()
        return super()._submit_command(command)

    def _internal_process_submissions(
        self, delayed_submissions: list[utils.DelayedSubmission]
    ) -> list[core.Job[tp.Any]]:
        if len(delayed_submissions) == 1:
            return super()._internal_process_submissions(delayed_submissions)
        folder = utils.JobPaths.get_first_id_independent_folder(self.folder)
        folder.mkdir(parents=True, exist_ok=True)
        pickle_paths = []
        for d in delayed_submissions:
            pickle_path = folder / f"{uuid.uuid4().hex}.pkl"
            d.set_timeout(int(self.parameters["time"]), self.max_num_timeout)
            d.dump(pickle_path)
            pickle_paths.append(pickle_path)
        n = len(delayed_submissions)
        array_ex = PbsExecutor(self.folder, self.max_num_timeout, python=self.python, flavor=self.resolve_flavor())
        array_ex.version = self.version
        array_ex.parameters = dict(self.parameters, map_count=n)
        self._throttle()
        first: core.Job[tp.Any] = array_ex._submit_command(self._submitit_command_str)
        jobs: list[core.Job[tp.Any]] = [PbsJob(folder=self.folder, job_id=f"{first.job_id}_{a}") for a in range(n)]
        for job, pickle_path in zip(jobs, pickle_paths, strict=True):
            job.paths.move_temporary_file(pickle_path, "submitted_pickle")
        return jobs

    @classmethod
    def affinity(cls) -> int:
        return -1 if shutil.which("qsub") is None else 2


# ---------------------------------------------------------------------------- mace-hpc backend
class PbsBackend:
    """mace-hpc's Backend protocol for PBS Pro and Torque, built on PbsExecutor.

    `PbsBackend()` needs no arguments: the flavor comes from `flavor=`, else from the request's
    `scheduler.pbs_flavor` at submit time, else from `qstat --version`.
    """

    name = "pbs"

    def __init__(self, flavor: str | None = None, max_array_size: int | None = None,
                 timeout: float = _TIMEOUT_S) -> None:
        self._flavor = check_flavor(flavor, "flavor") if flavor is not None else None
        self._max_array_size = max_array_size
        self._timeout = timeout

    # -- helpers -------------------------------------------------------------
    def flavor(self, req: ArrayRequest | None = None) -> str:
        if self._flavor is not None:
            return self._flavor
        configured = (req.scheduler or {}).get("pbs_flavor") if req is not None else None
        if configured is not None:
            return check_flavor(configured)
        return detect_flavor()[0]

    def executor(self, req: ArrayRequest) -> PbsExecutor:
        return PbsExecutor(Path(req.work_dir), flavor=self.flavor(req))

    def script_path(self, req: ArrayRequest) -> Path:
        suffix = f"@{req.index_offset}" if req.index_offset else ""
        return Path(req.work_dir) / f"{check_job_name(req.name)}{suffix}.pbs"

    def spec(self, req: ArrayRequest) -> JobSpec:
        ex = self.executor(req)
        flavor = ex.resolve_flavor()
        sched = dict(req.scheduler or {})
        name = check_job_name(req.name)
        if not name[0].isalpha():  # PBS job names must start with a letter
            name = f"m{name}"
        if not req.command:
            raise InputError("command: the element runner argv is empty")
        if sched.get("qos") is not None and flavor == "pbspro":
            raise ConfigError("scheduler.qos has no PBS Pro equivalent; unset it (use scheduler.partition for the queue)")
        env = check_env(req.env or {})
        v_env: dict[str, str] = {}
        exports: list[str] = []
        if req.indices is not None:
            v_env["MACE_INDEX_OFFSET"] = str(int(req.index_offset))
        for key, value in env.items():
            if key in ("MACE_INDEX_OFFSET", "MACE_ARRAY_INDICES"):
                continue
            if _V_SAFE.match(value):
                v_env[key] = value
            else:  # quotes, spaces, commas, $...: a quoted shell line instead of -v
                exports.append(f"export {key}={shell_quote(value, f'env.{key}')}")
        setup = [check_script_value(s, f"scheduler.setup[{i}]") for i, s in enumerate(sched.get("setup") or [])]
        command = "exec " + " ".join(shell_quote(a, f"command[{i}]") for i, a in enumerate(req.command))
        stem = f"{name}@{req.index_offset}" if req.index_offset else name
        return JobSpec(
            flavor=flavor,
            name=name,
            command=command,
            work_dir=Path(req.work_dir).resolve(),
            log_stem=stem,
            task_ids=req.task_ids() if req.indices is not None else None,
            max_parallel=int(req.max_parallel) if req.max_parallel else None,
            queue=sched.get("partition"),
            account=sched.get("account"),
            qos=sched.get("qos"),
            time_min=int(sched.get("time") or 60),
            cpus=int(sched.get("cpus") or 1),
            mem=convert_mem(sched["mem"]) if sched.get("mem") else None,
            gpus=_gpus(sched.get("gres")),
            setup=setup,
            env=v_env,
            exports=exports,
            dependency=translate_dependency(req.dependency, flavor) if req.dependency else None,
            requeue=bool(sched.get("requeue")),
            signal_margin=int(sched.get("signal_margin") or 0) or None,
            pbspro_throttle=ex.pbspro_throttle() if flavor == "pbspro" else True,
            index_offset=int(req.index_offset) if req.indices is not None else None,
        )

    # -- Backend protocol ----------------------------------------------------
    def render(self, req: ArrayRequest) -> tuple[str, list[str]]:
        """Job script text and the `qsub <script>` argv (dry-run); InputError/ConfigError on bad values."""
        text = render_script(self.spec(req))
        return text, self.executor(req)._make_submission_command(self.script_path(req))

    def submit(self, req: ArrayRequest) -> str:
        """Write the script next to the logs, qsub it from work_dir; the full PBS job id."""
        text, argv = self.render(req)
        work_dir = Path(req.work_dir)
        work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write_text(self.script_path(req), text, mode=0o700)
        proc = self._run(argv, cwd=work_dir)
        if proc.returncode != 0:
            raise SchedulerError(f"qsub refused {req.name}: {first_message(proc.stderr, proc.stdout)}")
        return parse_qsub_output(proc.stdout)

    def job_states(self, job_ids: list[str], flavor: str | None = None) -> dict[str, dict[str, tp.Any]]:
        """qstat records for these jobs and, for arrays, every subjob: one qstat call per id."""
        flavor = flavor or self.flavor()
        records: dict[str, dict[str, tp.Any]] = {}
        for raw in dict.fromkeys(job_ids):
            jid = parse_job_id(raw)
            proc = self._run(qstat_argv(flavor, [str(jid)]))
            if proc.returncode != 0 and not proc.stdout.strip():
                msg = first_message(proc.stderr, proc.stdout)
                if re.search(r"unknown job id|job has finished", msg, re.IGNORECASE):
                    continue  # purged (Torque keep_completed) or history off: state files tell
                raise SchedulerError(f"qstat failed for {jid}: {msg}")
            records.update(parse_qstat(flavor, proc.stdout))
        return records

    def query(self, job_ids: list[str], offsets: dict[str, int] | None = None) -> dict[int, str]:
        """Element index -> state over the given arrays; ONE qstat call per array.

        The index is the subjob's array index + the array's MACE_INDEX_OFFSET (read back from
        qstat's Variable_List, or `offsets[seq]`). Jobs qstat no longer knows are absent.
        """
        flavor = self.flavor()
        return element_states(self.job_states(job_ids, flavor), flavor, offsets)

    def cancel(self, job_ids: list[str]) -> None:
        """qdel the given arrays/subjobs/jobs in one call; already-finished ones are not an error."""
        ids = [str(parse_job_id(j)) for j in dict.fromkeys(job_ids)]
        if not ids:
            return
        proc = self._run(["qdel", *ids])
        if proc.returncode != 0:
            msg = first_message(proc.stderr, proc.stdout)
            if not re.search(r"unknown job id|job has finished|invalid state|already", msg, re.IGNORECASE):
                raise SchedulerError(f"qdel failed: {msg}")

    def max_array_size(self) -> int:
        """scheduler.max_array_size if given to the constructor, else the server's `max_array_size`
        (PBS Pro) / `max_job_array_size` (Torque) from `qstat -B -f`, else 10000 (PBS Pro's default)."""
        if self._max_array_size is None:
            self._max_array_size = scheduler_number(
                self._run, ["qstat", "-B", "-f"], r"^\s*max_(?:job_)?array_size\s*=\s*(\d+)", DEFAULT_MAX_ARRAY_SIZE
            )
        return self._max_array_size

    def _run(self, argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return run_scheduler_command(argv, timeout=self._timeout, what="a PBS login node", cwd=cwd)
