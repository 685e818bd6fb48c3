"""One stage of one element in a multi-stage plan: may it run, what it hands on, what its end means.

The runner runs a stage's steps; this module decides around them, from the element's state file:
- before: a stage whose needs did not complete is SKIPPED (PBS chains whole arrays and the local
  scheduler starts it anyway; SLURM's `aftercorr` never starts it, and the failing stage cancels
  it), and a stage's declared `inputs` must exist;
- after: its `outputs` are recorded with size and SHA-256; a failed required stage marks every
  stage downstream of it SKIPPED and cancels their queued tasks, so none waits forever
  (`DependencyNeverSatisfied`); the chain has ended when every stage is final, and only then is
  the element's own state final and its epilogue run (merge once, when the chain ends).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..epilogue.hook import run_epilogue as run_epilogue_hook
from ..errors import InputError, SchedulerError
from ..records import env as env_names
from ..records import states as st
from ..records.element_state import ElementState, read_state, update_state, write_stage
from ..records.layout import SubmissionPaths
from ..records.manifest import Manifest, load_manifest
from ..records.stages import (
    STAGE_FINAL,
    Stage,
    blocked_by,
    by_name,
    chain_outcome,
    current_stage,
    descendants,
    stage_state,
)


@dataclass(frozen=True)
class StageEnd:
    """What the runner does after a stage: the element's new fields, and whether its chain ended."""

    chain_ended: bool
    element: dict[str, Any]
    skipped: tuple[str, ...] = ()


def skip_reason(context_dir: Path, stages: Sequence[Stage], name: str) -> str | None:
    """Why this stage must not run now (None: run it). A need still PENDING or RUNNING here means
    its runner ended without recording (every backend starts a stage only after its needs ended):
    that need is recorded FAILED, and the chain goes on as for any failure."""
    state = read_state(context_dir)
    mine = stage_state(state.stages, name)
    if mine in (st.COMPLETED, st.SKIPPED):
        return f"stage {name} is {mine} already"
    need = blocked_by(stages, state.stages, name)
    if need is None:
        return None
    need_state = stage_state(state.stages, need)
    if need_state not in STAGE_FINAL:
        stop(context_dir, stages, need, st.FAILED, "its runner ended without recording an end")
    return f"stage {need} did not complete"


def missing_inputs(context_dir: Path, stage: Stage) -> list[str]:
    return [p for p in stage.inputs if not (context_dir / p).is_file()]


def record_outputs(context_dir: Path, stage: Stage) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """({path: {size, sha256}}, missing paths) of a stage's declared outputs."""
    from ..context.archive import sha256_file  # lazy: only a stage that declares outputs hashes files

    found: dict[str, dict[str, Any]] = {}
    missing = []
    for rel in stage.outputs:
        path = context_dir / rel
        if path.is_file():
            found[rel] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
        else:
            missing.append(rel)
    return found, missing


def start(context_dir: Path, stage: str, element: dict[str, Any]) -> ElementState:
    """Record that `stage` runs now (stage RUNNING, attempts + 1) with the element's own fields."""
    before = read_state(context_dir).stages.get(stage) or {}
    attempts = int(before.get("attempts") or 0) + 1
    return write_stage(context_dir, stage, {**element, "stage": stage}, state=st.RUNNING, attempts=attempts,
                       started_at=time.time(), finished_at=None, message="", host=element.get("host"))


def stop(context_dir: Path, stages: Sequence[Stage], name: str, state: str, message: str,
         element: Mapping[str, Any] | None = None, **fields: Any) -> StageEnd:
    """Record how stage `name` ended, skip what its failure stops, and set the element's own
    fields (plus `element`, e.g. its resource usage): one locked read-modify-write of the state
    file, so a sibling stage ending at the same moment sees all of it."""
    now = time.time()
    result: list[StageEnd] = []

    def change(current: ElementState) -> dict[str, Any]:
        done = dict(current.stages)
        done[name] = {**(done.get(name) or {}), "state": state, "finished_at": now, "message": message, **fields}
        skipped: tuple[str, ...] = ()
        if state != st.COMPLETED and not by_name(stages)[name].optional:
            skipped = tuple(d for d in descendants(stages, name) if stage_state(done, d) not in STAGE_FINAL)
            why = f"stage {name} {state}: {message}" if message else f"stage {name} {state}"
            for d in skipped:
                done[d] = {**(done.get(d) or {}), "state": st.SKIPPED, "finished_at": now, "message": why}
        ended, run_state, outcome = chain_outcome(stages, done)
        if ended:
            own = {"state": run_state, "run_state": run_state, "finished_at": now, "message": outcome, "stage": None}
        else:
            nxt = current_stage(stages, done)
            own = {"state": st.PENDING, "stage": nxt,
                   "message": f"stage {name} {state}; next: {nxt}" if nxt else f"stage {name} {state}"}
        result.append(StageEnd(ended, own, skipped))
        return {"stages": done, **own, **dict(element or {})}

    update_state(context_dir, change)
    return result[0]


