"""The element runner: what executes inside one job-array element.

index (from `--index` or the scheduler's env) -> manifest entry -> workflow id and context ->
export MACE_* -> run the steps (resuming: completed steps are skipped) -> state file -> epilogue.
The time-limit signal (SIGUSR2, sent `signal_margin` seconds before the limit) stops the running
step, records TIMEOUT and still runs the epilogue, or requeues the element when requeue is on.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..plan.sweep import resolve_context_dir
from ..util.atomic import atomic_write_json, read_json
from . import state as st
from . import steps as step_runner

INDEX_ENV_VARS = ("SLURM_ARRAY_TASK_ID", "PBS_ARRAY_INDEX", "PBS_ARRAYID")
EXIT_TIMEOUT = 124


def resolve_index(explicit: int | None = None, environ: Mapping[str, str] | None = None) -> int:
    """The element index: `--index`, else the scheduler's array task id plus MACE_INDEX_OFFSET."""
    if explicit is not None:
        return explicit
    environ = os.environ if environ is None else environ
    for var in INDEX_ENV_VARS:
        raw = environ.get(var)
        if raw not in (None, ""):
            try:
                return int(raw) + int(environ.get("MACE_INDEX_OFFSET", "0") or 0)
            except ValueError:
                raise InputError(f"{var}={raw!r} is not an integer array index") from None
    raise InputError(
        "no element index: pass --index N or run inside an array job (SLURM_ARRAY_TASK_ID, PBS_ARRAY_INDEX, PBS_ARRAYID)"
    )


def load_manifest(path: Path) -> dict[str, Any]:
    manifest = read_json(path)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("elements"), list):
        raise InputError(f"{path}: not a mace-hpc manifest (missing, truncated or not written by mace-submit)")
    return manifest


def manifest_entry(manifest: dict[str, Any], index: int, path: Path) -> dict[str, Any]:
    elements = manifest["elements"]
    if not 0 <= index < len(elements) or elements[index].get("index") != index:
        raise InputError(f"{path}: no element with index {index} (the plan has {len(elements)})")
    return elements[index]


def scheduler_ids(environ: Mapping[str, str]) -> dict[str, str]:
    keys = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "PBS_JOBID", "PBS_ARRAY_INDEX", "PBS_ARRAYID")
    return {k: environ[k] for k in keys if environ.get(k)}


