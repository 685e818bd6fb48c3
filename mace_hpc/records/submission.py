"""The submission record, `<scratch_root>/.submissions/<plan>/record.json`: how and where a plan
was submitted, so `status`, `cancel`, `resubmit`, `merge` and the site hooks find it again by plan
name or by any of its job ids.

Rewritten atomically after every change (each queued chunk, a cancel, a resubmission), so a crash
between two chunks still leaves every queued job findable.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..util.atomic import atomic_write_json, read_json
from ..util.private import is_private_file
from ..util.procs import process_alive
from ._io import RecordError, read_versioned
from .layout import RECORD_FILE, SubmissionPaths, submissions_root
from .pack import element_task, task_elements

VERSION = 1
ARRAY, RESUBMIT, BACKSTOP = "array", "resubmit", "backstop"
SETTLE = "settle"  # after a stage's arrays: settles elements whose runner died in it (multi-stage, SLURM)
_BASE_ID = re.compile(r"^[^_.\[]+")


def base_job_id(job_id: str) -> str:
    """`123`, `123_4`, `123[].server`, `123[4].server` -> `123`: the array a scheduler id belongs to."""
    m = _BASE_ID.match(str(job_id).strip())
    return m.group(0) if m else str(job_id)


@dataclass(frozen=True)
class JobEntry:
    """One scheduler job of a submission: an array chunk, a resubmission or the backstop merge job."""

    job_id: str
    kind: str = ARRAY
    attempt: int = 1
    offset: int = 0  # element index = array task id + offset
    array: str = ""  # the array spec as submitted (`0-99`)
    indices: tuple[int, ...] = ()
    submitted_at: float | None = None
    depends_on: tuple[str, ...] = ()  # the backstop's upstream arrays; a stage's upstream stage arrays
    stage: str | None = None  # multi-stage plans: the stage this array runs
    resources: dict[str, Any] = field(default_factory=dict)  # a retry's escalated scheduler.* values
    pack: int = 1  # elements per array task (records/pack.py maps tasks to elements)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> JobEntry:
        return cls(
            job_id=str(d["job_id"]), kind=str(d.get("kind") or ARRAY), attempt=int(d.get("attempt") or 1),
            offset=int(d.get("offset") or 0), array=str(d.get("array") or ""),
            indices=tuple(int(i) for i in d.get("indices") or ()), submitted_at=d.get("submitted_at"),
            depends_on=tuple(str(j) for j in d.get("depends_on") or ()), stage=d.get("stage"),
            resources=dict(d.get("resources") or {}), pack=int(d.get("pack") or 1),
        )

    def to_dict(self) -> dict[str, Any]:
        if self.kind == BACKSTOP:
            return {"job_id": self.job_id, "kind": self.kind, "depends_on": list(self.depends_on)}
        if self.kind == SETTLE:
            return {"job_id": self.job_id, "kind": self.kind, "stage": self.stage, "depends_on": list(self.depends_on)}
        out = {"job_id": self.job_id, "kind": self.kind, "attempt": self.attempt, "offset": self.offset,
               "array": self.array, "indices": list(self.indices), "submitted_at": self.submitted_at}
        if self.stage is not None:
            out.update(stage=self.stage, depends_on=list(self.depends_on))
        if self.pack > 1:
            out["pack"] = self.pack
        return {**out, "resources": dict(self.resources)} if self.resources else out

    def elements_of(self, task: int) -> list[int]:
        """The element indices array task `task` of this job runs (one, or a pack)."""
        return task_elements(self.indices, self.pack, task, self.offset)

    def task_of(self, index: int) -> int | None:
        """The array task of this job that runs element `index` (None: not in this job)."""
        return element_task(self.indices, self.pack, index, self.offset)

    @property
    def is_array(self) -> bool:
        return self.kind in (ARRAY, RESUBMIT)

    def matches(self, query: str) -> bool:
        """Is `query` this job or one of its elements (`123`, `123_4`, `123[4].server`)?"""
        query = str(query).strip()
        return query == self.job_id or base_job_id(query) == base_job_id(self.job_id)


GIVE_UP, RETRY = "give_up", "retry"


@dataclass(frozen=True)
class RetryDecision:
    """What the retry policy decided about one ended attempt of one element, and why.

    `cause` is a `records.causes.Cause` spelling; `old`/`new` the scheduler values that changed
    (time in minutes, mem, partition); `job_id` the retry's array once it is queued.
    """

    index: int
    attempt: int
    cause: str
    action: str  # RETRY | GIVE_UP
    reason: str = ""
    old: dict[str, Any] = field(default_factory=dict)
    new: dict[str, Any] = field(default_factory=dict)
    job_id: str | None = None
    at: float | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RetryDecision:
        return cls(index=int(d["index"]), attempt=int(d.get("attempt") or 1), cause=str(d.get("cause") or ""),
                   action=str(d.get("action") or GIVE_UP), reason=str(d.get("reason") or ""),
                   old=dict(d.get("old") or {}), new=dict(d.get("new") or {}), job_id=d.get("job_id"), at=d.get("at"))

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def summary(self) -> str:
        """One line for `mace status`: `attempt 1 TIMEOUT: retried (time 2 -> 3 min) as job 123`."""
        if self.action != RETRY:
            return f"attempt {self.attempt} {self.cause}: not retried ({self.reason})"
        changes = ", ".join(f"{k} {self.old.get(k, '-')} -> {v}" for k, v in self.new.items()
                            if self.old.get(k) != v)
        extra = f" ({changes})" if changes else ""
        job = f" as job {self.job_id}" if self.job_id else ""
        return f"attempt {self.attempt} {self.cause}: retried{extra}{job}"


@dataclass(frozen=True)
class Runner:
    """The mace process that submits a plan or, on the local backend, runs it."""

    pid: int
    host: str
    started: float | None = None

    def alive(self) -> bool:
        return process_alive(self.pid, self.started, host=self.host)


@dataclass(frozen=True)
class SubmissionRecord:
    plan: str
    backend: str
    manifest: str
    scratch_root: str
    submitted_at: float | None = None
    site: str | None = None
    elements: int = 0
    max_parallel: int = 1
    isolation_mode: str = "isolated"
    on_complete: str = "merge"
    on_failure: str = "keep"
    shared_database: str = ""
    archive_dir: str = ""
    scheduler: dict[str, Any] = field(default_factory=dict)
    command: tuple[str, ...] = ()  # the element runner argv resubmit queues again
    env: dict[str, str] = field(default_factory=dict)  # what every element of an array gets
    jobs: tuple[JobEntry, ...] = ()
    runner: Runner | None = None
    history: tuple[dict[str, Any], ...] = ()  # earlier submissions of the same plan
    resubmissions: tuple[dict[str, Any], ...] = ()
    cancelled_at: float | None = None
    backstop_error: str | None = None
    # the retry policy's decisions, one per ended attempt it looked at (see `RetryDecision`)
    retries: tuple[dict[str, Any], ...] = ()
    notified: dict[str, float] = field(default_factory=dict)  # milestone -> when it was sent (once each)
    pack: int = 1  # elements per array task (the plan's `pack`); resubmissions pack alike

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "record") -> SubmissionRecord:
        try:
            runner = d.get("runner")
            return cls(
                plan=str(d["plan"]), backend=str(d.get("backend") or "local"), manifest=str(d.get("manifest") or ""),
                scratch_root=str(d.get("scratch_root") or ""), submitted_at=d.get("submitted_at"), site=d.get("site"),
                elements=int(d.get("elements") or 0), max_parallel=int(d.get("max_parallel") or 1),
                isolation_mode=str(d.get("isolation_mode") or "isolated"),
                on_complete=str(d.get("on_complete") or "merge"), on_failure=str(d.get("on_failure") or "keep"),
                shared_database=str(d.get("shared_database") or ""), archive_dir=str(d.get("archive_dir") or ""),
                scheduler=dict(d.get("scheduler") or {}), command=tuple(str(a) for a in d.get("command") or ()),
                env={str(k): str(v) for k, v in (d.get("env") or {}).items()},
                jobs=tuple(JobEntry.from_dict(j) for j in d.get("jobs") or ()),
                runner=Runner(int(runner["pid"]), str(runner.get("host", "")), runner.get("started"))
                if isinstance(runner, Mapping) and runner.get("pid") else None,
                history=tuple(d.get("history") or ()), resubmissions=tuple(d.get("resubmissions") or ()),
                cancelled_at=d.get("cancelled_at"), backstop_error=d.get("backstop_error"),
                retries=tuple(r for r in d.get("retries") or () if isinstance(r, Mapping)),
                notified={str(k): float(v) for k, v in (d.get("notified") or {}).items()},
                pack=int(d.get("pack") or 1),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise RecordError(f"{where}: not a mace-hpc submission record ({type(exc).__name__}: {exc}); "
                              "submit the plan again") from None

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out.update(
            version=VERSION, command=list(self.command), jobs=[j.to_dict() for j in self.jobs],
            runner=dataclasses.asdict(self.runner) if self.runner else None,
            history=list(self.history), resubmissions=list(self.resubmissions),
            retries=[dict(r) for r in self.retries],
        )
        return out

    def replace(self, **changes: Any) -> SubmissionRecord:
        return dataclasses.replace(self, **changes)

    def with_jobs(self, entries: Iterable[JobEntry]) -> SubmissionRecord:
        return self.replace(jobs=(*self.jobs, *entries))

    def without_jobs(self, job_ids: Iterable[str]) -> SubmissionRecord:
        gone = set(job_ids)
        return self.replace(jobs=tuple(j for j in self.jobs if j.job_id not in gone))

    def array_jobs(self) -> list[JobEntry]:
        """The element arrays (first submission chunks, then resubmissions), not the backstop."""
        return [j for j in self.jobs if j.is_array]

    def current_jobs(self, stage: str | None = None) -> dict[int, JobEntry]:
        """Element index -> the latest array that covers it (a resubmission supersedes the first run);
        for a multi-stage plan, the latest array of `stage`."""
        out: dict[int, JobEntry] = {}
        for job in self.array_jobs():
            if job.stage == stage:
                for i in job.indices:
                    out[i] = job
        return out

    def stage_jobs(self) -> dict[tuple[int, str | None], JobEntry]:
        """(element index, stage) -> the latest array that runs that stage of that element."""
        out: dict[tuple[int, str | None], JobEntry] = {}
        for job in self.array_jobs():
            for i in job.indices:
                out[(i, job.stage)] = job
        return out

    def next_attempt(self) -> int:
        return 1 + max((j.attempt for j in self.array_jobs()), default=1)

    def all_jobs(self) -> list[JobEntry]:
        """This submission's jobs and those of earlier submissions of the same plan."""
        older = [JobEntry.from_dict(j) for old in self.history for j in old.get("jobs") or ()]
        return [*self.jobs, *older]

    def resources_of(self, index: int) -> dict[str, Any]:
        """The scheduler.* values element `index` last ran with: the plan's, updated by its retry."""
        job = self.current_jobs().get(index)
        return {**self.scheduler, **(job.resources if job else {})}

    def attempts_of(self, index: int) -> int:
        """How many arrays of this submission ran element `index` (first run + retries/resubmits)."""
        return sum(1 for j in self.array_jobs() if index in j.indices)

    def retry_notes(self) -> dict[int, list[str]]:
        """Element index -> one line per retry decision, oldest first (what `mace status` shows)."""
        out: dict[int, list[str]] = {}
        for d in map(RetryDecision.from_dict, self.retries):
            out.setdefault(d.index, []).append(d.summary())
        return out

    def runner_alive(self) -> bool:
        return self.runner is not None and self.runner.alive()