def cancel_downstream(submission: SubmissionPaths, index: int, stages: Sequence[str]) -> str | None:
    """Cancel this element's queued tasks of `stages` (one scheduler call); a warning on failure.

    Only schedulers that chain element by element need it (SLURM `aftercorr` would leave them
    PENDING forever); where a backend names no per-element task, the skipped stage's runner reads
    SKIPPED and ends at once.
    """
    if not stages:
        return None
    from ..records.submission import read_record  # lazy: only a failed stage with work downstream asks
    from ..schedulers import get_backend  # lazy: as above

    record = read_record(submission.record)
    if record is None or record.backend == "local":
        return None
    try:
        backend = get_backend(record.backend)
        jobs = record.stage_jobs()
        ids = []
        for name in stages:
            job = jobs.get((index, name))
            # a packed task runs pack-mates too: leave it, its runner skips this element itself
            at = job.task_of(index) if job and job.pack == 1 else None
            task = backend.element_job_id(job.job_id, at) if job and at is not None else None
            if task:
                ids.append(task)
        if ids:
            backend.cancel(ids)
    except (SchedulerError, OSError) as exc:
        return f"could not cancel the skipped stages' tasks ({exc}); `mace cancel` or scancel them"
    return None


def stage_of(environ: Mapping[str, str], explicit: str | None, stages: Sequence[Stage]) -> str | None:
    """The stage to run: `--stage`, else MACE_STAGE; None for a single-stage plan."""
    name = explicit or environ.get(env_names.STAGE) or None
    if name is not None and name not in by_name(stages):
        known = ", ".join(s.name for s in stages) or "none (a single-stage plan)"
        raise InputError(f"--stage: {name!r} is not a stage of this plan; stages: {known}")
    return name


def after_stage(context_dir: Path, submission: SubmissionPaths, index: int, end: StageEnd,
                manifest: Manifest, run_epilogue: bool) -> None:
    """After `stop`: the skipped stages' tasks cancelled; the epilogue when the chain ended."""
    warning = cancel_downstream(submission, index, end.skipped)
    if warning:
        print(f"mace run-element: warning: {warning}", file=sys.stderr)
    if end.chain_ended and run_epilogue:
        run_epilogue_hook(context_dir, manifest=manifest)


def settle_stage(manifest_path: Path, stage: str, job_ids: Sequence[str]) -> list[int]:
    """The settle job's work, once stage `stage`'s arrays `job_ids` have ended: every element of
    theirs whose stage is still RUNNING (its runner was killed hard) or PENDING (its task was
    cancelled or lost before it started) is recorded FAILED / CANCELLED; what needs it is skipped
    and cancelled, and an ended chain gets its epilogue. Returns the settled indices."""
    from ..records.submission import read_record  # lazy: the settle job only

    manifest = load_manifest(manifest_path)
    submission = SubmissionPaths(manifest_path.parent)
    record = read_record(submission.record)
    wanted = set(job_ids)
    indices = sorted({i for j in (record.array_jobs() if record else []) if j.job_id in wanted for i in j.indices})
    settled = []
    for index in indices:
        entry = manifest.entry(index, str(manifest_path))
        context_dir = Path(entry.context_dir)
        state = read_state(context_dir)
        mine = stage_state(state.stages, stage)
        if mine in STAGE_FINAL or state.results_home or not context_dir.is_dir():
            continue
        if mine == st.RUNNING:
            how, why = st.FAILED, "its runner ended without recording an end (killed: out of memory, node failure?)"
        else:
            how, why = st.CANCELLED, "its task ended without starting (cancelled or lost)"
        end = stop(context_dir, manifest.stages, stage, how, why)
        after_stage(context_dir, submission, index, end, manifest, True)
        settled.append(index)
    return settled
