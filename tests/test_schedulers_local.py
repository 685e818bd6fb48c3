"""mace_hpc.schedulers.local.backend: the process pool that stands in for a cluster.

It must honour the same contract a scheduler does: at most `max_parallel` elements at once, the
time-limit signal (SIGUSR2) at `limit - margin`, a hard kill past the limit that also reaches the
steps an element started, and `cancel` that never signals someone else's process.

The time-limit tests move the backend's clock instead of waiting minutes: `Clock.skew` seconds
are added to `time.monotonic()` as the backend sees it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import threading
import time
import types
from pathlib import Path

import pytest
from submit_fakes import PY, gone

from mace_hpc.schedulers.base import ArrayRequest
from mace_hpc.schedulers.local import backend as local_mod
from mace_hpc.schedulers.local import worker as worker_mod
from mace_hpc.schedulers.local.backend import LocalBackend

# an element that records its argv, its environment and when it ran; index 3 fails
SPAN = (
    "import json, os, sys, time; out, index = sys.argv[1], int(sys.argv[-1]); t0 = time.time(); time.sleep(0.5); "
    "json.dump({'start': t0, 'end': time.time(), 'argv': sys.argv[2:], 'job': os.environ['MACE_JOB_ID'], "
    "'plan_var': os.environ['PLAN_VAR']}, open(os.path.join(out, f'{index}.json'), 'w')); sys.exit(3 if index == 3 else 0)"
)
# an element that handles the time-limit signal like the runner does (exit 124), after saying it is ready
LIMITED = (
    "import os, signal, sys, time\n"
    "def on_usr2(signum, frame):\n"
    "    open(os.path.join(sys.argv[1], 'usr2'), 'w').close(); sys.exit(124)\n"
    "signal.signal(signal.SIGUSR2, on_usr2)\n"
    "open(os.path.join(sys.argv[1], 'ready'), 'w').write(str(os.getpid()))\n"
    "time.sleep(300)\n"
)
# a hung runner: ignores the time-limit signal, its step runs in a session of its own
HUNG = (
    "import os, signal, subprocess, sys, time\n"
    "signal.signal(signal.SIGUSR2, signal.SIG_IGN)\n"
    "step = subprocess.Popen(['sleep', '300'], start_new_session=True)\n"
    "open(os.path.join(sys.argv[1], 'ready'), 'w').write(str(step.pid))\n"
    "time.sleep(300)\n"
)


def _request(tmp_path: Path, code: str, indices: list[int] | None, **kw) -> ArrayRequest:
    return ArrayRequest(name="loc", indices=indices, max_parallel=kw.pop("max_parallel", 1),
                        command=[PY, "-c", code, str(tmp_path)], env=kw.pop("env", {}),
                        work_dir=tmp_path / "logs", scheduler=kw.pop("scheduler", {"time": 1}), **kw)


class Clock:
    """`time` for the backend module, with `skew` seconds added to its monotonic clock."""

    def __init__(self) -> None:
        self.skew = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.skew


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(local_mod, "time", types.SimpleNamespace(monotonic=c.monotonic, time=time.time,
                                                                 sleep=time.sleep))
    return c


def _submit_in_background(backend: LocalBackend, req: ArrayRequest) -> threading.Thread:
    thread = threading.Thread(target=backend.submit, args=(req,), daemon=True)
    thread.start()
    return thread


def _wait_for(path: Path) -> str:
    """The pid an element wrote to `path` once it was ready."""
    for _ in range(400):
        text = path.read_text() if path.exists() else ""
        if text:
            return text
        time.sleep(0.025)
    raise AssertionError(f"{path.name} never appeared")


# ---------------------------------------------------------------------------- running an array
def test_max_parallel_is_never_exceeded_and_every_element_runs(tmp_path: Path) -> None:
    calls: list[tuple[int, int, int, int]] = []
    backend = LocalBackend(progress=lambda done, total, failed, running: calls.append((done, total, failed, running)))
    req = _request(tmp_path, SPAN, [0, 1, 2, 3, 4], max_parallel=2, env={"PLAN_VAR": "x y"})
    job_id = backend.submit(req)
    spans = {i: json.loads((tmp_path / f"{i}.json").read_text()) for i in range(5)}
    starts = sorted(s["start"] for s in spans.values())
    peak = max(sum(1 for s in spans.values() if s["start"] <= t < s["end"]) for t in starts)
    assert peak == 2, f"max_parallel=2 but {peak} elements overlapped"
    assert all(spans[i]["argv"] == ["--index", str(i)] for i in range(5))
    assert {s["job"] for s in spans.values()} == {job_id} and job_id.startswith("local-")
    assert {s["plan_var"] for s in spans.values()} == {"x y"}
    assert backend.returncodes == {0: 0, 1: 0, 2: 0, 3: 3, 4: 0}
    ended = [c for k, c in enumerate(calls) if k == 0 or c[0] != calls[k - 1][0]]  # a call per start and per end
    assert [c[0] for c in ended] == [0, 1, 2, 3, 4, 5] and calls[-1] == (5, 5, 1, 0)
    assert max(c[3] for c in calls) == 2 and all(c[3] <= 2 for c in calls)  # running never above max_parallel
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == [f"{job_id}_{i}.out" for i in range(5)]


def test_progress_counts_elements_not_tasks(tmp_path: Path) -> None:
    """The bar says "elements": a packed task is several of them, and a staged element is done
    only when its last stage ends (element 1 fails in stage b: one failed element)."""
    code = "import sys; sys.exit(3 if sys.argv[-1] == '1' and sys.argv[-3] == 'b' else 0)"
    calls: list[tuple[int, int, int, int]] = []
    backend = LocalBackend(progress=lambda *c: calls.append(c))
    backend.submit_all([_request(tmp_path, code, list(range(7)), max_parallel=2, pack=3)], lambda r, j: None)
    assert calls[-1] == (7, 7, 0, 0) and all(total == 7 and running <= 6 for _, total, _, running in calls)
    calls.clear()
    stages = [_request(tmp_path, code, [0, 1, 2], max_parallel=2, stage=s, after=after)
              for s, after in (("a", ()), ("b", (0,)))]
    for req in stages:
        req.command = [*req.command, req.stage]  # ... <tmp> <stage> --index N: the code sees its stage
    backend.submit_all(stages, lambda r, j: None)
    assert calls[-1] == (3, 3, 1, 0) and {c[1] for c in calls} == {3}
    assert [c[0] for c in calls] == sorted(c[0] for c in calls)  # never counts an element twice


def test_a_chunk_with_an_index_offset_runs_its_own_elements(tmp_path: Path) -> None:
    """Chunks get offsets when `scheduler.max_array_size` is set (e.g. from a site config) even
    locally; `mace-submit --backend local` then ran elements 4, 5 for the chunk [2, 3] and
    never ran 2 and 3 (5 fails: no such element)."""
    backend = LocalBackend()
    backend.submit(_request(tmp_path, SPAN.replace("time.sleep(0.5)", "0"), [2, 4], index_offset=2,
                            env={"PLAN_VAR": "v"}))
    assert sorted(p.name for p in tmp_path.glob("*.json")) == ["2.json", "4.json"]


def test_time_limit_signal_comes_at_limit_minus_margin(tmp_path: Path, clock: Clock) -> None:
    """time 1 min, signal_margin 20 s: SIGUSR2 at 40 s, not before."""
    backend = LocalBackend()
    thread = _submit_in_background(backend, _request(tmp_path, LIMITED, [0],
                                                     scheduler={"time": 1, "signal_margin": 20}))
    _wait_for(tmp_path / "ready")
    clock.skew = 35  # 5 s before the signal is due
    time.sleep(0.3)
    assert not (tmp_path / "usr2").exists() and thread.is_alive()
    clock.skew = 40.5
    thread.join(30)
    assert not thread.is_alive()
    assert (tmp_path / "usr2").exists() and backend.returncodes == {0: 124}


def test_a_margin_longer_than_half_the_limit_is_capped(tmp_path: Path, clock: Clock) -> None:
    """signal_margin 1000 s on a 1-minute limit: signalled at 30 s (half), not at once."""
    backend = LocalBackend()
    thread = _submit_in_background(backend, _request(tmp_path, LIMITED, [0],
                                                     scheduler={"time": 1, "signal_margin": 1000}))
    _wait_for(tmp_path / "ready")
    time.sleep(0.3)
    assert not (tmp_path / "usr2").exists()
    clock.skew = 30.5
    thread.join(30)
    assert (tmp_path / "usr2").exists() and backend.returncodes == {0: 124}


def test_hard_kill_past_the_limit_reaches_the_steps_of_a_hung_runner(tmp_path: Path, clock: Clock) -> None:
    """A runner that ignores SIGUSR2 is SIGKILLed 10 s past the limit, with the steps it started in
    sessions of their own (found through psutil, not the process group)."""
    backend = LocalBackend()
    thread = _submit_in_background(backend, _request(tmp_path, HUNG, [0], scheduler={"time": 1}))
    step_pid = int(_wait_for(tmp_path / "ready"))
    try:
        clock.skew = 60 + 11
        thread.join(30)
        assert not thread.is_alive()
        assert backend.returncodes == {0: -9}
        assert gone([step_pid]) == []
    finally:
        if gone([step_pid], timeout=0):
            os.kill(step_pid, signal.SIGKILL)


# ---------------------------------------------------------------------------- reused worker interpreters
# a `python -m` package whose __main__ only imports when imported; run, it reports what it saw
REUSABLE_MAIN = (
    "import json, os, sys\n"
    "if __name__ == '__main__':\n"
    "    out, index = sys.argv[1], int(sys.argv[-1])\n"
    "    json.dump({'argv': sys.argv[1:], 'job': os.environ['MACE_JOB_ID'], 'plan_var': os.environ['PLAN_VAR'],\n"
    "               'leak': os.environ.get('LEAK'), 'parent': os.getppid(), 'pid': os.getpid(),\n"
    "               'own_session': os.getsid(0) == os.getpid(), 'stdin': sys.stdin.read()},\n"
    "              open(os.path.join(out, f'{index}.json'), 'w'))\n"
    "    os.environ['LEAK'] = 'set by the element before'\n"
    "    print('hello from', index)\n"
    "    if index == 1:\n"
    "        raise RuntimeError('boom')\n"
    "    if index == 3:\n"
    "        os.kill(os.getpid(), 9)\n"
    "    sys.exit(index)\n"
)


@pytest.fixture
def reusable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A package `reuseme` on PYTHONPATH, allowed to run in a worker interpreter."""
    pkg = tmp_path / "lib" / "reuseme"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "__main__.py").write_text(REUSABLE_MAIN)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path / "lib"), os.environ.get("PYTHONPATH")])))
    monkeypatch.setattr(worker_mod, "runner_module",
                        lambda command: "reuseme" if list(command[1:3]) == ["-m", "reuseme"] else None)
    return "reuseme"


