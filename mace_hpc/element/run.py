"""The element runner: what executes inside one job-array element.

index (from `--index` or the scheduler's env) -> manifest entry -> workflow id and context ->
export MACE_* -> run the steps (resuming: completed steps are skipped) -> state file -> epilogue.
The time-limit signal (SIGUSR2, sent `signal_margin` seconds before the limit) stops the running
step, records TIMEOUT and still runs the epilogue, or requeues the element when requeue is on.
"""

from __future__ import annotations

import os
import resource
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from ..context.workflow_context import WorkflowContext
from ..epilogue.hook import run_epilogue as epilogue
from ..errors import InputError
from ..plan.context_dir import resolve_context_dir
from ..records import env as env_names
from ..records import states as st
from ..records.element_state import read_state, write_stage, write_state
from ..records.layout import ContextPaths, SubmissionPaths
from ..records.manifest import load_element_spec, load_manifest_for, write_element_copy
from ..schedulers import JobEnvironment, job_environment
from ..util.procs import hostname
from . import lanes
from . import steps as step_runner
from .arguments import DESCRIPTION, add_arguments, plain_arguments

EXIT_TIMEOUT = 124
# the first time-limit/termination signal this process got, seen by every `_Interrupt` (a packed
# task runs several elements: one that arrives between two of them stops the pack there)
_received: list[int] = []
_unfinished: list[int] = []  # packed elements whose run raised (maybe left RUNNING): see mark_ended


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
        for sig in (signal.SIGUSR2, signal.SIGTERM, signal.SIGINT, signal.SIGALRM):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if signum != signal.SIGALRM and not _received:
            _received.append(signum)  # SIGALRM: one packed element's own budget, not the task's
        if signum != signal.SIGALRM:
            lanes.forward(signum)  # a laned pack: the task's signal is every lane's
        first = self.signum is None
        self.signum = self.signum or signum
        step_runner.terminate_current(grace=2.0, block=False)  # a handler must not wait
        if first and self.armed and step_runner._current_proc is None:
            raise step_runner.StepInterrupted()


def step_env(isolation_mode: str, workflow_id: str, context_dir: Path, element: dict[str, Any]) -> dict[str, str]:
    """What the element's steps see from mace-hpc (the same function `mace-submit --dry-run` shows),
    with `{context_dir}` in the plan's values resolved as the steps see them."""
    env = resolve_context_dir(element.get("env") or {}, context_dir)
    return env_names.element_env(workflow_id, isolation_mode, str(context_dir), env)


def _close_interrupted(db: Any, workflow_id: str, attempt: int) -> None:
    """Calculations an earlier attempt left `running` (its runner was killed hard) are closed as
    failed, so no ghost stays `running` in the context or, after the merge, the shared database."""
    for calc in db.get_calculations_by_status("running"):
        if calc.get("workflow_id") == workflow_id:
            db.update_calculation_status(
                calc["calc_id"], "failed", error_message=f"interrupted: attempt {attempt} ended without finishing it"
            )


def _completed_steps(db: Any, workflow_id: str) -> set[str]:
    done = set()
    for calc in db.get_calculations_by_status("completed"):
        settings = calc.get("settings") or {}
        if calc.get("workflow_id") == workflow_id and isinstance(settings, dict):
            done.add(settings.get("step"))
    return done


def _cancelled_since(submission: SubmissionPaths, started: float) -> bool:
    """Did `mace cancel` cancel this submission after this attempt started (record.json)?"""
    from ..records.submission import read_record  # lazy: only a stopped element asks; starts stay lean

    record = read_record(submission.record)
    at = record.cancelled_at if record else None
    return isinstance(at, (int, float)) and at >= started


