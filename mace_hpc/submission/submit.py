"""Plan -> contexts -> one job array per chunk: the heart of `mace-submit`.

Everything is validated and rendered before anything is created; if the scheduler refuses a
chunk, the chunks already queued are cancelled and the contexts (and submission directory) this
submission created are removed again, so a failed submission leaves nothing behind. A plan whose
previous submission still has elements queued or running is refused rather than queued twice.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Config, load_config
from ..errors import InputError, SchedulerError
from ..plan import Plan, plan_from_any
from ..util.atomic import read_json
from .backend import ArrayRequest, Backend, array_spec, chunk_indices, get_backend
from .contexts import Submission, build_submission, create_contexts, remove_created, write_record

RECORD_VERSION = 1


@dataclass
class SubmitResult:
    submission: Submission
    backend: str
    requests: list[ArrayRequest]
    job_ids: list[str] = field(default_factory=list)
    rendered: list[tuple[str, list[str]]] = field(default_factory=list)
    record: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    backstop_job_id: str | None = None
    warnings: list[str] = field(default_factory=list)
    plan: Plan | None = None


def element_command(manifest: Path, python: str | None = None) -> list[str]:
    """The argv every backend runs for an element (the index comes from the environment)."""
    return [python or sys.executable, "-m", "mace_hpc.element", str(manifest)]


def element_env(sub: Submission, entry: dict[str, Any], plan_env: dict[str, str]) -> dict[str, str]:
    """What one element's steps see from mace-hpc: its identity plus the plan's and element's env."""
    return {
        "MACE_WORKFLOW_ID": entry["workflow_id"],
        "MACE_ISOLATION_MODE": sub.isolation_mode,
        "MACE_CONTEXT_DIR": entry["context_dir"],
        **plan_env,
    }


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
        "MACE_MANIFEST": str(sub.manifest_path),
        "MACE_ISOLATION_MODE": sub.isolation_mode,
        "MACE_REQUEUE": "1" if scheduler.get("requeue") else "0",
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
) -> list[ArrayRequest]:
    """One request per chunk of task ids below `max_array_size`, each with its index offset."""
    return [
        ArrayRequest(
            name=name, indices=[t + offset for t in task_ids], max_parallel=max_parallel, command=command,
            env={**env, "MACE_INDEX_OFFSET": str(offset)}, work_dir=work_dir,
            scheduler=scheduler, index_offset=offset,
        )
        for offset, task_ids in chunk_indices(indices, max_array_size)
    ]


def array_limit(scheduler: dict[str, Any], backend: Backend) -> int:
    return int(scheduler.get("max_array_size") or backend.max_array_size())


def build_requests(
    plan: Plan, sub: Submission, cfg: Config, backend: Backend, indices: list[int], max_parallel: int
) -> list[ArrayRequest]:
    scheduler = {**cfg.scheduler(), **plan.resources}
    return make_requests(
        plan.name, indices, max_parallel=max_parallel,
        command=element_command(sub.manifest_path, scheduler.get("python")),
        env=array_env(sub, scheduler), work_dir=sub.directory / "logs", scheduler=scheduler,
        max_array_size=array_limit(scheduler, backend),
    )


def job_entry(req: ArrayRequest, job_id: str, kind: str, attempt: int) -> dict[str, Any]:
    return {
        "job_id": job_id, "kind": kind, "attempt": attempt, "offset": req.index_offset,
        "array": array_spec(req.task_ids()), "indices": sorted(req.indices or []),
        "submitted_at": time.time(),
    }


def submit_requests(
    be: Backend,
    requests: Sequence[ArrayRequest],
    record: dict[str, Any],
    record_dir: Path,
    *,
    kind: str,
    attempt: int,
) -> list[str]:
    """Submit every chunk, recording each job id as soon as it exists; on failure cancel those queued.

    The record is written after each chunk so a crash between chunks still leaves every queued job
    findable (`mace cancel` works on a half-submitted plan).
    """
    job_ids: list[str] = []
    try:
        for req in requests:
            job_id = be.submit(req)
            job_ids.append(job_id)
            record["jobs"].append(job_entry(req, job_id, kind, attempt))
            write_record(record_dir, record)
    except BaseException:
        if job_ids:
            try:
                be.cancel(job_ids)
            except Exception:  # the scheduler's first refusal is the message the user needs
                pass
            record["jobs"] = [j for j in record["jobs"] if j["job_id"] not in job_ids]
        raise
    return job_ids