def _module_request(tmp_path: Path, module: str, env: dict[str, str], n: int = 3, parallel: int = 2) -> ArrayRequest:
    out = tmp_path / "out"
    out.mkdir()
    return ArrayRequest(name="loc", indices=list(range(n)), max_parallel=parallel, command=[PY, "-m", module, str(out)],
                        env=env, work_dir=tmp_path / "logs", scheduler={"time": 1})


def test_elements_run_in_reused_workers_as_new_processes_would(tmp_path: Path, reusable: str) -> None:
    """Same argv, environment (nothing left over from the element before), own output file, empty
    stdin and exit codes (sys.exit(n); an exception -> 1 with its traceback in the output) as
    `python -m`, in at most max_parallel interpreters started once; one killed with its element is
    replaced and the elements after it still run."""
    backend = LocalBackend()
    job_id = backend.submit(_module_request(tmp_path, reusable, {"PLAN_VAR": "x y"}, n=6))
    seen = {i: json.loads((tmp_path / "out" / f"{i}.json").read_text()) for i in range(6)}
    assert backend.returncodes == {0: 0, 1: 1, 2: 2, 3: -9, 4: 4, 5: 5}
    for i, s in seen.items():
        assert s["argv"] == [str(tmp_path / "out"), "--index", str(i)]
        assert (s["job"], s["plan_var"], s["stdin"], s["leak"]) == (job_id, "x y", "", None)
        assert s["parent"] == os.getpid() and s["own_session"]
    workers = {s["pid"] for s in seen.values()}
    assert 2 <= len(workers) <= 3  # two slots, plus the one that replaced the killed worker
    logs = {i: (tmp_path / "logs" / f"{job_id}_{i}.out").read_text() for i in range(6)}
    assert logs[0] == "hello from 0\n" and "RuntimeError: boom" in logs[1] and logs[4] == "hello from 4\n"