def run_element(
    manifest_path: str | os.PathLike[str], index: int | None = None, *, stage: str | None = None,
    run_epilogue: bool = True,
) -> int:
    """Run element `index` (its stage `stage` in a multi-stage plan) of the submission whose manifest
    is at `manifest_path`; returns the exit code."""
    manifest_path = Path(manifest_path).absolute()
    submission = SubmissionPaths(manifest_path.parent)
    job: JobEnvironment = job_environment()
    if index is None and job.pack() > 1:
        return run_pack(manifest_path, stage=stage, run_epilogue=run_epilogue, job=job)
    index = job.element_index(index)
    if job.is_filler(index):
        return 0  # a covering range submitted for a sparse list: this index was not asked for
    manifest = load_manifest_for(manifest_path, index)  # its own entry only: O(1) in the plan's size
    chain = _stage_chain(stage, manifest.stages)
    stage = chain.stage_of(os.environ, stage, manifest.stages) if chain else None
    if manifest.stages and stage is None:
        return _run_chain_here(manifest_path, index, manifest.stages, run_epilogue)
    entry = manifest.entry(index, str(manifest_path))
    context_dir = Path(entry.context_dir)
    paths = ContextPaths(context_dir)
    element = resolve_context_dir(load_element_spec(submission.elements, index), context_dir)
    stage_def = None
    if stage:
        from ..records.stages import by_name  # lazy: as _stage_chain

        stage_def = by_name(manifest.stages)[stage]
    interrupt = _Interrupt()
    interrupt.install()

    ctx = WorkflowContext(
        entry.workflow_id,
        manifest.isolation_mode,
        cleanup_on_exit=False,
        scratch_root=context_dir.parent,
        shared_database=manifest.shared_database,
    )
    previous = read_state(context_dir)
    if previous.results_home:
        return 0  # merged/archived and cleaned up: rerunning would only duplicate its results
    ctx.ensure_directory()
    if stage_def is not None and (why := chain.skip_reason(context_dir, manifest.stages, stage_def.name)):
        if chain.stage_state(read_state(context_dir).stages, stage_def.name) in st.SETTLED | {st.SKIPPED}:
            return 0  # ran (or was skipped) already: nothing to do twice
        end = chain.stop(context_dir, manifest.stages, stage_def.name, st.SKIPPED, why)
        chain.after_stage(context_dir, submission, index, end, manifest, run_epilogue)
        return 0
    started_at = time.time()
    since = resource.getrusage(resource.RUSAGE_CHILDREN)  # this element's usage is what comes after
    attempt = previous.attempts + 1
    element_fields: dict[str, Any] = dict(
        state=st.RUNNING, run_state=st.RUNNING, attempts=attempt, host=hostname(),
        pid=os.getpid(), started_at=started_at, scheduler=job.ids(), index=index,
        workflow_id=entry.workflow_id, removed=False,  # this run's data is new: finalize it
    )
    if stage_def is None:
        write_state(context_dir, **element_fields)
    else:
        attempt = int((previous.stages.get(stage_def.name) or {}).get("attempts") or 0) + 1
        if previous.started_at and previous.state not in st.SETTLED:
            element_fields["started_at"] = previous.started_at  # the chain started with an earlier stage
        chain.start(context_dir, stage_def.name, {**element_fields, "attempts": max(previous.attempts, attempt)})
    if not paths.element.exists():
        write_element_copy(context_dir, element, manifest.plan)

    steps = element["steps"] if stage_def is None else [s for s in element["steps"] if s.get("stage") == stage]
    outcomes: list[step_runner.StepOutcome] = []
    final = st.COMPLETED
    message = ""
    missing = chain.missing_inputs(context_dir, stage_def) if stage_def else []
    if missing:
        final, message = st.FAILED, f"inputs: {', '.join(missing)} missing in {context_dir} (stage {stage} needs them)"
    try:
        try:
            interrupt.armed = True  # a signal before this is seen by the loop below
            with ctx:
                if not missing:
                    final, message = _run_steps(ctx, entry.workflow_id, element, steps, attempt, context_dir,
                                                manifest, outcomes, interrupt)
        finally:
            interrupt.armed = False
    except step_runner.StepInterrupted:
        pass
    except Exception as exc:
        final, message = st.FAILED, f"{type(exc).__name__}: {exc}"
    step_runner.wait_for_stopped_group()
    # say why first: the step's own message ("killed by signal 15") is only the consequence
    if interrupt.signum in (signal.SIGUSR2, signal.SIGALRM):
        why = ("time limit: stopped by the signal before the limit" if interrupt.signum == signal.SIGUSR2
               else "time limit: its own time budget in a packed task ran out")
        final, message = st.TIMEOUT, f"{why} ({message})" if message else why
    elif interrupt.signum:
        why = f"cancelled: terminated by signal {signal.Signals(interrupt.signum).name}"
        final, message = st.CANCELLED, f"{why} ({message})" if message else why

    usage = resource_usage(since, outcomes)
    record = {
        "state": final, "run_state": final, "finished_at": time.time(), "message": message,
        "steps": [o.__dict__ for o in outcomes], **usage,
    }
    requeue = (final in (st.TIMEOUT, st.CANCELLED) and os.environ.get(env_names.REQUEUE) == "1"
               and interrupt.signum != signal.SIGALRM)
    if requeue and not _cancelled_since(submission, started_at) and job.requeue():
        if stage_def is None:
            write_state(context_dir, **{**record, "state": st.PENDING, "requeued": True})
        else:
            write_stage(context_dir, stage_def.name, {"state": st.PENDING, "requeued": True},
                        state=st.PENDING, message=message)
        return EXIT_TIMEOUT
    if stage_def is None:
        write_state(context_dir, **record)
        if run_epilogue:
            epilogue(context_dir, manifest=manifest)
        return {st.COMPLETED: 0, st.TIMEOUT: EXIT_TIMEOUT}.get(final, 1)

    outputs: dict[str, Any] = {}
    if final == st.COMPLETED:
        outputs, not_written = chain.record_outputs(context_dir, stage_def)
        if not_written:
            final, message = st.FAILED, f"outputs: {', '.join(not_written)} not written by stage {stage}"
    end = chain.stop(context_dir, manifest.stages, stage_def.name, final, message, element=usage,
                     outputs=outputs, steps=record["steps"], **usage)
    chain.after_stage(context_dir, submission, index, end, manifest, run_epilogue)
    if final == st.COMPLETED or stage_def.optional:
        return 0  # an optional stage's failure must not stop `aftercorr` downstream
    return {st.TIMEOUT: EXIT_TIMEOUT}.get(final, 1)