class _Interrupt:
    """Records the first time-limit / termination signal and stops the running step.

    It raises StepInterrupted (to stop a function step) only while `armed`, i.e. inside the
    runner's try block: before it (setup) and after it (final state write, epilogue) the signal
    is only recorded, so it can neither escape as a traceback nor abort the epilogue.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.armed = False

    def install(self) -> None:
        for sig in (signal.SIGUSR2, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        first = self.signum is None
        self.signum = self.signum or signum
        step_runner.terminate_current(grace=2.0, block=False)  # a handler must not wait
        if first and self.armed and step_runner._current_proc is None:
            raise step_runner.StepInterrupted()


def _completed_steps(db: Any, workflow_id: str) -> set[str]:
    done = set()
    for calc in db.get_calculations_by_status("completed"):
        settings = calc.get("settings") or {}
        if calc.get("workflow_id") == workflow_id and isinstance(settings, dict):
            done.add(settings.get("step"))
    return done


def _requeue(environ: Mapping[str, str]) -> bool:
    """Ask the scheduler to requeue this element (same context, next attempt resumes)."""
    if environ.get("SLURM_ARRAY_JOB_ID") and environ.get("SLURM_ARRAY_TASK_ID"):
        job = f"{environ['SLURM_ARRAY_JOB_ID']}_{environ['SLURM_ARRAY_TASK_ID']}"
        cmd = ["scontrol", "requeue", job]
    elif environ.get("SLURM_JOB_ID"):
        cmd = ["scontrol", "requeue", environ["SLURM_JOB_ID"]]
    elif environ.get("PBS_JOBID"):
        cmd = ["qrerun", environ["PBS_JOBID"]]
    else:
        return False
    try:
        return subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _cancelled_since(manifest_path: Path, started: float) -> bool:
    """Did `mace cancel` cancel this submission after this attempt started (record.json)?"""
    record = read_json(manifest_path.parent / "record.json")
    at = record.get("cancelled_at") if isinstance(record, dict) else None
    return isinstance(at, (int, float)) and at >= started


def run_element(
    manifest_path: str | os.PathLike[str], index: int | None = None, *, run_epilogue: bool = True
) -> int:
    """Run element `index` of the submission whose manifest is at `manifest_path`; returns the exit code."""
    from ..workflow.context import WorkflowContext

    manifest_path = Path(manifest_path).absolute()
    manifest = load_manifest(manifest_path)
    index = resolve_index(index)
    if os.environ.get("MACE_ARRAY_INDICES"):
        from ..submission.pbs.dialect import is_filler

        if is_filler(index, os.environ):
            return 0  # a covering range submitted for a sparse list: this index was not asked for
    entry = manifest_entry(manifest, index, manifest_path)
    elements = read_json(manifest_path.parent / "elements.json")
    if not isinstance(elements, list) or index >= len(elements):
        raise InputError(f"{manifest_path.parent / 'elements.json'}: missing or truncated")
    context_dir = Path(entry["context_dir"])
    element = resolve_context_dir(elements[index], context_dir)
    interrupt = _Interrupt()
    interrupt.install()

    ctx = WorkflowContext(
        entry["workflow_id"],
        manifest["isolation_mode"],
        cleanup_on_exit=False,
        scratch_root=context_dir.parent,
        shared_database=manifest["shared_database"],
    )
    previous = st.read_state(context_dir)
    if st.results_home(previous):
        return 0  # merged/archived and cleaned up: rerunning would only duplicate its results
    ctx.ensure_directory()
    attempt = int(previous.get("attempts", 0)) + 1
    started_at = time.time()
    st.write_state(
        context_dir, state=st.RUNNING, run_state=st.RUNNING, attempts=attempt, host=socket.gethostname(),
        pid=os.getpid(), started_at=started_at, scheduler=scheduler_ids(os.environ), index=index,
        workflow_id=entry["workflow_id"], removed=False,  # this run's data is new: finalize it
    )
    if not (context_dir / "element.json").exists():
        atomic_write_json(context_dir / "element.json", {**element, "plan": manifest["plan"]})

    outcomes: list[step_runner.StepOutcome] = []
    final = st.COMPLETED
    message = ""
    try:
        try:
            interrupt.armed = True  # a signal before this is seen by the loop below
            with ctx:
                db = ctx.get_database()
                for m in element.get("materials", []):
                    db.create_material(**m)
                default_material = element["materials"][0]["material_id"] if element.get("materials") else None
                if default_material is None and any(not s.get("material_id") for s in element["steps"]):
                    # the database records a calculation against a material; an element without any
                    # gets one placeholder named after its workflow (identical re-creation is a no-op)
                    default_material = entry["workflow_id"]
                    db.create_material(
                        default_material, "n/a", metadata={"placeholder": True, "workflow_id": entry["workflow_id"]}
                    )
                env = {**os.environ, **element.get("env", {})}
                done = _completed_steps(db, entry["workflow_id"]) if attempt > 1 else set()
                search_path = [manifest.get("plan_dir", "")]
                for step in element["steps"]:
                    if interrupt.signum:
                        break
                    if step["name"] in done:
                        outcomes.append(step_runner.StepOutcome(step["name"], "skipped", 0, 0.0, None, "done earlier"))
                        continue
                    outcome = step_runner.run_step(
                        step, db, ctx.calculations_dir / step["name"], env,
                        step.get("material_id") or default_material, entry["workflow_id"], search_path,
                    )
                    outcomes.append(outcome)
                    if outcome.status != "completed":
                        final = st.TIMEOUT if outcome.status == "timeout" else st.FAILED
                        message = f"step {outcome.name}: {outcome.message}"
                        break
        finally:
            interrupt.armed = False
    except step_runner.StepInterrupted:
        pass
    except Exception as exc:
        final, message = st.FAILED, f"{type(exc).__name__}: {exc}"
    step_runner.wait_for_stopped_group()
    # say why first: the step's own message ("killed by signal 15") is only the consequence
    if interrupt.signum in (signal.SIGUSR2,):
        why = "time limit: stopped by the signal before the limit"
        final, message = st.TIMEOUT, f"{why} ({message})" if message else why
    elif interrupt.signum:
        why = f"cancelled: terminated by signal {signal.Signals(interrupt.signum).name}"
        final, message = st.CANCELLED, f"{why} ({message})" if message else why

    record = {
        "state": final, "run_state": final, "finished_at": time.time(), "message": message,
        "steps": [o.__dict__ for o in outcomes],
    }
    requeue = final in (st.TIMEOUT, st.CANCELLED) and os.environ.get("MACE_REQUEUE") == "1"
    if requeue and not _cancelled_since(manifest_path, started_at) and _requeue(os.environ):
        st.write_state(context_dir, **{**record, "state": st.PENDING, "requeued": True})
        return EXIT_TIMEOUT
    st.write_state(context_dir, **record)
    if run_epilogue:
        from ..epilogue.hook import run_epilogue as epilogue

        epilogue(context_dir, manifest=manifest)
    return {st.COMPLETED: 0, st.TIMEOUT: EXIT_TIMEOUT}.get(final, 1)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="mace run-element",
        description="Run one element of a submitted plan (inside an array job, or by hand with --index).",
    )
    parser.add_argument("manifest", help="the submission's manifest.json (exported as $MACE_MANIFEST)")
    parser.add_argument("--index", type=int, help="element index (default: from the scheduler's array env)")
    parser.add_argument("--no-epilogue", action="store_true", help="do not merge/archive when the element ends")
    args = parser.parse_args(argv)
    try:
        return run_element(args.manifest, args.index, run_epilogue=not args.no_epilogue)
    except InputError as exc:
        print(f"mace run-element: error: {exc}", file=sys.stderr)
        return exc.exit_code
