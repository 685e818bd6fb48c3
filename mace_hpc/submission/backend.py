"""The scheduler backend interface shared by the local, SLURM and PBS backends.

One `ArrayRequest` describes one job array (or, with `indices=None`, one plain job such as the
backstop merge job). A backend renders it to a job script (dry-run), submits it, asks the
scheduler about it once per call (never once per element), and cancels it. The helpers here are
scheduler-neutral so every backend compresses arrays, chunks large plans and quotes job-script
values the same way.
"""

from __future__ import annotations

import importlib
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ..errors import InputError, SchedulerError, SchedulerUnavailable

# ---------------------------------------------------------------------------- normalized states
PENDING = "PENDING"
RUNNING = "RUNNING"
COMPLETED = "COMPLETED"
FAILED = "FAILED"
TIMEOUT = "TIMEOUT"
CANCELLED = "CANCELLED"
STATES = (PENDING, RUNNING, COMPLETED, FAILED, TIMEOUT, CANCELLED)
FINAL_STATES = frozenset({COMPLETED, FAILED, TIMEOUT, CANCELLED})

# SLURM job states (squeue %T / sacct State, first word) -> normalized state. Requeued and held
# jobs will run again (PENDING); a job still finishing its epilog is not final yet (RUNNING);
# hardware and memory deaths are the element's failure to rerun (FAILED); preemption without
# requeue is the scheduler taking the slot away (CANCELLED); a missed deadline is a time limit.
SLURM_STATES: dict[str, str] = {
    "PENDING": PENDING,
    "REQUEUED": PENDING,
    "REQUEUE_FED": PENDING,
    "REQUEUE_HOLD": PENDING,
    "SPECIAL_EXIT": PENDING,
    "RESV_DEL_HOLD": PENDING,
    "RUNNING": RUNNING,
    "CONFIGURING": RUNNING,
    "COMPLETING": RUNNING,
    "SUSPENDED": RUNNING,
    "STOPPED": RUNNING,
    "SIGNALING": RUNNING,
    "STAGE_OUT": RUNNING,
    "RESIZING": RUNNING,
    "COMPLETED": COMPLETED,
    "FAILED": FAILED,
    "NODE_FAIL": FAILED,
    "OUT_OF_MEMORY": FAILED,
    "BOOT_FAIL": FAILED,
    "TIMEOUT": TIMEOUT,
    "DEADLINE": TIMEOUT,
    "CANCELLED": CANCELLED,
    "PREEMPTED": CANCELLED,
    "REVOKED": CANCELLED,
}


def normalize_slurm_state(raw: str) -> str:
    """`CANCELLED by 0`, `OUT_OF_MEMORY`, `CD`... -> one of STATES (unknown: PENDING, i.e. not final)."""
    word = raw.strip().split(" ", 1)[0].rstrip("+").upper() if raw.strip() else ""
    return SLURM_STATES.get(word, PENDING)


# ---------------------------------------------------------------------------- request + protocol
@dataclass
class ArrayRequest:
    """One job array (or one plain job) to submit; see docs/architecture.md."""

    name: str  # job name (validated like a workflow id)
    indices: list[int] | None  # element indices, may be sparse; None: a single non-array job
    max_parallel: int  # the %N throttle
    command: list[str]  # the element runner argv; the index comes from the scheduler's env
    env: dict[str, str] = field(default_factory=dict)  # exported to every element
    work_dir: Path = Path(".")  # where job scripts and scheduler logs go
    scheduler: dict[str, Any] = field(default_factory=dict)  # Config.scheduler()
    dependency: str | None = None  # e.g. "afterany:123" (backstop merge job)
    # element index = array task id + index_offset; exported as MACE_INDEX_OFFSET. Chunks of a
    # plan larger than MaxArraySize keep task ids small and shift them back with this.
    index_offset: int = 0

    def task_ids(self) -> list[int]:
        """The scheduler's array task ids (indices minus the offset), sorted; [] for a plain job."""
        if self.indices is None:
            return []
        return sorted({i - self.index_offset for i in self.indices})