def load_record(path: str | os.PathLike[str]) -> SubmissionRecord:
    return SubmissionRecord.from_dict(read_versioned(path, "submission record", VERSION, "submit the plan again"),
                                      str(path))


def read_record(path: str | os.PathLike[str]) -> SubmissionRecord | None:
    """The record at `path`, None when absent or unusable (for searches over many submissions)."""
    data = read_json(path) if is_private_file(path) else None  # another user's record is not ours to act on
    if not isinstance(data, dict):
        return None
    try:
        return SubmissionRecord.from_dict(data, str(path))
    except RecordError:
        return None


def write_record(directory: str | os.PathLike[str], record: SubmissionRecord) -> SubmissionRecord:
    atomic_write_json(SubmissionPaths(Path(directory)).record, record.to_dict(), indent=None)
    return record


def list_records(scratch_root: str | os.PathLike[str]) -> list[tuple[SubmissionPaths, SubmissionRecord]]:
    """Every readable submission under the scratch root, by plan name."""
    base = submissions_root(scratch_root)
    out = []
    for path in sorted(base.glob(f"*/{RECORD_FILE}")) if base.is_dir() else []:
        record = read_record(path)
        if record is not None:
            out.append((SubmissionPaths(path.parent), record))
    return out


def find_record(scratch_root: str | os.PathLike[str], name_or_job: str) -> tuple[SubmissionPaths, SubmissionRecord]:
    """A submission by plan name, or by a job id recorded in any submission (earlier ones too)."""
    base = submissions_root(scratch_root)
    name_or_job = str(name_or_job).strip()
    if name_or_job and "/" not in name_or_job and name_or_job not in (".", ".."):
        paths = SubmissionPaths(base / name_or_job)
        record = read_record(paths.record)
        if record is not None:
            return paths, record
    found = list_records(scratch_root)
    for paths, record in found:
        if any(j.matches(name_or_job) for j in record.all_jobs()):
            return paths, record
    known = ", ".join(p.root.name for p, _ in found) or "none"
    raise RecordError(f"no submission named or with job id {name_or_job!r} under {base}; "
                      f"known plans: {known} (see `mace status`)")
