"""Plan -> contexts -> one job array per chunk: the heart of `mace-submit`.

Everything is validated and computed before anything is created; if the scheduler refuses a
chunk, the chunks already queued are cancelled and the contexts this submission created are
removed again, so a failed submission leaves nothing behind.
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Config, load_config
from ..errors import InputError, SchedulerError
from ..plan import Plan, plan_from_any
from ..util.atomic import atomic_write_json
from .backend import ArrayRequest, Backend, array_spec, chunk_indices, get_backend
from .contexts import Submission, build_submission, create_contexts, remove_created


@dataclass
class SubmitResult:
    submission: Submission
    backend: str
    requests: list[ArrayRequest]
    job_ids: list[str] = field(default_factory=list)
    rendered: list[tuple[str, list[str]]] = field(default_factory=list)
    record: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def element_command(manifest: Path, python: str | None = None) -> list[str]:
    """The argv every backend runs for an element (the index comes from the environment)."""
    return [python or sys.executable, "-m", "mace_hpc.element", str(manifest)]


def preflight_programs(plan: Plan) -> None:
    """On the local backend a missing program is bad input, reported before anything runs."""
    for e in plan.elements:
        for i, s in enumerate(e.steps):
            if s.command and "{" not in s.command[0] and shutil.which(s.command[0]) is None:
                raise InputError(
                    f"elements[{e.index}].steps[{i}].command: program {s.command[0]!r} not found on PATH"
                )


def build_requests(
    plan: Plan, sub: Submission, cfg: Config, backend: Backend, indices: list[int], max_parallel: int
) -> list[ArrayRequest]:
    scheduler = {**cfg.scheduler(), **plan.resources}
    env = {
        "MACE_MANIFEST": str(sub.manifest_path),
        "MACE_ISOLATION_MODE": sub.isolation_mode,
        "MACE_REQUEUE": "1" if scheduler.get("requeue") else "0",
    }
    limit = scheduler.get("max_array_size") or backend.max_array_size()
    command = element_command(sub.manifest_path, scheduler.get("python"))
    return [
        ArrayRequest(
            name=plan.name, indices=task_ids, max_parallel=max_parallel, command=command,
            env={**env, "MACE_INDEX_OFFSET": str(offset)}, work_dir=sub.directory / "logs",
            scheduler=scheduler, index_offset=offset,
        )
        for offset, task_ids in chunk_indices(indices, limit)
    ]


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
    progress: Any = None,
) -> SubmitResult:
    """Validate, create contexts, submit one array per chunk; see the module docstring."""
    t0 = time.perf_counter()
    cfg = config or load_config(site=site, cli={"backend": backend, "isolation_mode": isolation_mode})
    plan = plan_from_any(plan_or_path)
    if not plan.elements:
        raise InputError("elements: the plan has no elements to run")
    backend_name = backend or cfg["backend"]
    if max_parallel is not None and max_parallel <= 0:
        raise InputError(f"--max-parallel: {max_parallel} must be a positive integer")
    parallel = max_parallel or plan.max_parallel or cfg["max_parallel"]
    opts = {"progress": progress} if backend_name == "local" and progress else {}
    be = get_backend(backend_name, **opts)
    sub = build_submission(plan, cfg, isolation_mode)
    if backend_name == "local":
        preflight_programs(plan)
    wanted = list(range(len(plan.elements))) if indices is None else indices
    requests = build_requests(plan, sub, cfg, be, wanted, parallel)
    result = SubmitResult(sub, backend_name, requests)
    if dry_run:
        result.rendered = [be.render(r) for r in requests]
        result.seconds = time.perf_counter() - t0
        return result

    create_contexts(sub, plan)
    record = {
        "plan": plan.name, "backend": backend_name, "site": cfg.site_name, "submitted_at": time.time(),
        "manifest": str(sub.manifest_path), "elements": len(plan.elements), "max_parallel": parallel,
        "isolation_mode": sub.isolation_mode, "on_complete": sub.on_complete, "on_failure": sub.on_failure,
        "shared_database": str(sub.shared_database), "jobs": [],
    }
    record_path = sub.directory / "record.json"
    try:
        for req in requests:
            job_id = be.submit(req)
            result.job_ids.append(job_id)
            record["jobs"].append(
                {"job_id": job_id, "offset": req.index_offset, "array": array_spec(req.task_ids()),
                 "indices": [t + req.index_offset for t in req.task_ids()], "kind": "array"}
            )
            atomic_write_json(record_path, record, indent=None)
    except BaseException as exc:
        if result.job_ids:
            try:
                be.cancel(result.job_ids)
            except Exception:
                pass
        if isinstance(exc, SchedulerError) or not result.job_ids:
            remove_created(sub)
            if not record["jobs"]:
                record_path.unlink(missing_ok=True)
        raise
    result.record = record
    result.seconds = time.perf_counter() - t0
    return result