def test_a_worker_that_cannot_start_says_why_in_workers_err(tmp_path: Path, reusable: str) -> None:
    """An interpreter that cannot run the worker (a plan's `python` without mace_hpc, say): every
    element fails with exit 1, and what the interpreter said is in the logs, not lost."""
    broken = tmp_path / "python"
    broken.write_text("#!/bin/sh\necho 'broken interpreter: no module named mace_hpc' >&2\nexit 1\n")
    broken.chmod(0o755)
    req = _module_request(tmp_path, reusable, {"PLAN_VAR": "v"})
    req.command[0] = str(broken)
    backend = LocalBackend()
    backend.submit(req)
    assert backend.returncodes == {0: 1, 1: 1, 2: 1}
    assert "broken interpreter" in (tmp_path / "logs" / "workers.err").read_text()


def test_an_idle_worker_that_died_is_replaced(tmp_path: Path, reusable: str) -> None:
    """A worker killed while idle (OOM killer, a kill) costs nothing: the next element gets a new one."""
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "logs").mkdir()
    env = {**os.environ, "PLAN_VAR": "v", "MACE_JOB_ID": "local-1"}
    command = [PY, "-m", reusable, str(out)]
    key = worker_mod.worker_key(command, env)
    pool = worker_mod.WorkerPool(1)
    try:
        first = pool.run(key, command, [str(out), "--index", "0"], env, tmp_path / "logs" / "0.out")
        assert first.wait(30) == 0
        pool.release(first)
        os.kill(first.pid, signal.SIGKILL)
        first.worker.proc.wait(10)
        second = pool.run(key, command, [str(out), "--index", "2"], env, tmp_path / "logs" / "2.out")
        assert second.wait(30) == 2 and second.pid != first.pid
    finally:
        pool.close()
    assert json.loads((out / "2.json").read_text())["pid"] == second.pid


