"""Regression tests for correctness bugs found in review (each names the invariant it protects)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from submit_fakes import signal_when_started

from mace_hpc.records import read_state
from mace_hpc.submission.submit import submit_plan

PY = sys.executable

# Runs one element in its own process (the runner installs signal handlers for good), with a
# hook that sends the runner a signal at a chosen point: `where` is "module:Class.attr" or
# "module:attr" of a function that gets wrapped.
_DRIVER = r"""
import importlib, os, signal, sys
manifest, index, where, signame = sys.argv[1:5]
module_name, _, attr = where.partition(":")
owner = importlib.import_module(module_name)
parts = attr.split(".")
for part in parts[:-1]:
    owner = getattr(owner, part)
original = getattr(owner, parts[-1])
fired = []

def wrapped(*args, **kwargs):
    if not fired:
        fired.append(1)
        os.kill(os.getpid(), getattr(signal, signame))
    return original(*args, **kwargs)

setattr(owner, parts[-1], wrapped)
from mace_hpc.element import run
sys.exit(run.main([manifest, "--index", index]))
"""


def _run_with_signal_at(manifest: Path, where: str, signame: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-c", _DRIVER, str(manifest), "0", where, signame],
                          capture_output=True, text=True, timeout=120)


def _one_step_plan(name: str, marker: Path) -> dict:
    return {"name": name, "isolation_mode": "isolated", "elements": [
        {"id": "e0", "materials": [{"material_id": "m", "formula": "Al"}],
         "steps": [{"name": "s", "command": [PY, "-c", f"open({str(marker)!r}, 'a').write('x')"]}]}]}


# ------------------------------------------------------------------ element runner: signals
def test_time_limit_signal_before_the_first_step_records_timeout_and_runs_the_epilogue(tmp_path, mace_env):
    """Invariant 1: a signal while the runner sets up (before any step) used to escape as a
    traceback (StepInterrupted), leaving state.json RUNNING and no epilogue."""
    marker = tmp_path / "ran"
    result = submit_plan(_one_step_plan("early", marker), backend="local", prepare_only=True)
    proc = _run_with_signal_at(result.submission.manifest_path,
                               "mace_hpc.workflow.context:WorkflowContext.ensure_directory", "SIGUSR2")
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 124
    state = read_state(mace_env["scratch_root"] / "early-e0")
    assert state.run_state == "TIMEOUT" and "time limit" in state.message
    assert state.state == "KEPT"  # on_failure default: the epilogue ran
    assert not marker.exists()  # no step started after the signal


def test_cancel_signal_during_the_epilogue_does_not_abort_the_merge(tmp_path, mace_env):
    """Invariant 1/4: SIGTERM while the epilogue runs used to raise StepInterrupted inside it, so
    an element whose steps all completed was left PENDING_MERGE ('epilogue failed')."""
    marker = tmp_path / "ran"
    result = submit_plan(_one_step_plan("late", marker), backend="local", prepare_only=True)
    proc = _run_with_signal_at(result.submission.manifest_path, "mace_hpc.epilogue.hook:build_target", "SIGTERM")
    assert "Traceback" not in proc.stderr, proc.stderr
    state = read_state(mace_env["scratch_root"] / "late-e0")
    assert state.run_state == "COMPLETED" and marker.read_text() == "x"
    assert state.state == "MERGED", state.pending_reason
    assert proc.returncode == 0


def test_signal_between_steps_still_stops_the_element():
    """The armed window keeps the old behaviour: SIGUSR2 raised while armed and idle interrupts."""
    from mace_hpc.element import run as run_mod
    from mace_hpc.element import steps as step_runner

    interrupt = run_mod._Interrupt()
    interrupt.signum = None
    interrupt.armed = True
    try:
        interrupt._handle(signal.SIGUSR2, None)
    except step_runner.StepInterrupted:
        pass
    else:
        raise AssertionError("armed handler did not interrupt")
    assert interrupt.signum == signal.SIGUSR2
    idle = run_mod._Interrupt()
    idle._handle(signal.SIGTERM, None)  # not armed (setup, epilogue): only recorded
    assert idle.signum == signal.SIGTERM


# ------------------------------------------------------------------ epilogue: a child that dies
def test_epilogue_child_that_fails_leaves_pending_merge(mace_env, monkeypatch):
    """Invariant 1: the forked epilogue child dying without a result (an exception, OOM kill,
    a crash in SQLite) was taken as 'finished': the element stayed COMPLETED with no
    PENDING_MERGE record and no reason, instead of saying the merge is still to do."""
    import os

    from epilogue_helpers import make_submission

    from mace_hpc import records as st
    from mace_hpc.epilogue import hook

    manifest = make_submission(mace_env["scratch_root"], "crash", 1, shared_database=mace_env["shared_database"],
                               archive_dir=mace_env["archive_dir"])
    ctx = mace_env["scratch_root"] / "crash-e0"
    assert hook._can_fork()

    def dies(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)  # like the OOM killer

    monkeypatch.setattr(hook, "finalize", dies)
    result = hook.run_epilogue(ctx, manifest=manifest, deadline=30)
    assert result.state.state == st.PENDING_MERGE
    assert read_state(ctx).state == st.PENDING_MERGE and read_state(ctx).pending_reason
    assert hook.run_with_deadline(lambda: 1 / 0, 30) == (False, None)
    monkeypatch.undo()
    assert hook.run_epilogue(ctx, manifest=manifest, deadline=30).state.state == st.MERGED  # retried later


# ------------------------------------------------------------------ cleaned-up contexts run again
def _shared_counts(db: Path) -> tuple[int, int]:
    import sqlite3

    with sqlite3.connect(db) as conn:
        return (conn.execute("SELECT count(*) FROM calculations").fetchone()[0],
                conn.execute("SELECT count(*) FROM properties").fetchone()[0])


def test_resubmitted_failed_element_whose_context_was_cleaned_is_merged(tmp_path, mace_env, monkeypatch):
    """Invariant 1: a FAILED element archived and cleaned up (tombstone, removed=True) that is
    resubmitted and then succeeds used to stay COMPLETED forever: the epilogue (and `mace merge`)
    skipped it as 'data already removed', so its new results never reached the shared DB."""
    from mace_hpc.submission.control import resubmit

    monkeypatch.setenv("MACE_AUTO_CLEANUP", "true")
    flag = tmp_path / "allow"
    step = [PY, "-c", "import json, os, sys; json.dump({'e': 2.5}, open('results.json', 'w')); "
            f"sys.exit(0 if os.path.exists({str(flag)!r}) else 3)"]
    plan = {"name": "again", "isolation_mode": "isolated", "on_failure": "archive", "elements": [
        {"id": "e0", "materials": [{"material_id": "m", "formula": "Al"}], "steps": [{"name": "s", "command": step}]}]}
    try:
        submit_plan(plan, backend="local")
    except Exception:  # noqa: BLE001 - the local backend may report the failed element
        pass
    ctx = mace_env["scratch_root"] / "again-e0"
    first = read_state(ctx)
    assert first.state == "ARCHIVED" and first.run_state == "FAILED" and first.removed
    flag.touch()
    resubmit("again")
    state = read_state(ctx)
    assert state.run_state == "COMPLETED"
    assert state.state == "MERGED", state
    assert _shared_counts(mace_env["shared_database"]) == (1, 1)


def test_submitting_a_finished_cleaned_plan_again_adds_nothing(tmp_path, mace_env, monkeypatch):
    """Invariant 2: re-running a finished plan whose contexts were merged and cleaned up reran
    every step from scratch (the context's record of completed steps was gone) and left the
    element COMPLETED, unmerged; its results are home already, so nothing must run again."""
    monkeypatch.setenv("MACE_AUTO_CLEANUP", "true")
    marker = tmp_path / "ran"
    plan = _one_step_plan("twice", marker)
    submit_plan(plan, backend="local")
    ctx = mace_env["scratch_root"] / "twice-e0"
    assert read_state(ctx).state == "MERGED" and read_state(ctx).removed
    counts = _shared_counts(mace_env["shared_database"])
    submit_plan(plan, backend="local")
    assert marker.read_text() == "x"  # the step did not run again
    state = read_state(ctx)
    assert state.state == "MERGED" and state.run_state == "COMPLETED"
    assert _shared_counts(mace_env["shared_database"]) == counts


# ------------------------------------------------------------------ time limit, then a stuck epilogue
_HANGING_ARCHIVE_DRIVER = r"""
import sys, time
import mace_hpc.epilogue.finalize as archive_mod  # where finalize looks archive_context up
archive_mod.archive_context = lambda *a, **k: time.sleep(3600)
from mace_hpc.element import run
sys.exit(run.main([sys.argv[1], "--index", "0"]))
"""


def test_epilogue_after_the_time_limit_signal_still_has_its_deadline(tmp_path, mace_env):
    """Invariant 4: the time-limit signal starts a SIGKILL timer thread for the step's group; while
    it was alive the epilogue could not fork and ran in a thread instead, which cannot be stopped
    at the deadline: the runner then exited with the thread still holding the context's lock, and
    the step's processes could still be writing into the context being archived."""

    started = tmp_path / "started"
    step = [PY, "-c", f"open({str(started)!r}, 'w').close(); import time; time.sleep(120)"]
    plan = {"name": "tl", "isolation_mode": "isolated", "on_failure": "archive",
            "elements": [{"id": "e0", "steps": [{"name": "s", "command": step}]}]}
    result = submit_plan(plan, backend="local", prepare_only=True)
    argv = [PY, "-c", _HANGING_ARCHIVE_DRIVER, str(result.submission.manifest_path)]
    assert signal_when_started(argv, started, signal.SIGUSR2, {"MACE_EPILOGUE_DEADLINE": "2"}) == 124
    ctx = mace_env["scratch_root"] / "tl-e0"
    state = read_state(ctx)
    assert state.run_state == "TIMEOUT" and state.state == "PENDING_MERGE"
    assert "deadline" in state.pending_reason
    assert not (ctx / ".epilogue.lock").exists()  # the stopped child released it


# ------------------------------------------------------------------ requeue vs mace cancel
def _run_requeue_element(tmp_path, mace_env, monkeypatch, sig, cancel_first):
    import os
    import time

    from submit_fakes import install_fake_backend

    from mace_hpc.submission import control

    fake = install_fake_backend(monkeypatch)
    started = tmp_path / "started"
    step = [PY, "-c", f"open({str(started)!r}, 'w').close(); import time; time.sleep(120)"]
    plan = {"name": "rq", "isolation_mode": "isolated", "resources": {"requeue": True},
            "elements": [{"id": "e0", "steps": [{"name": "s", "command": step}]}]}
    result = submit_plan(plan, backend="slurm")
    [job_id] = result.job_ids
    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = tmp_path / "scontrol-calls"
    (bindir / "scontrol").write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\nexit 0\n")
    (bindir / "scontrol").chmod(0o755)
    env = {**os.environ, **result.record.env, "PATH": f"{bindir}:{os.environ['PATH']}",
           "SLURM_ARRAY_JOB_ID": job_id, "SLURM_ARRAY_TASK_ID": "0", "SLURM_JOB_ID": "5000"}
    proc = subprocess.Popen([PY, "-m", "mace_hpc.element", str(result.submission.manifest_path)], env=env)
    try:
        for _ in range(600):
            if started.exists():
                break
            time.sleep(0.05)
        fake.set_state(job_id, "RUNNING")
        if cancel_first:
            control.cancel("rq")  # `mace cancel`: scancel, whose SIGTERM reaches the runner
        proc.send_signal(sig)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return rc, read_state(mace_env["scratch_root"] / "rq-e0"), calls.read_text() if calls.exists() else ""


def test_mace_cancel_is_not_undone_by_the_elements_own_requeue(tmp_path, mace_env, monkeypatch):
    """With requeue on, an element terminated by `mace cancel` (scancel's SIGTERM) asked SLURM to
    requeue itself, and SLURM does requeue a cancelled job: the cancelled plan came back."""
    rc, state, calls = _run_requeue_element(tmp_path, mace_env, monkeypatch, signal.SIGTERM, cancel_first=True)
    assert "requeue" not in calls
    assert state.run_state == "CANCELLED" and not state.requeued
    assert rc == 1


def test_time_limit_signal_still_requeues(tmp_path, mace_env, monkeypatch):
    rc, state, calls = _run_requeue_element(tmp_path, mace_env, monkeypatch, signal.SIGUSR2, cancel_first=False)
    assert calls.split() == ["requeue", f"{state.scheduler['SLURM_ARRAY_JOB_ID']}_0"]
    assert state.state == "PENDING" and state.requeued is True and rc == 124
