"""Helpers for the submission/status tests: plan files and a scheduler backend we control.

`FakeBackend` renders real SLURM job scripts (pure) but keeps submissions, queries and cancels in
memory, so the pipeline's bookkeeping (chunks, offsets, records, one query per submission,
refusal cleanup) is tested without a cluster; tests/test_submission_slurm_e2e.py does the same for real.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from mace_hpc.errors import SchedulerError
from mace_hpc.schedulers.base import ArrayRequest, submit_each

PY = sys.executable

# A step that records what the element saw: its MACE_* and test variables, cwd and argv.
ENV_STEP = [
    PY,
    "-c",
    "import json, os, sys; json.dump({'env': {k: v for k, v in os.environ.items() "
    "if k.startswith(('MACE_', 'PLAN_', 'ELEM_', 'SLURM_ARRAY'))}, 'cwd': os.getcwd(), 'argv': sys.argv[1:]}, "
    "open('seen.json', 'w'))",
    "{context_dir}",
]


def write_plan(directory: Path, data: dict[str, Any], name: str = "plan.json") -> Path:
    path = Path(directory) / name
    path.write_text(json.dumps(data))
    return path


def simple_plan(name: str, n: int, **extra: Any) -> dict[str, Any]:
    """`n` elements e0..e{n-1}, each one quick command step."""
    return {
        "name": name,
        "isolation_mode": "isolated",
        "elements": [{"id": f"e{i}", "steps": [{"name": "s", "command": ["true"]}]} for i in range(n)],
        **extra,
    }


def marker_plan(name: str, marker: Path) -> dict[str, Any]:
    """One isolated element `e0` (material `m`) whose one step appends 'x' to `marker`, so a test
    can tell whether (and how often) the step ran."""
    return {"name": name, "isolation_mode": "isolated", "elements": [
        {"id": "e0", "materials": [{"material_id": "m", "formula": "Al"}],
         "steps": [{"name": "s", "command": [PY, "-c", f"open({str(marker)!r}, 'a').write('x')"]}]}]}


def seen(context_dir: str | Path, step: str = "probe") -> dict[str, Any]:
    return json.loads((Path(context_dir) / "calculations" / step / "seen.json").read_text())


def context_dirs(scratch_root: Path) -> list[str]:
    """Element context directories under a scratch root (not .submissions / .registry)."""
    if not scratch_root.is_dir():
        return []
    return sorted(p.name for p in scratch_root.iterdir() if not p.name.startswith("."))


class FakeBackend:
    """A scheduler in memory: job ids from 1001, states set by the test, calls recorded."""

    name = "slurm"

    def __init__(self, max_size: int = 1001, refuse_at: int | None = None) -> None:
        self.max_size = max_size
        self.refuse_at = refuse_at  # the n-th submit call (0-based) raises SchedulerError
        self.submitted: list[ArrayRequest] = []
        self.jobs: dict[str, ArrayRequest] = {}
        self.states: dict[str, dict[int, str]] = {}  # job id -> task id -> normalized state
        self.queries: list[list[str]] = []
        self.cancelled: list[list[str]] = []
        self.calls = 0

    def render(self, req: ArrayRequest) -> tuple[str, list[str]]:
        from mace_hpc.schedulers.slurm.backend import SlurmBackend

        return SlurmBackend(max_array_size=self.max_size).render(req)

    def submit(self, req: ArrayRequest) -> str:
        self.render(req)
        n = self.calls
        self.calls += 1
        if self.refuse_at is not None and n == self.refuse_at:
            raise SchedulerError("sbatch refused t: sbatch: error: invalid partition specified: nope")
        self.submitted.append(req)
        job_id = str(1001 + n)
        self.jobs[job_id] = req
        return job_id

    def submit_all(self, requests, on_submitted):
        return submit_each(self, requests, on_submitted)

    def element_job_id(self, job_id: str, task_id: int) -> str | None:
        return f"{job_id}_{task_id}"

    def set_state(self, job_id: str, state: str, tasks: list[int] | None = None) -> None:
        req = self.jobs[job_id]
        for t in req.task_ids() if tasks is None else tasks:
            self.states.setdefault(job_id, {})[t] = state

    def query(self, job_ids: list[str], offsets: dict[str, int] | None = None) -> dict[int, str]:
        self.queries.append(list(job_ids))
        out: dict[int, str] = {}
        for jid in job_ids:
            offset = offsets[jid] if offsets and jid in offsets else self.jobs[jid].index_offset
            for task, state in self.states.get(jid, {}).items():
                out[task + offset] = state
        return out

    def cancel(self, job_ids: list[str]) -> None:
        self.cancelled.append(list(job_ids))

    def max_array_size(self) -> int:
        return self.max_size

    def array_requests(self) -> list[ArrayRequest]:
        return [r for r in self.submitted if r.indices is not None]


def install_fake_backend(monkeypatch: pytest.MonkeyPatch) -> FakeBackend:
    """Every `get_backend("slurm")` of the submission code returns this one fake (for a fixture)."""
    fake = FakeBackend()
    from mace_hpc.schedulers import base as backend_mod
    from mace_hpc.submission import control, submit

    real = backend_mod.get_backend

    def get(name: str, **opts: Any) -> Any:
        return fake if name == "slurm" else real(name, **opts)

    monkeypatch.setattr(submit, "get_backend", get)
    monkeypatch.setattr(control, "get_backend", get)
    return fake


def submitted_to_fake(tmp_path: Path, name: str, n: int, **kw: Any) -> list[str]:
    """`simple_plan(name, n)` submitted to the fake SLURM backend (the `fake_backend` fixture); its job ids."""
    from mace_hpc.submission.submit import submit_plan

    return submit_plan(write_plan(tmp_path, simple_plan(name, n), f"{name}.json"), backend="slurm", **kw).job_ids


def set_state_file(scratch: Path, workflow_id: str, state: str, **kw: Any) -> None:
    """Write an element's state file as its runner/epilogue would (`run_state` defaults to `state`)."""
    from mace_hpc.records import write_state

    write_state(Path(scratch) / workflow_id, state=state, run_state=kw.pop("run_state", state), **kw)


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run `mace ARGV...` in-process: (exit code, stdout, stderr)."""
    from mace_hpc.cli.main import run

    rc = run(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def signal_when_started(argv: list[str], flag: Path, sig: int, env: dict[str, str] | None = None) -> int:
    """Start a runner, wait for `flag` (its step has begun), send `sig`; its exit code.

    The waits are safety nets against hangs, not timing assertions."""
    import os
    import subprocess
    import time

    proc = subprocess.Popen(argv, env={**os.environ, **(env or {})})
    try:
        for _ in range(600):
            if flag.exists():
                break
            time.sleep(0.05)
        proc.send_signal(sig)
        return proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()


def gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    """Wait until every pid has exited (a zombie counts: its parent was killed and nobody reaps
    it here); the pids still running after `timeout` seconds."""
    import time

    import psutil

    def running(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    end = time.monotonic() + timeout
    while True:
        alive = [pid for pid in pids if running(pid)]
        if not alive or time.monotonic() > end:
            return alive
        time.sleep(0.05)