def submit_backstop(
    be: Backend, sub: Submission, record: dict[str, Any], job_ids: list[str], scheduler: dict[str, Any]
) -> tuple[str | None, str | None]:
    """Queue the backstop merge job (runs once after every array); (job id, warning).

    A backstop that cannot be queued is a warning, not a failed submission: every element still
    runs its own epilogue, and `mace merge PLAN` does the backstop's work by hand.
    """
    try:
        from ..epilogue.backstop import backstop_record, backstop_request
    except ImportError:
        return None, None
    try:
        req = backstop_request(
            sub.name, job_ids, scratch_root=sub.scratch_root, work_dir=sub.directory / "logs",
            scheduler=scheduler, elements=len(sub.entries),
        )
        job_id = be.submit(req)
    except (SchedulerError, InputError, ValueError) as exc:
        return None, f"backstop merge job not queued ({exc}); run `mace merge {sub.name}` once the arrays end"
    record["jobs"].append(backstop_record(job_id, job_ids))
    return job_id, None


# ------------------------------------------------------------------ already submitted?
def _process_alive(pid: int, started: float | None) -> bool:
    """Is the local submitting process still running (and not a recycled pid)?"""
    try:
        import psutil

        proc = psutil.Process(pid)
        return started is None or abs(proc.create_time() - started) < 1.0
    except Exception:
        return False


def local_runner_alive(record: dict[str, Any]) -> bool:
    owner = record.get("runner") or {}
    return bool(owner.get("pid")) and owner.get("host") == socket.gethostname() and _process_alive(
        int(owner["pid"]), owner.get("started")
    )


def active_elements(record: dict[str, Any], manifest: dict[str, Any] | None) -> tuple[int, str | None]:
    """How many elements of a previous submission are still queued or running (one scheduler query)."""
    from ..status.reconcile import ACTIVE, array_jobs, collect

    if local_runner_alive(record):  # a local run, or a submission still being made
        pid = record["runner"]["pid"]
        total = len(manifest["elements"]) if manifest else record.get("elements", 0)
        return total, f"the mace process that submitted it (pid {pid}) is still running"
    if record.get("backend") == "local":
        return 0, None
    if not array_jobs(record) or not manifest:
        return 0, None
    report = collect(record, manifest, get_backend(record.get("backend", "slurm")))
    active = [r for r in report.rows if r["state"] in ACTIVE or r["scheduler_state"] in ACTIVE]
    if report.scheduler_error and not active:
        return 0, None
    return len(active), report.scheduler_error


def ensure_same_elements(sub: Submission, manifest: dict[str, Any] | None) -> None:
    """A plan submitted again must keep every earlier element at its index (it may add new ones):
    records, state files and scheduler task ids all refer to elements by index."""
    if manifest is None:
        return
    before = [e.get("workflow_id") for e in manifest["elements"]]
    now = [e["workflow_id"] for e in sub.entries]
    if now[: len(before)] != before:
        i = next((k for k, (a, b) in enumerate(zip(before, now, strict=False)) if a != b), min(len(before), len(now)))
        was = before[i] if i < len(before) else "nothing"
        got = now[i] if i < len(now) else "nothing"
        raise InputError(
            f"plan {sub.name!r} was submitted before with other elements (index {i} was {was}, now {got}); "
            f"give the changed plan a new name, or add new elements only at the end"
        )


def ensure_not_active(sub: Submission) -> dict[str, Any] | None:
    """Refuse a plan whose previous submission is still queued/running; return the old record."""
    old = read_json(sub.record_path)
    if not isinstance(old, dict):
        return None
    manifest = read_json(sub.manifest_path)
    manifest = manifest if isinstance(manifest, dict) and isinstance(manifest.get("elements"), list) else None
    ensure_same_elements(sub, manifest)
    n, why = active_elements(old, manifest)
    if n:
        ids = " ".join(str(j["job_id"]) for j in old.get("jobs", [])) or "none"
        extra = f" ({why})" if why else ""
        raise InputError(
            f"plan {sub.name!r} is already submitted (jobs {ids}) and {n} of its elements are still queued "
            f"or running{extra}; see `mace status {sub.name}`, stop it with `mace cancel {sub.name}`, "
            f"or rerun failed elements with `mace resubmit {sub.name} --failed`"
        )
    return old