def run_pack(
    manifest_path: str | os.PathLike[str], task: int | None = None, *, stage: str | None = None,
    run_epilogue: bool = True, job: JobEnvironment | None = None, claims: str | None = None,
) -> int:
    """Run the elements of packed array task `task` (default: this job's), each as `run_element`
    runs one: own context, state, retries, and own time budget (MACE_PACK_TIME). One after
    another, or MACE_PACK_LANES of them at once (element/lanes.py: this process is lane 0 and
    starts the others; a lane started so gets the shared `claims` directory).

    A failing element does not stop its pack-mates. The time-limit (or a cancel) signal stops the
    running elements (TIMEOUT/CANCELLED) and leaves the ones not started PENDING. The exit code is
    the first failure's; in a multi-stage plan 0 when any element completed the stage, so
    `aftercorr` still starts the downstream task (its runner skips the elements that failed here).
    """
    job = job or job_environment()
    elements = job.packed_elements(task)
    _Interrupt().install()  # a signal before the first element is recorded, not fatal
    if claims is not None:
        _run_lane(manifest_path, elements, stage, run_epilogue, lanes.Claims(claims))
        return 0  # how its elements ended is in the claims, for the task's runner
    count = min(job.lanes(), len(elements))
    if count <= 1 or _received:
        codes = _run_lane(manifest_path, elements, stage, run_epilogue)
    else:
        number = job.task_id() if task is None else task
        argv = lambda lane, shared: lanes.lane_argv(manifest_path, int(number or 0), lane, shared,  # noqa: E731
                                                    stage, run_epilogue)
        with lanes.team(argv, count, os.environ.get(env_names.CPUS)) as shared:
            if _received:
                lanes.forward(_received[0])  # arrived while the lanes started
            _run_lane(manifest_path, elements, stage, run_epilogue, shared)
            lanes.wait()
            codes = shared.codes(elements)
    bad = [c for c in codes if c]
    if _received and len(codes) < len(elements):
        bad.append(EXIT_TIMEOUT if _received[0] == signal.SIGUSR2 else 1)
    staged = bool(os.environ.get(env_names.STAGE) or stage)
    if not bad or (staged and len(bad) < len(codes)):
        return 0
    return bad[0]


