"""Plan -> contexts -> one job array per chunk: the heart of `mace-submit`.

Everything is validated and rendered before anything is created; if the scheduler refuses a
chunk, the chunks already queued are cancelled and the contexts (and submission directory) this
submission created are removed again, so a failed submission leaves nothing behind. A plan whose
previous submission still has elements queued or running is refused rather than queued twice.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Config, effective_signal_margin, load_config
from ..epilogue.backstop import backstop_record, backstop_request
from ..epilogue.finalize import Options
from ..epilogue.pending import merge_pending
from ..errors import InputError, SchedulerError
from ..plan import Plan, plan_from_any
from ..records import env as env_names
from ..records import states as st
from ..records.element_state import read_state, write_state
from ..records.layout import STATE_FILE, submissions_root
from ..records.manifest import ManifestEntry, read_manifest
from ..records.pack import lane_cpus, lane_slots
from ..records.pack import lanes as pack_lanes
from ..records.runner import runner_argv
from ..records.stages import Stage, ordered
from ..records.submission import ARRAY, SETTLE, JobEntry, Runner, SubmissionRecord, read_record, write_record
from ..schedulers import ArrayRequest, Backend, get_backend
from ..schedulers.base import array_spec, chunk_indices, get_accounting, placeholder_id
from ..status.reconcile import ACTIVE, collect
from ..util.atomic import atomic_write_bytes
from ..util.nfslock import LockTimeout, NfsLock
from ..util.private import ensure_private_dir
from ..util.procs import hostname, process_start_time
from .contexts import Submission, build_submission, create_contexts, remove_created
from .local_epilogue import BatchedEpilogue, deferrable


@dataclass
class SubmitResult:
    submission: Submission
    backend: str
    requests: list[ArrayRequest]
    job_ids: list[str] = field(default_factory=list)
    rendered: list[tuple[str, list[str]]] = field(default_factory=list)
    record: SubmissionRecord | None = None
    seconds: float = 0.0
    backstop_job_id: str | None = None
    warnings: list[str] = field(default_factory=list)
    plan: Plan | None = None


def element_command(manifest: Path, python: str | None = None) -> list[str]:
    """The argv every backend runs for an element (the index comes from the environment)."""
    return [*runner_argv(python), str(manifest)]


def preflight_programs(plan: Plan) -> None:
    """On the local backend a missing program is bad input, reported before anything runs."""
    seen: set[str] = set()
    for e in plan.elements:
        for i, s in enumerate(e.steps):
            prog = s.command[0] if s.command else None
            if prog is None or prog in seen or "{" in prog:
                continue
            seen.add(prog)
            if shutil.which(prog) is None:
                raise InputError(f"elements[{e.index}].steps[{i}].command: program {prog!r} not found on PATH")


def resolve_parallel(max_parallel: int | None, plan: Plan | None, cfg: Config) -> int:
    if max_parallel is not None and (isinstance(max_parallel, bool) or int(max_parallel) <= 0):
        raise InputError(f"--max-parallel: {max_parallel} is invalid; give a positive integer")
    return int(max_parallel or (plan.max_parallel if plan else None) or cfg["max_parallel"])


def array_env(sub: Submission, scheduler: dict[str, Any]) -> dict[str, str]:
    """The environment every element of the submission gets (the per-element part is the runner's)."""
    return {
        env_names.MANIFEST: str(sub.manifest_path),
        env_names.ISOLATION_MODE: sub.isolation_mode,
        env_names.REQUEUE: "1" if scheduler.get("requeue") else "0",
    }


def make_requests(
    name: str,
    indices: Sequence[int],
    *,
    max_parallel: int,
    command: list[str],
    env: dict[str, str],
    work_dir: Path,
    scheduler: dict[str, Any],
    max_array_size: int,
    pack: int = 1,
) -> list[ArrayRequest]:
    """One request per chunk of task ids below `max_array_size`, each with its index offset.

    Packed (`pack` > 1): tasks 0..ceil(n/pack)-1 over the sorted indices, chunked by tasks, each
    chunk's elements exported (MACE_PACK_INDICES) so its runner finds them alone; the task's time
    limit is `pack` times the element's, which each element keeps as its own budget (MACE_PACK_TIME)."""
    if pack > 1:
        return pack_requests(name, indices, max_parallel=max_parallel, command=command, env=env,
                             work_dir=work_dir, scheduler=scheduler, max_array_size=max_array_size, pack=pack)
    return [
        ArrayRequest(
            name=name, indices=[t + offset for t in task_ids], max_parallel=max_parallel, command=command,
            env={**env, env_names.INDEX_OFFSET: str(offset)}, work_dir=work_dir,
            scheduler=scheduler, index_offset=offset,
        )
        for offset, task_ids in chunk_indices(indices, max_array_size)
    ]


def pack_requests(
    name: str, indices: Sequence[int], *, max_parallel: int, command: list[str], env: dict[str, str],
    work_dir: Path, scheduler: dict[str, Any], max_array_size: int, pack: int,
) -> list[ArrayRequest]:
    """`make_requests` for a packed array: chunk k holds tasks k*limit.. (its own element list).
    With cpus > 1 a task runs its elements in lanes (records/pack.py): MACE_PACK_LANES of them at
    once, each element's steps told their share of the cpus (MACE_CPUS), and the task's time limit
    covers one lane's elements, not all K."""
    ordered = sorted(set(indices))
    per_chunk = max(1, max_array_size) * pack
    minutes = int(scheduler.get("time") or 60)
    budget = max(1, minutes * 60 - effective_signal_margin(scheduler))
    cpus = int(scheduler.get("cpus") or 1)
    lanes = pack_lanes(pack, cpus)
    laned = {env_names.PACK_LANES: str(lanes), env_names.CPUS: str(lane_cpus(pack, cpus))} if lanes > 1 else {}
    out = []
    for k in range(0, len(ordered), per_chunk):
        chunk = ordered[k:k + per_chunk]
        out.append(ArrayRequest(
            name=name if k == 0 else f"{name}-pack{k // per_chunk}", indices=chunk, max_parallel=max_parallel,
            command=command, work_dir=work_dir, pack=pack, lanes=lanes,
            scheduler={**scheduler, "time": minutes * lane_slots(pack, cpus)},
            env={**env, env_names.INDEX_OFFSET: "0", env_names.PACK: str(pack),
                 env_names.PACK_INDICES: array_spec(chunk), env_names.PACK_TIME: str(budget), **laned},
        ))
    return out


def element_scheduler(req: ArrayRequest) -> dict[str, Any]:
    """The scheduler values of one element of `req`: a packed task's time limit is that of the
    elements one lane runs (`pack` of them without lanes), each with this limit."""
    if req.pack <= 1 or "time" not in req.scheduler:
        return dict(req.scheduler)
    return {**req.scheduler, "time": int(req.scheduler["time"]) // lane_slots(req.pack, req.scheduler.get("cpus"))}


def array_limit(scheduler: dict[str, Any], backend: Backend) -> int:
    return int(scheduler.get("max_array_size") or backend.max_array_size())


def chain_requests(
    name: str,
    stages: Sequence[Stage],
    groups: Sequence[tuple[Sequence[int], Sequence[str]]],
    *,
    max_parallel: int,
    command: list[str],
    env: dict[str, str],
    work_dir: Path,
    scheduler: dict[str, Any],
    backend: Backend,
    overrides: dict[str, Any] | None = None,
    pack: int = 1,
) -> list[ArrayRequest]:
    """The arrays of a submission: per group (element indices, the stages they run), one array per
    stage and chunk, each stage's chunk after the same chunk of the stages it needs.

    Every stage is chunked with the same limit, so chunk k of each stage holds the same elements at
    the same task ids and `aftercorr` pairs element i with element i. A single-stage plan (no
    stages) is one group of one array per chunk. `overrides` (a retry's escalated resources)
    win over the plan's and each stage's own. `pack`: elements per task, the same in every stage
    so task i of each stage runs the same elements.
    """
    overrides = dict(overrides or {})
    limit = array_limit(scheduler, backend)
    if not stages:
        return [r for indices, _ in groups for r in make_requests(
            name, indices, max_parallel=max_parallel, command=command, env=env, work_dir=work_dir,
            scheduler={**scheduler, **overrides}, max_array_size=limit, pack=pack)]
    out: list[ArrayRequest] = []
    for indices, names in groups:
        placed: dict[tuple[str, int], int] = {}
        for stage in ordered(stages):
            if stage.name not in names:
                continue
            for req in make_requests(
                f"{name}.{stage.name}", indices, max_parallel=max_parallel, command=command,
                env={**env, env_names.STAGE: stage.name}, work_dir=work_dir,
                scheduler={**scheduler, **stage.resources, **overrides}, max_array_size=limit, pack=pack,
            ):
                req.stage = stage.name
                req.after = tuple(placed[(n, req.index_offset)] for n in stage.needs if (n, req.index_offset) in placed)
                placed[(stage.name, req.index_offset)] = len(out)
                out.append(req)
    return out


def build_requests(
    plan: Plan, sub: Submission, cfg: Config, backend: Backend, indices: list[int], max_parallel: int
) -> list[ArrayRequest]:
    scheduler = {**cfg.scheduler(), **plan.resources}
    return chain_requests(
        plan.name, plan.stages, [(indices, [s.name for s in plan.stages])], max_parallel=max_parallel,
        command=element_command(sub.manifest_path, scheduler.get("python")), env=array_env(sub, scheduler),
        work_dir=sub.directory / "logs", scheduler=scheduler, backend=backend, pack=plan.pack or 1,
    )


def job_name_of(req: ArrayRequest) -> str:
    """How a request is named in a dry run: its job name, with the chunk's offset when shifted."""
    return f"{req.name}@{req.index_offset}" if req.index_offset else req.name


def job_entry(req: ArrayRequest, job_id: str, kind: str, attempt: int,
              resources: dict[str, Any] | None = None) -> JobEntry:
    return JobEntry(job_id, kind=kind, attempt=attempt, offset=req.index_offset, array=array_spec(req.task_ids()),
                    indices=tuple(sorted(req.indices or [])), submitted_at=time.time(), stage=req.stage,
                    depends_on=tuple(req.after_ids), resources=dict(resources or {}), pack=req.pack)


def submit_requests(
    be: Backend,
    requests: Sequence[ArrayRequest],
    record: SubmissionRecord,
    record_dir: Path,
    *,
    kind: str,
    attempt: int,
    resources: dict[str, Any] | None = None,
) -> tuple[SubmissionRecord, list[str]]:
    """Submit every array (stages after their upstream arrays), recording each job id as soon as
    it exists; on failure cancel those queued.

    The record is written after each array so a crash between two still leaves every queued job
    findable (`mace cancel` works on a half-submitted plan). Returns the new record and the job ids.
    """
    job_ids: list[str] = []
    latest = [record]

    def queued(req: ArrayRequest, job_id: str) -> None:
        job_ids.append(job_id)
        latest[0] = write_record(record_dir, latest[0].with_jobs([job_entry(req, job_id, kind, attempt, resources)]))

    try:
        be.submit_all(requests, queued)
    except BaseException:
        if job_ids and be.name != "local":
            try:
                be.cancel(job_ids)
            except Exception:  # the scheduler's first refusal is the message the user needs
                pass
        raise
    return latest[0], job_ids


def submit_backstop(
    be: Backend, sub: Submission, record: SubmissionRecord, job_ids: list[str], scheduler: dict[str, Any],
    requests: Sequence[ArrayRequest] = (),
) -> tuple[SubmissionRecord, str | None, str | None]:
    """Queue the backstop merge job (runs once after every array); (record, job id, warning).
    Before it, on a scheduler that chains stages element by element, one settle job per stage
    that others wait for (`submit_settlers`).

    A backstop that cannot be queued is a warning, not a failed submission: every element still
    runs its own epilogue, and `mace merge PLAN` does the backstop's work by hand.
    """
    record, settle_warning = submit_settlers(be, sub, record, requests, job_ids, scheduler)
    try:
        req = backstop_request(
            sub.name, job_ids, scratch_root=sub.scratch_root, work_dir=sub.directory / "logs",
            scheduler=scheduler, elements=len(sub.entries), max_time=partition_max_time(be.name, scheduler),
        )
        job_id = be.submit(req)
    except (SchedulerError, InputError, ValueError) as exc:
        warning = f"backstop merge job not queued ({exc}); run `mace merge {sub.name}` once the arrays end"
        warning = f"{settle_warning}; {warning}" if settle_warning else warning
        return record.replace(backstop_error=warning), None, warning
    return record.with_jobs([backstop_record(job_id, job_ids)]), job_id, settle_warning


def submit_settlers(
    be: Backend, sub: Submission, record: SubmissionRecord, requests: Sequence[ArrayRequest], job_ids: list[str],
    scheduler: dict[str, Any],
) -> tuple[SubmissionRecord, str | None]:
    """After each upstream stage's arrays (`afterany`), a small job that settles what they left
    unsettled: an element whose runner was killed hard (out of memory, node failure) records
    nothing, so under `aftercorr` its downstream tasks would wait forever. The settle job records
    that stage FAILED, its downstream stages SKIPPED, and cancels their tasks
    (`python -m mace_hpc.element MANIFEST --settle-stage NAME --jobs IDS`). Only where the
    scheduler chains element by element; elsewhere every downstream task starts and its runner
    settles the lost stage itself."""
    if not getattr(be, "elementwise_dependencies", False):
        return record, None
    upstream = {u for req in requests for u in req.after}
    by_stage: dict[str, list[str]] = {}
    for k in sorted(upstream):
        by_stage.setdefault(str(requests[k].stage), []).append(job_ids[k])
    for stage, ids in by_stage.items():
        try:
            req = backstop_request(
                sub.name, ids, scratch_root=sub.scratch_root, work_dir=sub.directory / "logs", scheduler=scheduler,
                elements=len(sub.entries), max_time=partition_max_time(be.name, scheduler),
            )
            req = dataclasses.replace(req, name=f"{sub.name}.{stage}.settle"[:128], command=[
                *element_command(sub.manifest_path, scheduler.get("python")), "--settle-stage", stage,
                "--jobs", ",".join(ids)])
            job_id = be.submit(req)
        except (SchedulerError, InputError, ValueError) as exc:
            return record, (f"settle job of stage {stage} not queued ({exc}); if an element's runner is killed "
                            f"in that stage, `mace cancel {sub.name}` its waiting tasks")
        record = write_record(sub.directory, record.with_jobs(
            [JobEntry(job_id, kind=SETTLE, stage=stage, depends_on=tuple(ids))]))
    return record, None


def partition_max_time(backend: str, scheduler: dict[str, Any]) -> int | None:
    """The partition's (queue's) MaxTime in minutes, None when unlimited or unknown."""
    try:
        return get_accounting(backend, scheduler).limits(scheduler.get("partition")).max_time_min
    except Exception:  # noqa: BLE001 - a limit we cannot read caps nothing
        return None


# ------------------------------------------------------------------ already submitted?
def active_elements(record: SubmissionRecord, manifest_entries: int | None, backend: Backend | None = None,
                    manifest: Any = None) -> tuple[int, str | None]:
    """How many elements of a previous submission are still queued or running (one scheduler query)."""
    if record.runner_alive():  # a local run, or a submission still being made
        total = manifest_entries if manifest_entries is not None else record.elements
        return total, f"the mace process that submitted it (pid {record.runner.pid}) is still running"  # type: ignore[union-attr]
    if record.backend == "local" or not record.array_jobs() or manifest is None:
        return 0, None
    report = collect(record, manifest, backend or get_backend(record.backend))
    active = [r for r in report.rows if r["state"] in ACTIVE or r["scheduler_state"] in ACTIVE]
    if report.scheduler_error and not active:
        return 0, None
    return len(active), report.scheduler_error


def ensure_same_elements(sub: Submission, before: Sequence[ManifestEntry]) -> None:
    """A plan submitted again must keep every earlier element at its index (it may add new ones):
    records, state files and scheduler task ids all refer to elements by index."""
    old = [e.workflow_id for e in before]
    now = [e.workflow_id for e in sub.entries]
    if now[: len(old)] != old:
        i = next((k for k, (a, b) in enumerate(zip(old, now, strict=False)) if a != b), min(len(old), len(now)))
        was = old[i] if i < len(old) else "nothing"
        got = now[i] if i < len(now) else "nothing"
        raise InputError(
            f"plan {sub.name!r} was submitted before with other elements (index {i} was {was}, now {got}); "
            f"give the changed plan a new name, or add new elements only at the end"
        )


def ensure_not_active(sub: Submission) -> SubmissionRecord | None:
    """Refuse a plan whose previous submission is still queued/running; return the old record."""
    old = read_record(sub.record_path)
    if old is None:
        return None
    manifest = read_manifest(sub.manifest_path)
    if manifest is not None:
        ensure_same_elements(sub, manifest.elements)
    n, why = active_elements(old, len(manifest.elements) if manifest else None, manifest=manifest)
    if n:
        ids = " ".join(j.job_id for j in old.jobs) or "none"
        extra = f" ({why})" if why else ""
        raise InputError(
            f"plan {sub.name!r} is already submitted (jobs {ids}) and {n} of its elements are still queued "
            f"or running{extra}; see `mace status {sub.name}`, stop it with `mace cancel {sub.name}`, "
            f"or rerun failed elements with `mace resubmit {sub.name} --failed`"
        )
    return old


def reset_states(context_dirs: Sequence[Path], **fields: Any) -> dict[Path, bytes | None]:
    """Mark existing contexts as queued again (state PENDING); returns the old files to restore."""
    saved: dict[Path, bytes | None] = {}
    for d in context_dirs:
        path = Path(d) / STATE_FILE
        try:
            saved[path] = path.read_bytes()
        except FileNotFoundError:
            saved[path] = None
            continue  # never ran: absent already reads as PENDING
        if read_state(d).results_home:
            continue  # done and cleaned up: the runner leaves it as it is
        write_state(Path(d), state=st.PENDING, run_state=st.PENDING, queued_at=time.time(), **fields)
    return saved


def snapshot(paths: Sequence[Path]) -> dict[Path, bytes | None]:
    """The current bytes of files (None: absent), for restore_files if a submission fails."""
    saved: dict[Path, bytes | None] = {}
    for path in paths:
        try:
            saved[path] = path.read_bytes()
        except FileNotFoundError:
            saved[path] = None
    return saved


def restore_files(saved: dict[Path, bytes | None]) -> None:
    """Put files back as `reset_states`/`snapshot` found them (atomic writes)."""
    for path, data in saved.items():
        if data is None:
            path.unlink(missing_ok=True)
        elif path.parent.is_dir():
            atomic_write_bytes(path, data)


# ------------------------------------------------------------------ the pipeline
def submit_plan(
    plan_or_path: Any,
    *,
    config: Config | None = None,
    site: str | None = None,
    backend: str | None = None,
    isolation_mode: str | None = None,
    max_parallel: int | None = None,
    indices: list[int] | None = None,
    dry_run: bool = False,
    prepare_only: bool = False,
    progress: Callable[[int, int, int], None] | None = None,
) -> SubmitResult:
    """Validate, create contexts, submit one array per chunk; see the module docstring.

    `prepare_only`: contexts, manifest and record but no jobs (for a user's own array script).
    """
    t0 = time.perf_counter()
    cfg = config or load_config(site=site, cli={"backend": backend, "isolation_mode": isolation_mode})
    plan = plan_from_any(plan_or_path)
    if not plan.elements:
        raise InputError("elements: the plan has no elements to run")
    backend_name = backend or cfg["backend"]
    parallel = resolve_parallel(max_parallel, plan, cfg)
    sub = build_submission(plan, cfg, isolation_mode)
    batched = BatchedEpilogue(sub, cfg) if backend_name == "local" and deferrable(sub, cfg) else None
    opts: dict[str, Any] = {"on_ended": batched} if batched else {}
    if backend_name == "local" and progress:
        opts["progress"] = progress
    be = get_backend(backend_name, **opts)
    if backend_name == "local" and not prepare_only and not {**cfg.scheduler(), **plan.resources}.get("setup"):
        preflight_programs(plan)  # setup lines (module load, a venv) may put the programs on PATH
    wanted = list(range(len(plan.elements))) if indices is None else sorted(set(indices))
    if not wanted or not 0 <= wanted[0] <= wanted[-1] < len(plan.elements):
        raise InputError(f"indices: {indices!r} must be element indices 0-{len(plan.elements) - 1}")
    requests = build_requests(plan, sub, cfg, be, wanted, parallel)
    result = SubmitResult(sub, backend_name, requests, plan=plan)
    # render every chunk now: a value that cannot go into a job script fails before anything exists
    for req in requests:  # a stage's upstream job ids do not exist yet: named placeholders
        req.after_ids = tuple(placeholder_id(job_name_of(requests[u])) for u in req.after)
    result.rendered = [be.render(r) for r in requests]
    for req in requests:
        req.after_ids = ()
    if dry_run:
        result.seconds = time.perf_counter() - t0
        return result

    # "not active yet?" and "now it is ours" are one step (invariant 8): two mace-submit runs of a
    # plan started together serialise here, and the second finds the first's live runner
    lock = submission_lock(sub)
    try:
        old = ensure_not_active(sub)
    except BaseException:
        lock.release()
        raise
    existing = [Path(e.context_dir) for e in sub.entries if os.path.isdir(e.context_dir)]
    # a failed resubmission must leave the previous manifest (its indices) as it was
    saved_files = snapshot([sub.manifest_path, sub.paths.elements, sub.paths.plan]) if old else {}
    try:
        create_contexts(sub, plan)
    except BaseException:
        lock.release()
        raise
    saved = reset_states(existing, resubmitted_at=time.time()) if existing and not prepare_only else {}
    record = SubmissionRecord(
        plan=plan.name, backend=backend_name, site=cfg.site_name, submitted_at=time.time(),
        manifest=str(sub.manifest_path), scratch_root=str(sub.scratch_root), elements=len(plan.elements),
        max_parallel=parallel, isolation_mode=sub.isolation_mode, on_complete=sub.on_complete,
        on_failure=sub.on_failure, shared_database=str(sub.shared_database), archive_dir=str(sub.archive_dir),
        scheduler=element_scheduler(requests[0]), command=tuple(requests[0].command),
        env=array_env(sub, requests[0].scheduler), runner=own_runner(), pack=plan.pack or 1,
        history=(*old.history, {"submitted_at": old.submitted_at, "backend": old.backend,
                                "jobs": [j.to_dict() for j in old.jobs]}) if old else (),
    )
    try:
        write_record(sub.directory, record)
        lock.release()
        if prepare_only:
            result.record = write_record(sub.directory, record.replace(runner=None))
            result.seconds = time.perf_counter() - t0
            return result
        record, result.job_ids = submit_requests(be, requests, record, sub.directory, kind=ARRAY, attempt=1)
    except BaseException as exc:
        lock.release()
        if backend_name == "local" and any(os.path.exists(f"{e.context_dir}/{STATE_FILE}") for e in sub.entries):
            # elements ran already (Ctrl-C, mace cancel): their contexts hold results, keep them
            cancel_unstarted(sub.entries, f"not started: the local run stopped ({type(exc).__name__})")
            if batched and batched.left:
                merge_pending(sub.scratch_root, [sub.name], options=Options(ended=True, by="mace-submit"))
            raise
        restore_files(saved)
        remove_created(sub)
        if sub.directory.is_dir():
            restore_files(saved_files)
        if not sub.directory.is_dir() or not old:
            sub.record_path.unlink(missing_ok=True)
        else:
            write_record(sub.directory, old)
        raise
    if backend_name != "local":
        record, result.backstop_job_id, warning = submit_backstop(be, sub, record, result.job_ids,
                                                                  requests[0].scheduler, requests)
        if warning:
            result.warnings.append(warning)
    else:
        local_backstop(be, sub.scratch_root, sub.name, sub.entries, force=bool(batched and batched.left))
    # nothing of ours runs on this host any more (the local pool is done)
    result.record = write_record(sub.directory, record.replace(runner=None))
    result.seconds = time.perf_counter() - t0
    return result


SUBMIT_LOCK_TIMEOUT_S = 60.0


def submission_lock(sub: Submission) -> NfsLock:
    """The lock that makes "is this plan active?" and writing its record one step, held."""
    base = ensure_private_dir(submissions_root(sub.scratch_root), "submissions directory", parents=True)
    lock = NfsLock(base / f".{sub.name}.lock", lifetime=SUBMIT_LOCK_TIMEOUT_S * 5, timeout=SUBMIT_LOCK_TIMEOUT_S)
    try:
        return lock.acquire()
    except LockTimeout as exc:
        raise InputError(f"plan {sub.name!r} is being submitted by another process ({exc}); "
                         f"see `mace status {sub.name}`") from None


def local_backstop(be: Backend, scratch_root: Path, plan: str, entries: Sequence[ManifestEntry] = (),
                   force: bool = False) -> None:
    """The local backend's backstop: every element has ended when `submit` returns, so one whose
    runner died (killed, out of memory) is finalized now as lost, by its on_failure policy; one
    whose runner failed before it recorded a start is FAILED, not left PENDING forever. `force`:
    the batched epilogue left elements unfinalized."""
    codes = getattr(be, "returncodes", {})
    if not force and not any(rc != 0 for rc in codes.values()):
        return
    for entry in entries:
        rc = codes.get(entry.index, 0)
        d = Path(entry.context_dir)
        if rc and d.is_dir() and (before := read_state(d)).state == st.PENDING and not before.attempts:
            write_state(d, state=st.FAILED, run_state=st.FAILED, finished_at=time.time(),
                        message=f"the element runner exited with code {rc} before it recorded a start; "
                                f"see its log under {submissions_root(scratch_root) / plan / 'logs'}")
    merge_pending(scratch_root, [plan], options=Options(ended=True, by="mace-submit"))


def cancel_unstarted(entries: Sequence[ManifestEntry], message: str) -> int:
    """Mark elements that never started (no or PENDING state file) CANCELLED; how many."""
    n = 0
    for entry in entries:
        d = Path(entry.context_dir)
        if d.is_dir() and read_state(d).state == st.PENDING:
            write_state(d, state=st.CANCELLED, run_state=st.CANCELLED, message=message, finished_at=time.time())
            n += 1
    return n


def own_runner() -> Runner:
    """This process, as recorded while it submits or (locally) runs a plan: pid, host, start time."""
    return Runner(os.getpid(), hostname(), process_start_time(os.getpid()))