@runtime_checkable
class Backend(Protocol):
    name: str

    def render(self, req: ArrayRequest) -> tuple[str, list[str]]:
        """Job script text and the submit argv, without submitting (dry-run)."""
        ...

    def submit(self, req: ArrayRequest) -> str:
        """Submit; the job id. SchedulerError quoting the scheduler when it refuses."""
        ...

    def query(self, job_ids: list[str]) -> dict[int, str]:
        """Element index -> normalized state, from one scheduler call per kind; unknown ones absent."""
        ...

    def cancel(self, job_ids: list[str]) -> None: ...

    def max_array_size(self) -> int: ...


_BACKENDS = {
    "local": "mace_hpc.submission.local:LocalBackend",
    "slurm": "mace_hpc.submission.slurm:SlurmBackend",
    "pbs": "mace_hpc.submission.pbs:PbsBackend",
}


def get_backend(name: str, **opts: Any) -> Backend:
    """Backend by name; imported lazily so `local` never needs submitit's SLURM parts."""
    try:
        target = _BACKENDS[name]
    except KeyError:
        raise InputError(f"backend '{name}' is unknown; allowed: {' | '.join(_BACKENDS)}") from None
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)(**opts)


# ---------------------------------------------------------------------------- array helpers
def array_spec(task_ids: Iterable[int], max_parallel: int | None = None) -> str:
    """Sorted task ids compressed into ranges plus the throttle: `0-99%4`, `3,7,12%2`, `0-4,6,8-9%3`."""
    ids = sorted(set(task_ids))
    if not ids:
        raise InputError("an array needs at least one index")
    if ids[0] < 0:
        raise InputError(f"array task ids (index - index_offset) must be >= 0, got {ids[0]}")
    parts: list[str] = []
    start = prev = ids[0]
    for i in ids[1:] + [None]:  # type: ignore[list-item]
        if i is not None and i == prev + 1:
            prev = i
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if i is not None:
            start = prev = i
    spec = ",".join(parts)
    if max_parallel is not None:
        if max_parallel < 1:
            raise InputError(f"max_parallel must be >= 1, got {max_parallel}")
        spec += f"%{max_parallel}"
    return spec


def chunk_indices(indices: Iterable[int], max_array_size: int) -> list[tuple[int, list[int]]]:
    """Split element indices into arrays whose task ids are all < max_array_size.

    Returns [(index_offset, task_ids)], task id = index - offset. When every index already fits,
    one chunk with offset 0 (task id == index, readable logs). Otherwise greedy windows of
    max_array_size starting at each chunk's first index: a dense 10,000-element plan on a
    MaxArraySize=1001 cluster gives 10 arrays with offsets 0, 1001, ..., 9009.
    """
    ids = sorted(set(indices))
    if not ids:
        return []
    if max_array_size < 1:
        raise InputError(f"max_array_size must be >= 1, got {max_array_size}")
    if ids[0] < 0:
        raise InputError(f"element indices must be >= 0, got {ids[0]}")
    if ids[-1] < max_array_size:
        return [(0, ids)]
    chunks: list[tuple[int, list[int]]] = []
    offset, current = ids[0], []
    for i in ids:
        if i - offset >= max_array_size:
            chunks.append((offset, current))
            offset, current = i, []
        current.append(i - offset)
    chunks.append((offset, current))
    return chunks


def expand_array_ids(spec: str) -> list[int]:
    """Task ids in a scheduler's array notation: `4`, `[4-9%2]`, `3,7,12`, `0-4:2` -> ints."""
    body = spec.strip().strip("[]").split("%", 1)[0]
    out: list[int] = []
    for part in body.split(","):
        if not part:
            continue
        step = 1
        if ":" in part:
            part, step_s = part.split(":", 1)
            step = int(step_s)
        if "-" in part:
            lo, hi = part.split("-", 1)
            out.extend(range(int(lo), int(hi) + 1, step))
        else:
            out.append(int(part))
    return out


