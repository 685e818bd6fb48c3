"""mace_hpc.element.steps: one step run and recorded as a calculation, without the runner around it.

What a step leaves behind is what the epilogue merges: a calculation row (status, exit code,
message, runtime), its files, and properties from results.json (or a function's return value)
only when it completed. Stopping a step must stop its whole process group.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from submit_fakes import PY, gone

from mace_hpc.database.materials import MaterialDatabase
from mace_hpc.element import steps
from mace_hpc.element.steps import StepOutcome, run_step

# a step whose shell starts a grandchild in the step's process group, records its pid, and waits
GROUP_STEP = ["sh", "-c", "sleep 300 & echo $! > child.pid; wait"]


@pytest.fixture
def db(tmp_path: Path) -> MaterialDatabase:
    database = MaterialDatabase(tmp_path / "context.db")
    database.create_material("m", "Al")
    yield database
    database.close()


def _run(db: MaterialDatabase, tmp_path: Path, step: dict[str, Any], search_path: list[str] | None = None,
         **env: str) -> StepOutcome:
    return run_step(step, db, tmp_path / "calculations" / step["name"], {**os.environ, **env}, "m", "wf-1",
                    search_path or [])


def _properties(db: MaterialDatabase) -> dict[str, Any]:
    return {p["property_name"]: p["property_value"] for p in db.get_material_properties("m")}


def _child_pid(work_dir: Path) -> int:
    for _ in range(200):
        text = (work_dir / "child.pid").read_text().strip() if (work_dir / "child.pid").exists() else ""
        if text:
            return int(text)
        time.sleep(0.05)
    raise AssertionError("the step never started its child")


# ---------------------------------------------------------------------------- command steps
def test_command_step_records_a_completed_calculation_and_its_results(db, tmp_path: Path) -> None:
    code = ("import json, os, sys; print('hello'); print('careful', file=sys.stderr); "
            "json.dump({'energy': -3.5, 'label': os.environ['STEP_VAR'], 'converged': True, 'forces': [1, 2]}, "
            "open('results.json', 'w'))")
    step = {"name": "relax", "calc_type": "RELAX", "command": [PY, "-c", code]}
    outcome = _run(db, tmp_path, step, STEP_VAR="fcc")
    work = tmp_path / "calculations" / "relax"
    assert (outcome.name, outcome.status, outcome.exit_code, outcome.message) == ("relax", "completed", 0, "")
    calc = db.get_calculation(outcome.calc_id)
    assert (calc["status"], calc["exit_code"], calc["error_message"]) == ("completed", 0, None)
    assert (calc["calc_type"], calc["workflow_id"], calc["work_dir"]) == ("RELAX", "wf-1", str(work))
    assert calc["settings"] == {"step": "relax", "command": step["command"], "function": None}
    assert calc["runtime_seconds"] == pytest.approx(outcome.runtime_s) and outcome.runtime_s > 0
    assert _properties(db) == {"energy": -3.5, "label": "fcc"}  # booleans and lists are not properties
    files = {f["file_type"]: f for f in db.get_calculation_files(outcome.calc_id)}
    assert set(files) == {"stdout", "stderr", "results"}
    assert files["stdout"]["file_size"] == len("hello\n") and (work / "stdout.txt").read_text() == "hello\n"
    assert (work / "stderr.txt").read_text() == "careful\n"


def test_failed_command_records_its_exit_code_and_no_properties(db, tmp_path: Path) -> None:
    code = "import json, sys; json.dump({'energy': 1.0}, open('results.json', 'w')); sys.exit(3)"
    outcome = _run(db, tmp_path, {"name": "s", "command": [PY, "-c", code]})
    assert (outcome.status, outcome.exit_code, outcome.message) == ("failed", 3, "exit code 3")
    calc = db.get_calculation(outcome.calc_id)
    assert (calc["status"], calc["exit_code"], calc["error_message"]) == ("failed", 3, "exit code 3")
    assert _properties(db) == {}  # a failed step's results may be partial
    assert {f["file_type"] for f in db.get_calculation_files(outcome.calc_id)} == {"stdout", "stderr", "results"}


def test_command_killed_by_a_signal_says_which(db, tmp_path: Path) -> None:
    outcome = _run(db, tmp_path, {"name": "s", "command": [PY, "-c", "import os; os.kill(os.getpid(), 9)"]})
    assert (outcome.status, outcome.exit_code, outcome.message) == ("failed", -9, "killed by signal 9")


def test_missing_program_fails_the_step_with_127(db, tmp_path: Path) -> None:
    outcome = _run(db, tmp_path, {"name": "s", "command": ["no-such-program-xyz"]})
    assert (outcome.status, outcome.exit_code) == ("failed", 127)
    assert outcome.message == "step 's': program 'no-such-program-xyz' not found"
    assert db.get_calculation(outcome.calc_id)["error_message"] == outcome.message


# ---------------------------------------------------------------------------- function steps
@pytest.fixture
def user_module(tmp_path: Path) -> tuple[str, str]:
    """A user's module `user_steps.py` in its own directory (the plan dir): (module name, directory)."""
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "user_steps.py").write_text(
        "import json, sys\n"
        "def compute(a, b, scale=1):\n"
        "    print('computing')\n"
        "    open('side.txt', 'w').write('x')\n"
        "    json.dump({'from_file': 2, 'sum': -1}, open('results.json', 'w'))\n"
        "    return {'sum': (a + b) * scale, 'note': 'ok', 'skip': None}\n"
        "def broken():\n"
        "    raise ValueError('bad input')\n"
        "def quits():\n"
        "    sys.exit(4)\n"
        "NOT_CALLABLE = 3\n"
    )
    return "user_steps", str(lib)