def _run_lane(manifest_path: str | os.PathLike[str], elements: list[int], stage: str | None, run_epilogue: bool,
              claims: lanes.Claims | None = None) -> list[int]:
    """Run `elements` in order (with `claims`: those no other lane has taken), each with its own
    budget, until the task's signal; their exit codes."""
    budget = float(os.environ.get(env_names.PACK_TIME) or 0)
    codes: list[int] = []
    for index in elements:
        if _received:
            break  # the task's time limit or a cancel: the elements not started stay PENDING
        if claims is not None and not claims.take(index):
            continue
        if budget > 0:
            signal.setitimer(signal.ITIMER_REAL, budget)
        try:
            code = run_element(manifest_path, index, stage=stage, run_epilogue=run_epilogue)
        except Exception as exc:  # noqa: BLE001 - one element's bad input must not stop the others
            _unfinished.append(index)  # it may be left RUNNING: no marker, the task epilogue finalizes it
            print(f"mace run-element: element {index}: {type(exc).__name__}: {exc}", file=sys.stderr)
            code = int(getattr(exc, "exit_code", 1)) or 1
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        codes.append(code)
        if claims is not None:
            claims.done(index, code)
    return codes


def _run_steps(ctx: WorkflowContext, workflow_id: str, element: dict[str, Any], steps: list[dict[str, Any]],
               attempt: int, context_dir: Path, manifest: Any, outcomes: list[step_runner.StepOutcome],
               interrupt: _Interrupt) -> tuple[str, str]:
    """Run `steps` in the element's context (resuming: completed steps are skipped); (state, message)."""
    db = ctx.get_database()
    for m in element.get("materials", []):
        db.create_material(**m)
    default_material = element["materials"][0]["material_id"] if element.get("materials") else None
    if default_material is None and any(not s.get("material_id") for s in steps):
        # the database records a calculation against a material; an element without any
        # gets one placeholder named after its workflow (identical re-creation is a no-op)
        default_material = workflow_id
        db.create_material(default_material, "n/a", metadata={"placeholder": True, "workflow_id": workflow_id})
    env = {**os.environ, **step_env(manifest.isolation_mode, workflow_id, context_dir, element)}
    done = set()
    if attempt > 1:
        done = _completed_steps(db, workflow_id)
        _close_interrupted(db, workflow_id, attempt - 1)
    search_path = [manifest.plan_dir]
    paths = ContextPaths(context_dir)
    for step in steps:
        if interrupt.signum:
            break
        if step["name"] in done:
            outcomes.append(step_runner.StepOutcome(step["name"], "skipped", 0, 0.0, None, "done earlier"))
            continue
        outcome = step_runner.run_step(
            step, db, paths.step_dir(step["name"]), env,
            step.get("material_id") or default_material, workflow_id, search_path,
        )
        outcomes.append(outcome)
        if outcome.status != "completed":
            return (st.TIMEOUT if outcome.status == "timeout" else st.FAILED), f"step {outcome.name}: {outcome.message}"
    return st.COMPLETED, ""


def _stage_chain(stage: str | None, stages: Sequence[Any]) -> ModuleType | None:
    """`element/chain.py` when this run decides around stages (a multi-stage plan, or a stage asked
    for, which chain checks); None for a single-stage plan, whose runner never imports it."""
    if not (stage or os.environ.get(env_names.STAGE) or stages):
        return None
    from . import chain  # lazy: only multi-stage plans run stages; a plain element starts without it

    return chain


def _run_chain_here(manifest_path: Path, index: int, stages: Any, run_epilogue: bool) -> int:
    """`--index N` by hand on a multi-stage plan: every stage in order, in this process."""
    from ..records.stages import ordered  # lazy: as _stage_chain

    code = 0
    for s in ordered(stages):
        code = run_element(manifest_path, index, stage=s.name, run_epilogue=run_epilogue) or code
    return code


