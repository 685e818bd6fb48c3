"""The element runner: env injection, {context_dir} everywhere, resume, step records, signals, requeue."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from submit_fakes import PY, marker_plan

from mace_hpc.records import read_state
from mace_hpc.submission.submit import submit_plan


def _plan(tmp_path, steps, env=None):
    plan = {
        "name": "er",
        "isolation_mode": "isolated",
        "env": env or {},
        "elements": [{"id": "only", "materials": [{"material_id": "m", "formula": "Al"}], "steps": steps}],
    }
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    return path


DUMP_ENV = (
    "import json, os, sys; json.dump({k: os.environ.get(k) for k in sys.argv[1:]}, open('env.json', 'w'));"
    "json.dump(dict(n=7), open('results.json', 'w'))"
)


def test_env_and_context_dir_reach_the_step(tmp_path, mace_env):
    from mace_hpc.workflow.executor_contextual import ContextualWorkflowExecutor

    keys = ["MACE_WORKFLOW_ID", "MACE_ISOLATION_MODE", "MACE_CONTEXT_DIR", "OUT_DIR"]
    plan = _plan(tmp_path, [{"name": "s", "command": [sys.executable, "-c", DUMP_ENV, *keys]}],
                 env={"OUT_DIR": "{context_dir}/out"})
    summary = ContextualWorkflowExecutor().execute_workflow_plan(plan)
    ctx_dir = mace_env["scratch_root"] / "er-only"
    seen = json.loads((ctx_dir / "calculations" / "s" / "env.json").read_text())
    assert seen == {"MACE_WORKFLOW_ID": "er-only", "MACE_ISOLATION_MODE": "isolated",
                    "MACE_CONTEXT_DIR": str(ctx_dir), "OUT_DIR": f"{ctx_dir}/out"}
    assert summary["states"] == {"MERGED": 1}
    from mace_hpc.database.materials import MaterialDatabase

    shared = MaterialDatabase(mace_env["shared_database"])
    [calc] = shared.get_calculations_by_material("m")
    assert calc["status"] == "completed" and calc["exit_code"] == 0 and calc["workflow_id"] == "er-only"
    assert [(p["property_name"], p["property_value"]) for p in shared.get_material_properties("m")] == [("n", 7)]
    files = {f["file_type"] for f in shared.get_calculation_files(calc["calc_id"])}
    assert files == {"stdout", "stderr", "results"}


def test_failed_step_stops_the_element_and_resume_skips_completed(tmp_path, mace_env):
    from mace_hpc.workflow.executor_contextual import ContextualWorkflowExecutor

    flag = tmp_path / "allow"
    steps = [
        {"name": "first", "command": [sys.executable, "-c", "open('ran', 'a').write('x')"]},
        {"name": "second", "command": [sys.executable, "-c", f"import os, sys; sys.exit(0 if os.path.exists({str(flag)!r}) else 3)"]},
    ]
    plan = _plan(tmp_path, steps)
    summary = ContextualWorkflowExecutor().execute_workflow_plan(plan)
    ctx_dir = mace_env["scratch_root"] / "er-only"
    state = read_state(ctx_dir)
    assert not summary["succeeded"]
    assert state.run_state == "FAILED" and "exit code 3" in state.message
    flag.touch()
    summary = ContextualWorkflowExecutor().execute_workflow_plan(plan)
    state = read_state(ctx_dir)
    assert summary["succeeded"] and state.attempts == 2
    assert [s["status"] for s in state.steps] == ["skipped", "completed"]
    assert (ctx_dir / "calculations" / "first" / "ran").read_text() == "x"  # ran once only


def test_time_limit_interrupts_a_function_step_that_catches_exception(tmp_path, mace_env):
    """`except Exception:` in user code must not turn a time-limit stop into a completed step."""
    from submit_fakes import signal_when_started

    (tmp_path / "stubborn.py").write_text(
        "import time\n"
        "def work(flag):\n"
        "    open(flag, 'w').close()\n"
        "    try:\n"
        "        time.sleep(120)\n"
        "    except Exception:\n"
        "        pass\n"
        "    return {'finished': 1}\n"
    )
    flag = tmp_path / "started"
    plan = {"name": "stub", "isolation_mode": "isolated", "elements": [{
        "id": "e0", "materials": [{"material_id": "m", "formula": "Al"}],
        "steps": [{"name": "work", "function": "stubborn:work", "kwargs": {"flag": str(flag)}}]}]}
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(json.dumps(plan))
    result = submit_plan(plan_path, backend="local", prepare_only=True)
    argv = [sys.executable, "-m", "mace_hpc.element", str(result.submission.manifest_path), "--index", "0"]
    assert signal_when_started(argv, flag, signal.SIGUSR2) == 124
    state = read_state(mace_env["scratch_root"] / "stub-e0")
    assert state.run_state == "TIMEOUT"
    assert [s["status"] for s in state.steps] == ["timeout"]


# ------------------------------------------------------------------ signals at awkward moments
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


def test_time_limit_signal_before_the_first_step_records_timeout_and_runs_the_epilogue(tmp_path, mace_env):
    """Invariant 1: a signal while the runner sets up (before any step) used to escape as a
    traceback (StepInterrupted), leaving state.json RUNNING and no epilogue."""
    marker = tmp_path / "ran"
    result = submit_plan(marker_plan("early", marker), backend="local", prepare_only=True)
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
    result = submit_plan(marker_plan("late", marker), backend="local", prepare_only=True)
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


# ------------------------------------------------------------------ requeue vs mace cancel
def _run_requeue_element(tmp_path, mace_env, fake, sig, cancel_first):
    """An element of a requeue-on SLURM plan (FakeBackend) run by hand with a fake `scontrol`
    that records its calls; `sig` reaches the runner once its step has started."""
    from mace_hpc.submission import control

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


def test_mace_cancel_is_not_undone_by_the_elements_own_requeue(tmp_path, mace_env, fake_backend):
    """With requeue on, an element terminated by `mace cancel` (scancel's SIGTERM) asked SLURM to
    requeue itself, and SLURM does requeue a cancelled job: the cancelled plan came back."""
    rc, state, calls = _run_requeue_element(tmp_path, mace_env, fake_backend, signal.SIGTERM, cancel_first=True)
    assert "requeue" not in calls
    assert state.run_state == "CANCELLED" and not state.requeued
    assert rc == 1


def test_time_limit_signal_still_requeues(tmp_path, mace_env, fake_backend):
    rc, state, calls = _run_requeue_element(tmp_path, mace_env, fake_backend, signal.SIGUSR2, cancel_first=False)
    assert calls.split() == ["requeue", f"{state.scheduler['SLURM_ARRAY_JOB_ID']}_0"]
    assert state.state == "PENDING" and state.requeued is True and rc == 124


# What an element's runner must start without (issue 15: for a short element the runner's start is
# most of its cost). `inspect` may be in sys.modules only as the runner's not-yet-run placeholder
# (element/__main__.py); `ast` and `dis` are what running it would import.
NOT_AT_START = ("inspect", "ast", "dis", "socket", "tempfile", "shutil", "random", "uuid", "argparse", "gettext",
                "mace_hpc.schedulers.base", "mace_hpc.schedulers.pbs.dialect", "mace_hpc.records.submission",
                "mace_hpc.database.filters", "mace_hpc.element.chain", "mace_hpc.records.stages")
_LOADED = ("import json, runpy, sys, atexit\n"
           "def loaded():\n"
           "    ran = {n for n, m in sys.modules.items() if n != 'inspect' or 'signature' in vars(m)}\n"
           "    print(json.dumps(sorted(ran & set(sys.argv[1].split(',')))))\n")


def _without_site(*argv: str) -> subprocess.CompletedProcess[str]:
    """A fresh `python -S` (no site-packages .pth imports, which differ between installs) with the
    repository on its path."""
    import mace_hpc

    root = str(Path(mace_hpc.__file__).resolve().parent.parent)
    return subprocess.run([PY, "-S", *argv], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": root})


def test_the_runner_imports_nothing_only_rare_paths_need():
    proc = _without_site("-c", _LOADED + "import mace_hpc.element.__main__\nloaded()", ",".join(NOT_AT_START))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []


def test_a_whole_element_run_stays_lean(tmp_path, mace_env):
    """`python -m mace_hpc.element MANIFEST --index 0` as a job runs it, one step, merged by its
    epilogue: still none of them in the runner's process when it exits."""
    from mace_hpc.config import load_config

    plan = {"name": "lean", "isolation_mode": "isolated", "on_complete": "merge",
            "elements": [{"id": "e0", "steps": [{"name": "calc", "command": ["true"]}]}]}
    result = submit_plan(plan, config=load_config(), backend="local", prepare_only=True)
    manifest = result.submission.directory / "manifest.json"
    run = ("atexit.register(loaded)\nsys.argv = ['mace_hpc.element', *sys.argv[2:]]\n"
           "runpy.run_module('mace_hpc.element', run_name='__main__', alter_sys=True)")
    proc = _without_site("-c", _LOADED + run, ",".join(NOT_AT_START), str(manifest), "--index", "0")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1]) == []
    assert read_state(mace_env["scratch_root"] / "lean-e0").state == "MERGED"


