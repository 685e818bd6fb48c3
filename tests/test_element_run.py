"""The element runner: env injection, {context_dir} everywhere, resume, step records."""

from __future__ import annotations

import json
import sys

from mace_hpc.records import read_state


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
    import signal

    from submit_fakes import signal_when_started

    from mace_hpc.submission.submit import submit_plan

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
