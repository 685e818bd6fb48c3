"""Inside a job: what a process running in one of a scheduler's jobs asks about its own job
(`JobEnvironment`, `job_environment()`), and the array notation its variables use.

Kept apart from `base.py` (requests, backends, job-script helpers: only submitting needs them) so
an element runner, which asks this at every start, imports no more than it uses. `base` re-exports
every name here.
"""

from __future__ import annotations

import importlib
import os
import subprocess
from collections.abc import Mapping
from typing import Any

from ..errors import InputError
from ..records import env as env_names
from ..records.pack import task_elements


class JobEnvironment:
    """What a process running inside one of a scheduler's jobs asks about its own job.

    The element runner, the epilogue and the site hooks use this instead of naming schedulers
    (in the spirit of submitit's `JobEnvironment`). Subclasses say which variables carry the
    array task id and the ids to record, and how to requeue.
    """

    name = "none"
    detect_var = ""  # present in every job of this scheduler
    index_vars: tuple[str, ...] = ()  # the array task id, first one set wins
    id_vars: tuple[str, ...] = ()  # recorded in the element's state file

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.environ: Mapping[str, str] = os.environ if environ is None else environ

    @classmethod
    def detect(cls, environ: Mapping[str, str]) -> bool:
        """Does `environ` come from one of this scheduler's jobs (or a script imitating one)?"""
        return any(environ.get(v) for v in (cls.detect_var, *cls.index_vars) if v)

    def task_key(self) -> str | None:
        """This run of this task, as the scheduler's task epilogue can name it from its own
        environment (records/layout.py `ended_marker`); None: no such hook to spare."""
        return None

    def task_id(self) -> int | None:
        """The array task id from the environment; None outside an array job."""
        for var in self.index_vars:
            raw = self.environ.get(var)
            if raw not in (None, ""):
                try:
                    return int(raw)
                except ValueError:
                    raise InputError(f"{var}={raw!r} is not an integer array index") from None
        return None

    def element_index(self, explicit: int | None = None) -> int:
        """The element index: `--index`, else the array task id plus MACE_INDEX_OFFSET."""
        if explicit is not None:
            return explicit
        task = self.task_id()
        if task is None:
            raise InputError("no element index: pass --index N or run inside an array job "
                             "(SLURM_ARRAY_TASK_ID, PBS_ARRAY_INDEX, PBS_ARRAYID)")
        raw = self.environ.get(env_names.INDEX_OFFSET, "0") or "0"
        try:
            return task + int(raw)
        except ValueError:
            raise InputError(f"{env_names.INDEX_OFFSET}={raw!r} is not an integer") from None

    def pack(self) -> int:
        """Elements per array task of this job's array (MACE_PACK; 1 when not packed)."""
        return self._count(env_names.PACK)

    def lanes(self) -> int:
        """How many elements of this packed task run at once (MACE_PACK_LANES; 1: one after another)."""
        return self._count(env_names.PACK_LANES)

    def _count(self, var: str) -> int:
        raw = self.environ.get(var, "1") or "1"
        try:
            return max(1, int(raw))
        except ValueError:
            raise InputError(f"{var}={raw!r} is not an integer") from None

    def packed_elements(self, task: int | None = None) -> list[int]:
        """The elements a packed array task runs, in order (records/pack.py): task `task`, else the
        array task id of this job, over the array's element list MACE_PACK_INDICES."""
        task = self.task_id() if task is None else task
        if task is None:
            raise InputError("no array task: pass --task N or run inside a packed array job")
        listed = self.environ.get(env_names.PACK_INDICES) or ""
        try:
            elements = expand_array_ids(listed)
        except ValueError:
            raise InputError(f"{env_names.PACK_INDICES}={listed!r} is not a list of element indices") from None
        return task_elements(elements, self.pack(), task)

    def is_filler(self, index: int) -> bool:
        """Is element `index` a filler of a covering range (a sparse list submitted as `a-b`, PBS
        Pro), i.e. an index nobody asked for? MACE_ARRAY_INDICES lists the wanted task ids."""
        offset = int(self.environ.get(env_names.INDEX_OFFSET, "0") or 0)
        return not is_listed(index - offset, self.environ.get(env_names.ARRAY_INDICES))

    def ids(self) -> dict[str, str]:
        """The scheduler's ids of this job, for the element's state file."""
        return {k: self.environ[k] for k in self.id_vars if self.environ.get(k)}

    def requeue_argv(self) -> list[str] | None:
        """The command that puts this job back in the queue; None when the scheduler cannot."""
        return None

    def requeue(self) -> bool:
        """Ask the scheduler to requeue this element (same context; the next attempt resumes)."""
        argv = self.requeue_argv()
        if not argv:
            return False
        try:
            return subprocess.run(argv, capture_output=True, timeout=30).returncode == 0
        except (OSError, subprocess.SubprocessError):
            return False


_JOB_ENVIRONMENTS = (
    "mace_hpc.schedulers.slurm.jobenv:SlurmJobEnv",
    "mace_hpc.schedulers.pbs.jobenv:PbsJobEnv",
)


def _load(target: str) -> Any:
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


def job_environment(environ: Mapping[str, str] | None = None) -> JobEnvironment:
    """The environment of the job this process runs in: SLURM, PBS, else local (or none)."""
    environ = os.environ if environ is None else environ
    for target in _JOB_ENVIRONMENTS:
        cls = _load(target)
        if cls.detect(environ):
            return cls(environ)
    return _load("mace_hpc.schedulers.local.jobenv:LocalJobEnv")(environ)


def is_listed(task_id: int, listed: object) -> bool:
    """Was this task of a covering range asked for? `listed` is MACE_ARRAY_INDICES: task ids in
    array notation (`0-1,3`, so never split on commas alone; `qstat -F json` may give a number)."""
    if listed is None or str(listed).strip() == "":
        return True
    return int(task_id) in set(expand_array_ids(str(listed)))


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