def test_function_step_gets_its_kwargs_and_its_return_value_becomes_properties(db, tmp_path, user_module) -> None:
    name, lib = user_module
    cwd = os.getcwd()
    step = {"name": "f", "function": f"{name}:compute", "kwargs": {"a": 1, "b": 2, "scale": 10}}
    outcome = _run(db, tmp_path, step, search_path=[lib])
    work = tmp_path / "calculations" / "f"
    assert (outcome.status, outcome.exit_code) == ("completed", 0)
    assert _properties(db) == {"sum": 30, "note": "ok", "from_file": 2}  # the return value wins over the file
    assert (work / "stdout.txt").read_text() == "computing\n" and (work / "side.txt").read_text() == "x"
    assert os.getcwd() == cwd  # it ran in its work dir, and the runner's cwd is back
    assert db.get_calculation(outcome.calc_id)["settings"]["function"] == f"{name}:compute"


@pytest.mark.parametrize(
    ("function", "exit_code", "message"),
    [
        ("{name}:broken", 1, "exit code 1"),
        ("{name}:quits", 4, "exit code 4"),  # sys.exit ends the step's own process only
        ("no_such_module_xyz:f", 127,
         "mace function step: function 'no_such_module_xyz:f': cannot import module 'no_such_module_xyz'"),
        ("{name}:missing", 127, "mace function step: function '{name}:missing': module '{name}' has no attribute "
         "'missing'"),
        ("{name}:NOT_CALLABLE", 127, "mace function step: function '{name}:NOT_CALLABLE': 'NOT_CALLABLE' is not "
         "callable"),
    ],
)
def test_a_failing_function_step_fails_only_its_step(db, tmp_path, user_module, function, exit_code, message) -> None:
    name, lib = user_module
    outcome = _run(db, tmp_path, {"name": "f", "function": function.format(name=name)}, search_path=[lib])
    assert (outcome.status, outcome.exit_code) == ("failed", exit_code)
    assert outcome.message.startswith(message.format(name=name))
    assert db.get_calculation(outcome.calc_id)["error_message"] == outcome.message
    if exit_code == 1:  # the user's traceback is kept for them
        stderr = (tmp_path / "calculations" / "f" / "stderr.txt").read_text()
        assert "Traceback" in stderr and "ValueError: bad input" in stderr


# ---------------------------------------------------------------------------- stopping a step
def test_step_timeout_stops_the_whole_process_group(db, tmp_path: Path) -> None:
    t0 = time.monotonic()
    outcome = _run(db, tmp_path, {"name": "slow", "command": GROUP_STEP, "timeout": 0.5})
    assert time.monotonic() - t0 < 10
    assert (outcome.status, outcome.exit_code, outcome.message) == ("timeout", -15, "step timeout after 0.5s")
    assert db.get_calculation(outcome.calc_id)["status"] == "timeout"
    assert gone([_child_pid(tmp_path / "calculations" / "slow")]) == []


@pytest.mark.parametrize("block", [True, False], ids=["blocking", "from-a-signal-handler"])
def test_terminate_current_stops_a_running_steps_group(db, tmp_path: Path, block: bool) -> None:
    """Blocking: SIGTERM to the group, the step fails by that signal. From the time-limit signal's
    handler: SIGTERM now, SIGKILL after the grace to a group that ignores it; the step timed out."""
    command = GROUP_STEP if block else ["sh", "-c", "trap '' TERM; sleep 300 & echo $! > child.pid; wait"]
    steps.terminate_current()  # nothing running: a no-op
    result: list[StepOutcome] = []
    runner = threading.Thread(target=lambda: result.append(_run(db, tmp_path, {"name": "s", "command": command})))
    runner.start()
    try:
        child = _child_pid(tmp_path / "calculations" / "s")
        steps.terminate_current(grace=0.5, block=block)
        steps.wait_for_stopped_group()
        runner.join(30)
    finally:
        if runner.is_alive() and steps._current_proc is not None:
            steps._current_proc.kill()
    [outcome] = result
    expected = ("failed", -15, "killed by signal 15") if block else ("timeout", -9, "interrupted by the time-limit signal")
    assert (outcome.status, outcome.exit_code, outcome.message) == expected
    assert gone([child]) == []
    assert steps._current_proc is None
