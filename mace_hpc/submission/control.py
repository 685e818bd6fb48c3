"""`mace cancel` and `mace resubmit`: acting on a submission found by plan name or job id.

Both start from the record and one reconciled status (one scheduler query), so they act on what
is really queued: cancel stops every array of the plan in one scheduler call and marks elements
that never started CANCELLED; resubmit queues only the chosen elements, as a sparse array into
their existing contexts (the runner resumes by workflow id and skips completed steps), and refuses
elements that are still queued or running.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Config, load_config
from ..errors import InputError
from ..records import states as st
from ..records.layout import SubmissionPaths
from ..records.manifest import Manifest, load_manifest
from ..records.submission import RESUBMIT, SubmissionRecord, find_record, read_record, write_record
from ..schedulers import get_backend
from ..status.reconcile import ACTIVE, BAD_FINAL, Report, collect
from .contexts import Submission, scratch_root_of
from .submit import (
    array_limit,
    cancel_unstarted,
    local_backstop,
    make_requests,
    own_runner,
    reset_states,
    resolve_parallel,
    restore_files,
    submit_backstop,
    submit_requests,
)


def find_submission(name_or_job: str, cfg: Config | None = None) -> tuple[Path, SubmissionRecord, Manifest]:
    """(submission dir, record, manifest) by plan name or job id under the configured scratch root."""
    cfg = cfg or load_config()
    paths, record = find_record(scratch_root_of(cfg), name_or_job)
    return paths.root, record, load_manifest(paths.manifest)


def status_of(name_or_job: str, cfg: Config | None = None) -> Report:
    _, record, manifest = find_submission(name_or_job, cfg)
    return collect(record, manifest, get_backend(record.backend))


# ------------------------------------------------------------------ cancel
@dataclass
class CancelResult:
    plan: str
    job_ids: list[str]
    marked: int  # elements that never started, now CANCELLED
    running: int  # elements that were running: the scheduler's signal makes them record CANCELLED


def cancel(name_or_job: str, cfg: Config | None = None) -> CancelResult:
    """Cancel every array (and the backstop job) of a submission in one scheduler call."""
    directory, record, manifest = find_submission(name_or_job, cfg)
    jobs = [j.job_id for j in record.jobs]
    report = collect(record, manifest, get_backend(record.backend))
    running = sum(1 for r in report.rows if r["state"] == st.RUNNING)
    # recorded before the signal goes out: an element that requeues itself on SIGTERM (preemption)
    # reads it to tell `mace cancel` apart and stays cancelled
    write_record(directory, record.replace(cancelled_at=time.time()))
    try:
        if record.backend == "local":
            if record.runner_alive():
                import psutil  # lazy: only cancelling a local submission signals its runner

                psutil.Process(record.runner.pid).terminate()  # type: ignore[union-attr]
        elif jobs:
            get_backend(record.backend).cancel(jobs)
    except BaseException:
        write_record(directory, record)
        raise
    pending = {r["index"] for r in report.rows if r["file_state"] == st.PENDING and r["state"] in ACTIVE}
    marked = cancel_unstarted([e for e in manifest.elements if e.index in pending],
                              "cancelled (mace cancel) before it started")
    return CancelResult(record.plan, jobs, marked, running)


# ------------------------------------------------------------------ resubmit
@dataclass
class ResubmitResult:
    plan: str
    backend: str
    indices: list[int]
    job_ids: list[str] = field(default_factory=list)
    backstop_job_id: str | None = None
    warnings: list[str] = field(default_factory=list)
    record: SubmissionRecord | None = None


def parse_elements(text: str, total: int) -> list[int]:
    """`3,7,12` or `0-4,9` -> sorted indices, each checked against the plan's size."""
    out: set[int] = set()
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                if lo > hi:
                    raise ValueError
                out.update(range(lo, hi + 1))
            else:
                out.add(int(part))
        except ValueError:
            raise InputError(f"--elements: {part!r} is not an index or a range like 3-7") from None
    if not out:
        raise InputError("--elements: give element indices like 3,7,12")
    bad = sorted(i for i in out if not 0 <= i < total)
    if bad:
        raise InputError(f"--elements: {bad[0]} is not an element of this plan (indices 0-{total - 1})")
    return sorted(out)


