"""The embedded default backend: array elements as local processes, at most `max_parallel` at once.

submitit's LocalExecutor starts every job at once and kills after its own timeout, so (as
DESIGN.md allows) this is a bounded process pool that runs the same element runner command a
cluster would, with the same environment, time-limit signal and epilogue.

`resources.setup` / `scheduler.setup` lines run here too, as in a cluster job script: bash runs
them and then `exec`s the element runner, so `module load`, a venv activation or an exported
variable reaches every step. A plan tried locally (on a login or interactive node) then behaves
as it will on the cluster, instead of failing later with "program not found". Without setup
lines no shell is involved at all.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import psutil

from ...errors import InputError
from ...records import env as env_names
from ...records.states import State
from ..base import ArrayRequest, check_script_value
from .states import LOCAL_STATES

ProgressFn = Callable[[int, int, int], None]
_LOCAL_JOB = re.compile(r"^local-(\d+)-(\d+)$")


class LocalCancelled(KeyboardInterrupt):
    """SIGTERM to the submitting process (`mace cancel` of a local run): stop every element."""


def _raise_cancelled(signum: int, frame: Any) -> None:
    raise LocalCancelled()


class LocalBackend:
    """Runs the array in the foreground; `submit` returns when every element has finished."""

    name = "local"

    def __init__(self, progress: ProgressFn | None = None, poll_interval: float = 0.02) -> None:
        self.progress = progress
        self.poll_interval = poll_interval
        self.returncodes: dict[int, int] = {}

    def _argv(self, req: ArrayRequest, index: int | str) -> list[str]:
        """The runner for element `index` (`req.indices` are element indices: no offset to add),
        behind the plan's `setup` lines when it has any, as a cluster job script runs them."""
        runner = [*req.command, "--index", str(index)]
        setup = setup_lines(req.scheduler)
        if not setup:
            return runner
        return [_bash(), "-c", "\n".join([*setup, 'exec "$@"']), "mace-element", *runner]

    def render(self, req: ArrayRequest) -> tuple[str, list[str]]:
        tasks = req.indices if req.indices is not None else [0]
        setup = setup_lines(req.scheduler)
        lines = [
            "# local backend: each element runs as a process on this machine",
            f"# at most {req.max_parallel} at once, time limit {req.scheduler.get('time')} min",
        ]
        if setup:
            lines += ["# setup: bash runs these before each element, as a cluster job script does", *setup]
        lines += [
            *(f"export {k}={shlex.quote(v)}" for k, v in sorted(req.env.items())),
            *(shlex.join([*req.command, "--index", str(t + req.index_offset)]) for t in tasks[:3]),
        ]
        if len(tasks) > 3:
            lines.append(f"# … and {len(tasks) - 3} more elements")
        return "\n".join(lines) + "\n", self._argv(req, "N")  # once per element, N = its index

    def submit(self, req: ArrayRequest) -> str:
        job_id = f"local-{os.getpid()}-{int(time.time())}"
        tasks = list(req.indices) if req.indices is not None else [0]
        limit_s = float(req.scheduler.get("time") or 60) * 60
        margin = min(float(req.scheduler.get("signal_margin") or 0), limit_s / 2)
        env = {**os.environ, **req.env, env_names.JOB_ID: job_id}
        req.work_dir.mkdir(parents=True, exist_ok=True)
        running: dict[int, tuple[subprocess.Popen[bytes], float, bool]] = {}
        pending = list(reversed(tasks))
        done = failed = 0
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, _raise_cancelled)
        try:
            while pending or running:
                while pending and len(running) < max(1, req.max_parallel):
                    task = pending.pop()
                    with open(req.work_dir / f"{job_id}_{task}.out", "wb") as out:
                        proc = subprocess.Popen(
                            self._argv(req, task), env=env, stdout=out, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True,
                        )
                    running[task] = (proc, time.monotonic(), False)
                time.sleep(self.poll_interval)
                now = time.monotonic()
                for task, (proc, started, signalled) in list(running.items()):
                    rc = proc.poll()
                    if rc is None:
                        elapsed = now - started
                        if not signalled and elapsed >= limit_s - margin:
                            _signal(proc, signal.SIGUSR2)
                            running[task] = (proc, started, True)
                        elif elapsed >= limit_s + 10:
                            _signal(proc, signal.SIGKILL, group=True)
                        continue
                    del running[task]
                    self.returncodes[task] = rc
                    done += 1
                    failed += rc != 0
                    if self.progress:
                        self.progress(done, len(tasks), failed)
        except BaseException:
            for proc, _, _ in running.values():
                _signal(proc, signal.SIGTERM)
            for proc, _, _ in running.values():
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    _signal(proc, signal.SIGKILL, group=True)
            raise
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        return job_id

    def query(self, job_ids: list[str], offsets: Mapping[str, int] | None = None) -> dict[int, State]:
        return dict(LOCAL_STATES)  # local elements are known only through their state files

    def cancel(self, job_ids: list[str]) -> None:
        """SIGTERM the `mace-submit` process running a local array (it stops its elements).

        Only a live process whose command line is a mace one is signalled: a recycled pid is left
        alone, and so is this process (its local array has already run when it cancels a job id).
        """
        for job_id in job_ids:
            m = _LOCAL_JOB.fullmatch(str(job_id))
            if not m or int(m.group(1)) == os.getpid():
                continue
            try:
                proc = psutil.Process(int(m.group(1)))
                if any("mace" in part for part in proc.cmdline()):
                    proc.terminate()
            except Exception:  # gone already, or not ours to signal
                continue

    def max_array_size(self) -> int:
        return 1 << 31


def setup_lines(scheduler: dict[str, Any]) -> list[str]:
    """The setup shell lines of a request, checked like a job script's (no newline, CR or NUL)."""
    return [check_script_value(line, f"scheduler.setup[{i}]") for i, line in enumerate(scheduler.get("setup") or [])]


def _bash() -> str:
    bash = shutil.which("bash")
    if bash is None:
        raise InputError("resources.setup: the local backend runs setup lines with bash, which is not on PATH")
    return bash


def _signal(proc: subprocess.Popen[bytes], sig: int, group: bool = False) -> None:
    """Signal the element runner; `group`: also every process it started, found through psutil,
    because steps run in sessions of their own (a hung runner must not leave them running)."""
    targets = [proc.pid]
    if group:
        try:
            targets += [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        except psutil.Error:
            pass
    for pid in targets:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