def test_setup_lines_or_other_modules_get_a_new_process_each(tmp_path: Path, reusable: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Setup lines must run before each element (as a job script runs them): no worker reuse."""
    req = _module_request(tmp_path, reusable, {"PLAN_VAR": "v"})
    req.scheduler["setup"] = ["export PLAN_VAR=from-setup"]
    backend = LocalBackend()
    backend.submit(req)
    seen = [json.loads((tmp_path / "out" / f"{i}.json").read_text()) for i in range(3)]
    assert {s["plan_var"] for s in seen} == {"from-setup"} and len({s["pid"] for s in seen}) == 3
    assert worker_mod.worker_key(["python3", "-m", "other.module"], {}) is None
    assert worker_mod.worker_key([PY, "script.py"], {}) is None


def test_the_element_runner_runs_in_workers_in_either_of_its_start_forms() -> None:
    """What mace-submit records (`python -S .../element/start.py`, or `-m` for a site's own
    interpreter) is what the pool reuses workers for; anything else is a new process."""
    from mace_hpc.records.runner import runner_argv
    from mace_hpc.submission.submit import element_command

    for command in (element_command(Path("/s/manifest.json")), [*runner_argv("/opt/py/bin/python3"), "m.json"]):
        assert worker_mod.runner_module(command) == "mace_hpc.element"
        assert worker_mod.worker_key(command, {}) is not None
    assert worker_mod.worker_key([PY, "-S", "/elsewhere/start.py", "m.json"], {}) is None


# ---------------------------------------------------------------------------- render, query, cancel
def test_render_shows_the_environment_and_the_first_commands(tmp_path: Path) -> None:
    command = [PY, "-m", "mace_hpc.element", "/sub/manifest.json"]
    req = ArrayRequest(name="r", indices=[0, 1, 2, 3, 4], max_parallel=2, command=command,
                       env={"MACE_MANIFEST": "/sub/manifest.json", "PLAN_VAR": "a b"}, scheduler={"time": 30})
    text, argv = LocalBackend().render(req)
    assert text.splitlines() == [
        "# local backend: each element runs as a process on this machine",
        "# at most 2 at once, time limit 30 min",
        "export MACE_MANIFEST=/sub/manifest.json",
        "export PLAN_VAR='a b'",
        *(shlex.join([*command, "--index", str(i)]) for i in range(3)),
        "# … and 2 more elements",
    ]
    assert argv == [*command, "--index", "N"]
    single, _ = LocalBackend().render(ArrayRequest(name="one", indices=None, max_parallel=1, command=["x"]))
    assert single.splitlines()[-1] == "x --index 0"


def test_query_knows_nothing_the_state_files_are_the_truth() -> None:
    assert LocalBackend().query(["local-1-2", "123"], offsets={"local-1-2": 5}) == {}


def test_cancel_signals_only_mace_processes(tmp_path: Path) -> None:
    """A recorded pid may have been reused: only a process whose command line is a mace one is stopped."""
    ours = subprocess.Popen(["sh", "-c", "sleep 60; :", "mace-submit"], start_new_session=True)
    other = subprocess.Popen(["sh", "-c", "sleep 60; :", "unrelated"], start_new_session=True)
    try:
        LocalBackend().cancel([f"local-{ours.pid}-1", f"local-{other.pid}-1", "12345", "local-999999999-1"])
        assert ours.wait(10) == -15
        time.sleep(0.2)
        assert other.poll() is None
    finally:
        for proc in (ours, other):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def test_a_packed_task_exit_code_is_each_of_its_elements(tmp_path: Path) -> None:
    """Exit codes are kept by element (the local backstop looks elements up): a packed task's
    code is its elements', never another element's whose index equals the task id."""
    req = ArrayRequest(name="pk", indices=[0, 1, 2, 3], max_parallel=2, pack=2, work_dir=tmp_path / "logs",
                       command=[PY, "-c", "import sys; sys.exit(5 if sys.argv[-1] == '1' else 0)"],
                       scheduler={"time": 1})
    backend = LocalBackend()
    backend.submit(req)
    assert backend.returncodes == {0: 0, 1: 0, 2: 5, 3: 5}