def test_a_job_scripts_command_line_reads_as_argparse_reads_it():
    """`plain_arguments` (the runner's start without argparse) gives exactly the parser's namespace
    for the command lines job scripts run, and leaves every other one to the parser."""
    import argparse

    from mace_hpc.element.arguments import add_arguments, plain_arguments

    parser = add_arguments(argparse.ArgumentParser())
    for argv in (["/s/manifest.json"], ["m.json", "--index", "0"], ["m.json", "--index", "007"], ["m b", "--index", "12"],
                 ["m.json", "--no-epilogue"], ["m.json", "--index", "3", "--no-epilogue"]):  # the last two: local workers
        assert vars(plain_arguments(argv)) == vars(parser.parse_args(argv)), argv
    for argv in ([], ["m.json", "--index", "-1"], ["m.json", "--index=3"], ["m.json", "--ind", "3"], ["-h"], [""],
                 ["m.json", "--index", "٣"], ["m.json", "--task", "1"], ["--no-epilogue"], ["m.json", "--no-epilogue", "--index", "3"],
                 ["--index", "3", "--no-epilogue"], ["--", "m.json"]):
        assert plain_arguments(argv) is None, argv


def test_jobs_start_the_runner_without_site_and_user_code_still_gets_it(tmp_path, mace_env):
    """Every backend's job execs `element_command`: `python -S element/start.py MANIFEST` (site's
    `.pth` processing was the largest part of a short element's start). A plain element runs and
    merges without site ever loading, found through the start file's own location (no PYTHONPATH);
    a function step's user code sees site-packages (PyYAML here) as under a normal `python`."""
    from mace_hpc.records.runner import runner_argv
    from mace_hpc.submission.submit import element_command

    (tmp_path / "uses_yaml.py").write_text(
        "import json, sys\n"
        "import yaml\n"
        "def probe(out):\n"
        "    json.dump({'site': 'site' in sys.modules, 'yaml': yaml.safe_load('a: 1')}, open(out, 'w'))\n"
        "    return {'ok': 1}\n")
    out = tmp_path / "probe.json"
    plan = {"name": "nosite", "isolation_mode": "isolated", "on_complete": "merge", "elements": [
        {"id": "plain", "steps": [{"name": "calc", "command": ["true"]}]},
        {"id": "fn", "materials": [{"material_id": "m", "formula": "Al"}],
         "steps": [{"name": "work", "function": "uses_yaml:probe", "kwargs": {"out": str(out)}}]}]}
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(json.dumps(plan))
    manifest = submit_plan(plan_path, backend="local", prepare_only=True).submission.manifest_path
    argv = element_command(manifest)
    assert argv[:3] == [sys.executable, "-S", str(Path(__file__).parent.parent / "mace_hpc" / "element" / "start.py")]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    plain = subprocess.run([argv[0], "-X", "importtime", *argv[1:], "--index", "0"], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
    assert plain.returncode == 0, plain.stderr[-2000:]
    loaded = {line.rsplit("|", 1)[-1].strip() for line in plain.stderr.splitlines() if line.startswith("import time:")}
    assert "mace_hpc.element.run" in loaded and "site" not in loaded
    assert read_state(mace_env["scratch_root"] / "nosite-plain").state == "MERGED"

    fn = subprocess.run([*argv, "--index", "1"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert fn.returncode == 0, fn.stderr[-2000:]
    assert json.loads(out.read_text()) == {"site": True, "yaml": {"a": 1}}
    assert read_state(mace_env["scratch_root"] / "nosite-fn").state == "MERGED"
    # a site's own interpreter may be another environment: it starts the runner as a module, with site
    assert runner_argv("/opt/site/bin/python3") == ["/opt/site/bin/python3", "-m", "mace_hpc.element"]


def test_a_module_the_runner_imports_late_is_found_through_site():
    """After the runner's own imports, the first top-level import nothing finds (psutil for a
    contended lock, PyYAML, boto3) starts site once and is retried; standard-library probes for
    absent optional modules do not start it."""
    import psutil

    import mace_hpc

    root = str(Path(mace_hpc.__file__).resolve().parent.parent)
    # an editable install (CI's) keeps psutil out of the package's directory; a wheel's shares it
    via_site = not Path(psutil.__file__).resolve().is_relative_to(root)
    code = ("import sys; sys.path[0] = sys.argv[1]\n"
            "from mace_hpc.element import start\n"
            "sys.meta_path.append(start._SiteOnMiss)\n"
            "try:\n    import _winapi\nexcept ImportError:\n    pass\n"
            "before = 'site' in sys.modules\n"
            "import psutil\n"
            "print(before, 'site' in sys.modules, start._SiteOnMiss in sys.meta_path, callable(psutil.pid_exists))\n")
    proc = subprocess.run([PY, "-S", "-c", code, root], capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", str(via_site), str(not via_site), "True"]