def _ended_marker(manifest_path: Path) -> Path | None:
    """`<submission>/ended/<task key>`: this run of this task finalized every element itself, so the
    scheduler's task epilogue exits without starting a Python of its own (~0.1-0.2 s of CPU per
    element); None where no such hook is spared (local, PBS)."""
    key = job_environment().task_key()
    return None if key is None else SubmissionPaths(manifest_path.parent).ended_marker(key)


def clear_ended(manifest_path: Path) -> None:
    """At the start: remove a marker a reused job id may have left (one unlink)."""
    if (marker := _ended_marker(manifest_path)) is not None:
        try:
            marker.unlink(missing_ok=True)
        except OSError:
            pass  # best effort, as marking


def mark_ended(manifest_path: Path) -> None:
    """Every element of this task ran its own epilogue. Best effort: without the marker the task
    epilogue runs, and finds nothing to do."""
    if (marker := _ended_marker(manifest_path)) is None:
        return
    try:
        marker.parent.mkdir(exist_ok=True)
        marker.touch()
    except OSError:
        pass


def resource_usage(since: resource.struct_rusage | None = None,
                   outcomes: list[step_runner.StepOutcome] | tuple[()] = ()) -> dict[str, Any]:
    """Peak RSS and CPU time of this element's run, for `mace report`'s histograms (the scheduler's
    accounting may not be there, or not yet, or be a packed task's, shared by its elements).

    CPU: of every step process this runner waited for since the element started (`since`, the
    children's usage then), so in a packed task a later element is not charged its pack-mates'.
    Peak RSS: the largest step process of the element (os.wait4 measures each, with what it
    waited for: steps.py), else the children's peak if it rose during the element, and the
    runner's own peak (small; in a packed task the runner's, shared by its elements)."""
    steps = resource.getrusage(resource.RUSAGE_CHILDREN)
    before_rss, before_cpu = (since.ru_maxrss, since.ru_utime + since.ru_stime) if since else (0, 0.0)
    measured = [o.peak_rss_bytes for o in outcomes if o.peak_rss_bytes is not None]
    # the children's peak only when no step was measured: it also holds every process this runner
    # reaped since (a pack-mate's step reaped late, the epilogue's fork), which are not this element's
    rose = steps.ru_maxrss if steps.ru_maxrss > before_rss and not measured else 0
    return {"peak_rss_bytes": max([step_runner.own_peak_rss(), step_runner.rss_bytes(rose), *measured]),
            "cpu_seconds": round(max(0.0, steps.ru_utime + steps.ru_stime - before_cpu), 3)}


def main(argv: list[str] | None = None) -> int:
    args = plain_arguments(sys.argv[1:] if argv is None else argv)
    if args is None:
        import argparse  # lazy: only a command line other than a job script's needs the parser

        parser = argparse.ArgumentParser(prog="mace run-element", description=DESCRIPTION)
        args = add_arguments(parser).parse_args(argv)
    return run_parsed(args)


def run_parsed(args: Any) -> int:
    """Run what the runner's command line (element/arguments.py) asked for; the exit code."""
    _received.clear()  # a reused interpreter (local worker): a signal to the previous element is not ours
    lanes.unclean.clear()
    _unfinished.clear()
    try:
        if args.settle_stage:
            from . import chain  # lazy: the settle job only

            settled = chain.settle_stage(Path(args.manifest), args.settle_stage, [j for j in args.jobs.split(",") if j])
            print(f"mace settle: stage {args.settle_stage}: {len(settled)} element(s) settled {settled}")
            return 0
        if not args.no_epilogue and args.claims is None:
            clear_ended(Path(args.manifest).absolute())
        if args.task is not None:
            code = run_pack(args.manifest, args.task, stage=args.stage, run_epilogue=not args.no_epilogue,
                            claims=args.claims)
        else:
            code = run_element(args.manifest, args.index, stage=args.stage, run_epilogue=not args.no_epilogue)
        if args.claims is not None:  # a lane: non-zero tells the task's runner an element was left unfinished
            return 1 if _unfinished else code
        if not args.no_epilogue and not lanes.unclean and not _unfinished:
            mark_ended(Path(args.manifest).absolute())  # else the task epilogue finalizes what was left
        return code
    except InputError as exc:
        print(f"mace run-element: error: {exc}", file=sys.stderr)
        return exc.exit_code