def reset_states(context_dirs: Sequence[Path], **fields: Any) -> dict[Path, bytes | None]:
    """Mark existing contexts as queued again (state PENDING); returns the old files to restore."""
    from ..element import state as st

    saved: dict[Path, bytes | None] = {}
    for d in context_dirs:
        path = Path(d) / st.STATE_FILE
        try:
            saved[path] = path.read_bytes()
        except FileNotFoundError:
            saved[path] = None
            continue  # never ran: absent already reads as PENDING
        if st.results_home(st.read_state(d)):
            continue  # done and cleaned up: the runner leaves it as it is
        st.write_state(Path(d), state=st.PENDING, run_state=st.PENDING, queued_at=time.time(), **fields)
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
    from ..util.atomic import atomic_write_bytes

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
    opts = {"progress": progress} if backend_name == "local" and progress else {}
    be = get_backend(backend_name, **opts)
    sub = build_submission(plan, cfg, isolation_mode)
    if backend_name == "local" and not prepare_only and not {**cfg.scheduler(), **plan.resources}.get("setup"):
        preflight_programs(plan)  # setup lines (module load, a venv) may put the programs on PATH
    wanted = list(range(len(plan.elements))) if indices is None else sorted(set(indices))
    if not wanted or not 0 <= wanted[0] <= wanted[-1] < len(plan.elements):
        raise InputError(f"indices: {indices!r} must be element indices 0-{len(plan.elements) - 1}")
    requests = build_requests(plan, sub, cfg, be, wanted, parallel)
    result = SubmitResult(sub, backend_name, requests, plan=plan)
    # render every chunk now: a value that cannot go into a job script fails before anything exists
    result.rendered = [be.render(r) for r in requests]
    if dry_run:
        result.seconds = time.perf_counter() - t0
        return result

    old = ensure_not_active(sub)
    existing = [Path(e["context_dir"]) for e in sub.entries if os.path.isdir(e["context_dir"])]
    # a failed resubmission must leave the previous manifest (its indices) as it was
    saved_files = snapshot([sub.manifest_path, sub.directory / "elements.json", sub.directory / "plan.json"]) if old else {}
    create_contexts(sub, plan)
    saved = reset_states(existing, resubmitted_at=time.time()) if existing and not prepare_only else {}
    record: dict[str, Any] = {
        "version": RECORD_VERSION, "plan": plan.name, "backend": backend_name, "site": cfg.site_name,
        "submitted_at": time.time(), "manifest": str(sub.manifest_path), "scratch_root": str(sub.scratch_root),
        "elements": len(plan.elements), "max_parallel": parallel, "isolation_mode": sub.isolation_mode,
        "on_complete": sub.on_complete, "on_failure": sub.on_failure, "shared_database": str(sub.shared_database),
        "archive_dir": str(sub.archive_dir), "scheduler": requests[0].scheduler, "command": requests[0].command,
        "env": array_env(sub, requests[0].scheduler), "jobs": [],
        "runner": own_runner(),
    }
    if old:
        record["history"] = [*old.get("history", []), {k: old.get(k) for k in ("submitted_at", "backend", "jobs")}]
    try:
        write_record(sub.directory, record)
        if prepare_only:
            record["runner"] = None
            write_record(sub.directory, record)
            result.record = record
            result.seconds = time.perf_counter() - t0
            return result
        result.job_ids = submit_requests(be, requests, record, sub.directory, kind="array", attempt=1)
    except BaseException as exc:
        if backend_name == "local" and any(os.path.exists(f"{e['context_dir']}/state.json") for e in sub.entries):
            # elements ran already (Ctrl-C, mace cancel): their contexts hold results, keep them
            cancel_unstarted(sub.entries, f"not started: the local run stopped ({type(exc).__name__})")
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
        result.backstop_job_id, warning = submit_backstop(be, sub, record, result.job_ids, requests[0].scheduler)
        if warning:
            result.warnings.append(warning)
            record["backstop_error"] = warning
    record["runner"] = None  # nothing of ours runs on this host any more (the local pool is done)
    write_record(sub.directory, record)
    result.record = record
    result.seconds = time.perf_counter() - t0
    return result


def cancel_unstarted(entries: Sequence[dict[str, Any]], message: str) -> int:
    """Mark elements that never started (no or PENDING state file) CANCELLED; how many."""
    from ..element import state as st

    n = 0
    for entry in entries:
        d = Path(entry["context_dir"])
        if d.is_dir() and st.read_state(d).get("state") == st.PENDING:
            st.write_state(d, state=st.CANCELLED, run_state=st.CANCELLED, message=message, finished_at=time.time())
            n += 1
    return n


def own_runner() -> dict[str, Any]:
    """This process, as recorded while it submits or (locally) runs a plan: pid, host, start time."""
    try:
        import psutil

        started: float | None = psutil.Process().create_time()
    except Exception:
        started = None
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": started}
