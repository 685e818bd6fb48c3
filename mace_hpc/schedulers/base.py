"""The scheduler interface shared by the local, SLURM and PBS packages.

Each scheduler package has the same shape: `backend.py` (submit, query, cancel: the `Backend`
protocol), `states.py` (its own scheduler-state table onto `records.State`) and `jobenv.py` (a
`JobEnvironment`, whose base class is in `schedulers/jobenv.py`: what a process inside one of its
jobs asks instead of naming the scheduler).
One `ArrayRequest` describes one job array (or, with `indices=None`, one plain job such as the
backstop merge job). The helpers here are scheduler-neutral so every backend compresses arrays,
chunks large plans and quotes job-script values the same way.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ..errors import InputError, SchedulerError, SchedulerUnavailable
from ..records.pack import task_count, task_elements
from ..records.states import State
from ..util.atomic import atomic_write_text
from .jobenv import (  # noqa: F401 - inside a job: jobenv.py (an element imports it alone), re-exported here
    JobEnvironment,
    _load,
    expand_array_ids,
    is_listed,
    job_environment,
)


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
    stage: str | None = None  # multi-stage plans: the stage this array runs (exported as MACE_STAGE)
    # element by element after these requests (positions in the list given to `submit_all`): task i
    # waits for task i of each; `after_ids` are their job ids once submitted (placeholders in a dry run)
    after: tuple[int, ...] = ()
    after_ids: tuple[str, ...] = ()
    # packing: K consecutive elements (of the sorted `indices`) run one after another in one task;
    # tasks are 0..ceil(n/K)-1 and the runner finds its elements from MACE_PACK/MACE_PACK_INDICES;
    # `lanes` of them at once (records/pack.py: the task's cpus, at most K), exported as MACE_PACK_LANES
    pack: int = 1
    lanes: int = 1

    def task_ids(self) -> list[int]:
        """The scheduler's array task ids (indices minus the offset; packed: 0..tasks-1), sorted;
        [] for a plain job."""
        if self.indices is None:
            return []
        if self.pack > 1:
            return list(range(task_count(len(set(self.indices)), self.pack)))
        return sorted({i - self.index_offset for i in self.indices})

    def elements_of(self, task: int) -> list[int]:
        """The element indices task `task` runs (records/pack.py)."""
        return task_elements(self.indices or [], self.pack, task, self.index_offset)


@runtime_checkable
class Backend(Protocol):
    """What every scheduler backend implements (local, slurm, pbs): the same calls, the same types."""

    name: str
    elementwise_dependencies: bool  # can task i of an array wait for task i of another (SLURM aftercorr)?

    def render(self, req: ArrayRequest) -> tuple[str, list[str]]:
        """Job script text and the submit argv, without submitting (dry-run)."""
        ...

    def submit(self, req: ArrayRequest) -> str:
        """Submit; the job id. SchedulerError quoting the scheduler when it refuses."""
        ...

    def query(self, job_ids: list[str], offsets: Mapping[str, int] | None = None) -> dict[int, State]:
        """Element index -> state, from one scheduler call per kind; elements it does not know are absent.

        The index is task id + the array's offset: `offsets[job_id]` when given, else what the
        backend can read back from the scheduler (the chunk's job name or exported variables).
        """
        ...

    def submit_all(self, requests: Sequence[ArrayRequest], on_submitted: Callable[[ArrayRequest, str], None]) -> list[str]:
        """Submit requests in order, each after the ones in its `after`; `on_submitted` as each is queued."""
        ...

    def cancel(self, job_ids: list[str]) -> None: ...

    def element_job_id(self, job_id: str, task_id: int) -> str | None:
        """The scheduler's id of one task of an array (to cancel it alone); None where there is none."""
        ...

    def max_array_size(self) -> int: ...


_PLACEHOLDER = re.compile(r"^<job id of [A-Za-z0-9._@-]+>$")


def placeholder_id(name: str) -> str:
    """What a dry run shows for the job id of an array not submitted yet."""
    return f"<job id of {name}>"


def are_placeholders(ids: Iterable[str]) -> bool:
    """Are these `after_ids` a dry run's placeholders (shown as they are, never submitted)?"""
    ids = list(ids)
    return bool(ids) and all(_PLACEHOLDER.fullmatch(i) for i in ids)


def submit_each(
    backend: Backend, requests: Sequence[ArrayRequest], on_submitted: Callable[[ArrayRequest, str], None]
) -> list[str]:
    """`submit_all` for schedulers that queue now and run later: one submit per request, in order,
    each request's `after_ids` filled from the job ids of the requests it waits for."""
    ids: list[str] = []
    for req in requests:
        if req.after:
            req.after_ids = tuple(ids[u] for u in req.after)
        job_id = backend.submit(req)
        ids.append(job_id)
        on_submitted(req, job_id)
    return ids


_BACKENDS = {
    "local": "mace_hpc.schedulers.local.backend:LocalBackend",
    "slurm": "mace_hpc.schedulers.slurm.backend:SlurmBackend",
    "pbs": "mace_hpc.schedulers.pbs.backend:PbsBackend",
}
_ACCOUNTING = {
    "local": "mace_hpc.schedulers.local.accounting:LocalAccounting",
    "slurm": "mace_hpc.schedulers.slurm.accounting:SlurmAccounting",
    "pbs": "mace_hpc.schedulers.pbs.accounting:PbsAccounting",
}


def get_backend(name: str, **opts: Any) -> Backend:
    """Backend by name; imported on demand so `local` never loads submitit's SLURM parts."""
    try:
        target = _BACKENDS[name]
    except KeyError:
        raise InputError(f"backend '{name}' is unknown; allowed: {' | '.join(_BACKENDS)}") from None
    return _load(target)(**opts)


def get_accounting(name: str, scheduler: Mapping[str, Any] | None = None) -> Any:
    """The backend's accounting reader: `.usage(job_ids, offsets)` -> {job id: {index: Usage}} in one
    scheduler call per array at most, `.limits(partition)` -> what one job may ask for.
    `scheduler`: the submission's scheduler.* values (PBS: its flavor)."""
    try:
        target = _ACCOUNTING[name]
    except KeyError:
        raise InputError(f"backend '{name}' is unknown; allowed: {' | '.join(_ACCOUNTING)}") from None
    flavor = (scheduler or {}).get("pbs_flavor")
    return _load(target)(**({"flavor": flavor} if name == "pbs" and flavor else {}))


def element_usage(accounting: Any, jobs: Sequence[Any]) -> dict[str, dict[int, Any]]:
    """`accounting.usage` of these arrays (records.JobEntry) by element index. A packed task's one
    record is listed under each element it ran (records/pack.py maps the task to them) and marked
    `shared_by` = how many: its figures are the whole task's (its state, exit code and MaxRSS say
    how the task ended, for every element in it), not any one element's."""
    by_id = {j.job_id: j for j in jobs}
    usage = accounting.usage(list(by_id), {j.job_id: j.offset for j in jobs})
    for job_id, rows in usage.items():
        job = by_id.get(job_id)
        if job is not None and job.pack > 1:
            usage[job_id] = {i: dataclasses.replace(u, index=i, shared_by=len(job.elements_of(task)))
                             for task, u in rows.items() for i in job.elements_of(task)}
    return usage


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
    run: Callable[..., subprocess.CompletedProcess[str]],
    script_path: Path,
    text: str,
    argv: list[str],
    work_dir: Path,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Write a job script atomically (0700, next to its logs) and run the submit argv from work_dir
    (with `env` added to the client's environment, when given)."""
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write_text(script_path, text, mode=0o700)
    return run(argv, cwd=work_dir, **({"env": env} if env else {}))