def resubmit(
    name_or_job: str,
    *,
    elements: Sequence[int] | str | None = None,
    failed: bool = True,
    max_parallel: int | None = None,
    cfg: Config | None = None,
    progress: Any = None,
) -> ResubmitResult:
    """Queue the chosen elements again (default: the FAILED/TIMEOUT/CANCELLED ones) as a sparse array."""
    cfg = cfg or load_config()
    directory, record, manifest = find_submission(name_or_job, cfg)
    backend_name = record.backend
    opts = {"progress": progress} if backend_name == "local" and progress else {}
    be = get_backend(backend_name, **opts)
    if record.runner_alive():
        raise InputError(
            f"plan {record.plan!r} is still being run by pid {record.runner.pid}; "  # type: ignore[union-attr]
            f"wait for it or `mace cancel {record.plan}`"
        )
    report = collect(record, manifest, be)
    total = len(manifest.elements)
    if elements is not None:
        wanted = parse_elements(elements, total) if isinstance(elements, str) else parse_elements(
            ",".join(str(i) for i in elements), total
        )
    else:
        wanted = [r["index"] for r in report.rows if r["run_state"] in BAD_FINAL and r["state"] not in ACTIVE]
    plan = record.plan
    result = ResubmitResult(plan, backend_name, wanted)
    if not wanted:
        return result
    busy = [
        r for r in report.rows
        if r["index"] in set(wanted) and (r["state"] in ACTIVE or r["scheduler_state"] in ACTIVE)
    ]
    if busy:
        shown = ",".join(str(r["index"]) for r in busy[:10]) + (" ..." if len(busy) > 10 else "")
        raise InputError(
            f"--elements: element(s) {shown} of {plan!r} are still queued or running; "
            f"wait for them or `mace cancel {plan}` first"
        )
    scheduler = dict(record.scheduler)
    parallel = resolve_parallel(max_parallel, None, cfg) if max_parallel else record.max_parallel
    env, command = dict(record.env), list(record.command)
    if not env or not command:
        raise InputError(f"{directory}/record.json: written by an older mace-hpc; submit the plan again")
    requests = make_requests(
        plan, wanted, max_parallel=parallel, command=command, env=env, work_dir=directory / "logs",
        scheduler=scheduler, max_array_size=array_limit(scheduler, be),
    )
    for req in requests:
        be.render(req)  # refuse bad values before touching any state file
    attempt = record.next_attempt()
    by_index = {e.index: e for e in manifest.elements}
    contexts = [Path(by_index[i].context_dir) for i in wanted]
    for d in contexts:
        d.mkdir(mode=0o700, exist_ok=True)  # removed by hand since: recreated, the runner starts afresh
    saved = reset_states(contexts, resubmitted_at=time.time())
    # the runner is recorded until the arrays are queued (or, locally, have run)
    running = write_record(directory, record.replace(runner=own_runner()))
    try:
        record, result.job_ids = submit_requests(be, requests, running, directory, kind=RESUBMIT, attempt=attempt)
    except KeyboardInterrupt:
        if backend_name == "local":
            cancel_unstarted([by_index[i] for i in wanted], "interrupted before it started")
        written = read_record(SubmissionPaths(directory).record) or record  # jobs queued before the interrupt
        write_record(directory, written.replace(runner=None))
        raise
    except BaseException:
        restore_files(saved)
        write_record(directory, record)
        raise
    record = record.replace(runner=None)
    if backend_name == "local":
        local_backstop(be, Path(manifest.scratch_root or directory.parent.parent), plan)
    else:
        sub = Submission(
            name=plan, directory=directory, scratch_root=Path(manifest.scratch_root or directory.parent.parent),
            isolation_mode=manifest.isolation_mode, shared_database=Path(manifest.shared_database),
            on_complete=manifest.on_complete, on_failure=manifest.on_failure,
            archive_dir=Path(manifest.archive_dir or "."), entries=list(manifest.elements),
        )
        record, result.backstop_job_id, warning = submit_backstop(be, sub, record, result.job_ids, scheduler)
        if warning:
            result.warnings.append(warning)
    record = record.replace(resubmissions=(
        *record.resubmissions, {"at": time.time(), "indices": wanted, "job_ids": result.job_ids, "attempt": attempt}
    ))
    result.record = write_record(directory, record)
    return result