# ---------------------------------------------------------------------------- job-script values
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FORBIDDEN_ENV = re.compile(r"^(LD_|SLURM_|PBS_|BASH_ENV$|ENV$|BASH_FUNC_|IFS$)")


def check_script_value(value: object, what: str) -> str:
    """A value headed for a job-script line: a string without newline, CR or NUL (else InputError).

    A newline in a `#SBATCH` line or a shell line would start a new directive or command.
    """
    if not isinstance(value, str):
        raise InputError(f"{what} must be a string, got {type(value).__name__}")
    for ch, label in (("\n", "a newline"), ("\r", "a carriage return"), ("\0", "a NUL byte")):
        if ch in value:
            raise InputError(f"{what} must not contain {label}: {value!r}")
    return value


def shell_quote(value: object, what: str) -> str:
    """`check_script_value` then `shlex.quote`: the value reaches the program as data, never code."""
    return shlex.quote(check_script_value(value, what))


def check_env(env: Mapping[str, str], what: str = "env") -> dict[str, str]:
    """Exported variables: POSIX names, not ones that change how shells/loaders/schedulers behave."""
    out: dict[str, str] = {}
    for key, value in env.items():
        if not isinstance(key, str) or not _ENV_KEY.fullmatch(key):
            raise InputError(f"{what}: invalid variable name {key!r}; use letters, digits and _")
        if _FORBIDDEN_ENV.match(key):
            raise InputError(f"{what}: variable {key} may not be set (it changes how the job is run)")
        out[key] = check_script_value(value, f"{what}.{key}")
    return out


_JOB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_job_name(name: object) -> str:
    """Job names follow the workflow-id rule: safe in a directive, a file name and squeue output."""
    if not isinstance(name, str) or not _JOB_NAME.fullmatch(name):
        raise InputError(f"job name {name!r} is invalid; use letters, digits, '.', '_', '-' (max 128)")
    return name


def first_message(stderr: str | None, stdout: str | None = None) -> str:
    """The line a user needs from a scheduler client: its first `error` line, else its first line."""
    for text in (stderr, stdout):
        lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
        for ln in lines:
            if "error" in ln.lower():
                return ln
        if lines:
            return lines[0]
    return "no message"


def run_scheduler_command(
    argv: list[str], *, timeout: float, what: str, cwd: Path | None = None, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a scheduler client (argv, never a shell). A missing or silent client is
    SchedulerUnavailable (exit 3: retry later), distinct from a refusal the caller reads from
    the returncode. `what` names the kind of node we expected, e.g. "a SLURM login node"."""
    if shutil.which(argv[0]) is None:
        raise SchedulerUnavailable(f"{argv[0]} not found on PATH: is this {what}?")
    try:
        return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                              env=None if env is None else {**os.environ, **env})
    except subprocess.TimeoutExpired as exc:
        said = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr
        why = f": {first_message(said)}" if said else ""
        raise SchedulerUnavailable(f"{argv[0]} did not answer within {timeout:.0f}s{why}") from None


def scheduler_number(
    run: Callable[[list[str]], subprocess.CompletedProcess[str]], argv: list[str], pattern: str, default: int
) -> int:
    """An integer setting read from a scheduler client's output (e.g. MaxArraySize); `default`
    when the client cannot be asked or does not say."""
    try:
        proc = run(argv)
    except SchedulerError:
        return default
    m = re.search(pattern, proc.stdout, re.MULTILINE)
    return int(m.group(1)) if proc.returncode == 0 and m else default


def submit_script(
    run: Callable[..., subprocess.CompletedProcess[str]], script_path: Path, text: str, argv: list[str], work_dir: Path
) -> subprocess.CompletedProcess[str]:
    """Write a job script atomically (0700, next to its logs) and run the submit argv from work_dir."""
    from ..util.atomic import atomic_write_text

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write_text(script_path, text, mode=0o700)
    return run(argv, cwd=work_dir)
