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

from ..config import Config, archive_location, load_config
from ..context.archive import is_tombstone
from ..context.archive_store import restore_from
from ..errors import InputError, MaceError
from ..records import states as st
from ..records.element_state import read_state, write_state
from ..records.layout import STATE_FILE, SubmissionPaths
from ..records.manifest import Manifest, ManifestEntry, load_manifest
from ..records.stages import Stage, rerun_stages
from ..records.submission import RESUBMIT, SubmissionRecord, find_record, read_record, write_record
from ..schedulers import get_backend
from ..status.reconcile import ACTIVE, BAD_FINAL, Report, collect
from .contexts import Submission, scratch_root_of
from .submit import (
    cancel_unstarted,
    chain_requests,
    local_backstop,
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


def restore_archived(contexts: Sequence[Path]) -> list[Path]:
    """Bring back every context that was archived and cleaned up (a tombstone naming its archive),
    so its element resumes from its completed steps instead of starting over; the restored ones.

    A failure (object store down, checksum mismatch) is one line and nothing is resubmitted.
    """
    restored = []
    for d in contexts:
        state = read_state(d)
        source = state.epilogue.get("archive")
        if not source or not state.removed or not is_tombstone(d):
            continue
        try:
            restore_from(source, d.parent, sha256=state.epilogue.get("archive_sha256"))
        except MaceError as exc:
            exc.args = (f"resubmit: restoring {d.name} from its archive failed: {exc}; nothing resubmitted",)
            raise
        restored.append(d)
    return restored


def resubmit(
    name_or_job: str,
    *,
    elements: Sequence[int] | str | None = None,
    failed: bool = True,
    max_parallel: int | None = None,
    cfg: Config | None = None,
    progress: Any = None,
    resources: dict[str, Any] | None = None,
) -> ResubmitResult:
    """Queue the chosen elements again (default: the FAILED/TIMEOUT/CANCELLED ones) as a sparse array.

    `resources`: scheduler.* values that replace the plan's for these elements (a retry's
    escalated time/mem/partition); recorded on the array's entry so the next retry starts there.
    """
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
    by_index = {e.index: e for e in manifest.elements}
    contexts = [Path(by_index[i].context_dir) for i in wanted]
    groups = rerun_groups(manifest.stages, wanted, contexts)
    requests = chain_requests(
        plan, manifest.stages, groups, max_parallel=parallel, command=command, env=env,
        work_dir=directory / "logs", scheduler=scheduler, backend=be, overrides=resources, pack=record.pack,
    )
    for req in requests:
        be.render(req)  # refuse bad values before touching any state file
    attempt = record.next_attempt()
    restore_archived(contexts)
    for d in contexts:
        d.mkdir(mode=0o700, exist_ok=True)  # removed by hand since: recreated, the runner starts afresh
    saved = reset_states(contexts, resubmitted_at=time.time())
    reset_stages(manifest.stages, groups, by_index)
    # the runner is recorded until the arrays are queued (or, locally, have run)
    running = write_record(directory, record.replace(runner=own_runner()))
    try:
        record, result.job_ids = submit_requests(be, requests, running, directory, kind=RESUBMIT, attempt=attempt,
                                                 resources=resources)
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
        local_backstop(be, Path(manifest.scratch_root or directory.parent.parent), plan,
                       [by_index[i] for i in wanted])
    else:
        sub = Submission(
            name=plan, directory=directory, scratch_root=Path(manifest.scratch_root or directory.parent.parent),
            isolation_mode=manifest.isolation_mode, shared_database=Path(manifest.shared_database),
            on_complete=manifest.on_complete, on_failure=manifest.on_failure,
            archive_dir=archive_location(manifest.archive_dir) or Path("."), entries=list(manifest.elements),
        )
        record, result.backstop_job_id, warning = submit_backstop(be, sub, record, result.job_ids, scheduler, requests)
        if warning:
            result.warnings.append(warning)
    record = record.replace(resubmissions=(
        *record.resubmissions, {"at": time.time(), "indices": wanted, "job_ids": result.job_ids, "attempt": attempt}
    ))
    result.record = write_record(directory, record)
    return result


def rerun_groups(stages: Sequence[Stage], wanted: Sequence[int],
                 contexts: Sequence[Path]) -> list[tuple[list[int], list[str]]]:
    """Elements grouped by the stages they run again: each from its failed stage onward (every
    stage for a single-stage plan, or an element with nothing left to rerun). One chain of sparse
    arrays per group, so a stage only waits for upstream stages that run again."""
    if not stages:
        return [(list(wanted), [])]
    groups: dict[tuple[str, ...], list[int]] = {}
    for index, d in zip(wanted, contexts, strict=True):
        names = tuple(rerun_stages(stages, read_state(d).stages)) or tuple(s.name for s in stages)
        groups.setdefault(names, []).append(index)
    return [(indices, list(names)) for names, indices in groups.items()]


def reset_stages(stages: Sequence[Stage], groups: Sequence[tuple[list[int], list[str]]],
                 by_index: dict[int, ManifestEntry]) -> None:
    """The stages that run again read PENDING (with their attempts kept), so runners start them."""
    if not stages:
        return
    for indices, names in groups:
        for i in indices:
            d = Path(by_index[i].context_dir)
            if not (d / STATE_FILE).exists():
                continue
            done = read_state(d).stages
            write_state(d, stages={**done, **{n: {**(done.get(n) or {}), "state": st.PENDING} for n in names}},
                        stage=names[0])
