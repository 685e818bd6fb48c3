"""The embedded default backend: array elements as local processes, at most `max_parallel` at once.

submitit's LocalExecutor starts every job at once and kills after its own timeout, so (as
DESIGN.md allows) this is a bounded process pool that runs the same element runner command a
cluster would, with the same environment, time-limit signal and epilogue.

`resources.setup` / `scheduler.setup` lines run here too, as in a cluster job script: bash runs
them and then `exec`s the element runner, so `module load`, a venv activation or an exported
variable reaches every step. A plan tried locally (on a login or interactive node) then behaves
as it will on the cluster, instead of failing later with "program not found". Without setup
lines no shell is involved at all.

The element runner (`python -m mace_hpc.element`, the command mace-hpc builds) runs in reused
worker interpreters (worker.py) when no setup lines must run first: each element then skips a new
interpreter and its imports (~70 ms of a ~100 ms runner), which decides the makespan of short
elements, and still gets what a new process would (environment, argv, stdin, output file).
"""

from __future__ import annotations

import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import psutil

from ...config import effective_signal_margin
from ...errors import InputError
from ...records import env as env_names
from ...records.states import State
from ..base import ArrayRequest, check_script_value
from .states import LOCAL_STATES
from .worker import WorkerPool, WorkerRun, worker_key

ProgressFn = Callable[[int, int, int, int], None]  # done, total, failed, running
#: called on every turn of the loop with the (element, exit code) pairs that ended since (maybe none),
#: and once more with `final=True`: mace-submit finalizes them in batches (submission/local_epilogue.py)
EndedFn = Callable[[list[tuple[int, int]], bool], None]
_LOCAL_JOB = re.compile(r"^local-(\d+)-(\d+)(?:-\d+)?$")

class LocalCancelled(KeyboardInterrupt):
    """SIGTERM to the submitting process (`mace cancel` of a local run): stop every element."""


def _raise_cancelled(signum: int, frame: Any) -> None:
    raise LocalCancelled()


class LocalBackend:
    """Runs the array in the foreground; `submit` returns when every element has finished."""

    name = "local"
    elementwise_dependencies = False  # stages wait for whole arrays (or, locally, our own scheduler)

    def __init__(self, progress: ProgressFn | None = None, poll_interval: float = 0.02,
                 on_ended: EndedFn | None = None) -> None:
        self.progress = progress
        self.on_ended = on_ended
        self._defer = False  # this run's runners leave the epilogue to `on_ended`
        self.poll_interval = poll_interval
        self.returncodes: dict[int, int] = {}
        self._pool: WorkerPool | None = None

    def _argv(self, req: ArrayRequest, index: int | str) -> list[str]:
        """The runner for element `index` (`req.indices` are element indices: no offset to add;
        packed: task `index`, its elements one after another), behind the plan's `setup` lines
        when it has any, as a cluster job script runs them."""
        runner = [*req.command, *_unit_args(req, index)]
        setup = setup_lines(req.scheduler)
        if not setup:
            return runner
        return [_bash(), "-c", "\n".join([*setup, 'exec "$@"']), "mace-element", *runner]

    def render(self, req: ArrayRequest) -> tuple[str, list[str]]:
        tasks = _units(req)
        setup = setup_lines(req.scheduler)
        lines = [
            "# local backend: each element runs as a process on this machine" if req.pack <= 1 else
            f"# local backend: each task runs {req.pack} elements "
            f"{f'{req.lanes} at once' if req.lanes > 1 else 'one after another'}, as a process on this machine",
            f"# at most {req.max_parallel} at once, time limit {req.scheduler.get('time')} min",
        ]
        if setup:
            lines += ["# setup: bash runs these before each element, as a cluster job script does", *setup]
        lines += [
            *(f"export {k}={shlex.quote(v)}" for k, v in sorted(req.env.items())),
            *(shlex.join([*req.command, *_unit_args(req, t + req.index_offset)])
              + (f"  # elements {','.join(map(str, req.elements_of(t)))}" if req.pack > 1 else "")
              for t in tasks[:3]),
        ]
        if len(tasks) > 3:
            lines.append(f"# … and {len(tasks) - 3} more {'tasks' if req.pack > 1 else 'elements'}")
        return "\n".join(lines) + "\n", self._argv(req, "N")  # once per element (task), N = its index

    def submit(self, req: ArrayRequest) -> str:
        return self.submit_all([req], lambda r, j: None)[0]

    def submit_all(
        self, requests: Sequence[ArrayRequest], on_submitted: Callable[[ArrayRequest, str], None]
    ) -> list[str]:
        """Run every request's elements here; returns when all have ended.

        One scheduler over (request, element) pairs: element i of a stage starts as soon as
        element i of each stage it needs has ended (its runner skips it when that did not
        complete), at most `max_parallel` at once and at most this machine's cores in use
        (a stage's `cpus`, capped at the cores so a large stage still runs, alone).
        """
        stamp = f"local-{os.getpid()}-{int(time.time())}"
        ids = [stamp if len(requests) == 1 else f"{stamp}-{k}" for k in range(len(requests))]
        for req, job_id in zip(requests, ids, strict=True):
            req.work_dir.mkdir(parents=True, exist_ok=True)
            on_submitted(req, job_id)
        cores = max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
        slots = max(1, max(int(r.max_parallel or 1) for r in requests))
        tasks = [(k, t) for k, req in enumerate(requests) for t in _units(req)]
        members = [set(_units(req)) for req in requests]
        waits = {(k, t): [(u, t) for u in requests[k].after if t in members[u]] for k, t in tasks}
        # a downstream stage that became ready goes first: chains finish early, as on a cluster
        pending = sorted(tasks, key=lambda kt: (-len(requests[kt[0]].after), kt[1], kt[0]))
        ended: set[tuple[int, int]] = set()
        running: dict[tuple[int, int], tuple[Any, float, bool, int]] = {}
        count = _ElementCount(requests, tasks, self.progress)
        previous = None
        self._pool = WorkerPool(slots)
        # one array, no stages: an element's end is its task's end, so mace-submit may finalize it
        self._defer = self.on_ended is not None and len(requests) == 1 and not requests[0].after
        ended_now: list[tuple[int, int]] = []
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, _raise_cancelled)
        try:
            while pending or running:
                in_use = sum(c for *_, c in running.values())
                for key in list(pending) if len(running) < slots else ():
                    if len(running) >= slots:
                        break
                    req = requests[key[0]]
                    cpus = min(int(req.scheduler.get("cpus") or 1), cores)
                    if in_use + cpus > cores and running or not all(w in ended for w in waits[key]):
                        continue
                    pending.remove(key)
                    running[key] = (self._start(req, ids[key[0]], key[1]), time.monotonic(), False, cpus)
                    in_use += cpus
                    count.report(running)
                if self._defer:  # after the next elements started: the slots do not wait for the merge
                    self.on_ended(ended_now, False)  # type: ignore[misc]
                    ended_now = []
                _wait_any([p for p, *_ in running.values()], self.poll_interval)
                now = time.monotonic()
                for key, (proc, started, signalled, cpus) in list(running.items()):
                    rc = proc.poll()
                    if rc is None:
                        limit_s, margin = _limits(requests[key[0]])
                        elapsed = now - started
                        if not signalled and elapsed >= limit_s - margin:
                            _signal(proc, signal.SIGUSR2)
                            running[key] = (proc, started, True, cpus)
                        elif elapsed >= limit_s + 10:
                            _signal(proc, signal.SIGKILL, group=True)
                        continue
                    del running[key]
                    self._release(proc)
                    ended.add(key)
                    members = _members(requests[key[0]], key[1])
                    ended_now += [(e, rc) for e in members]
                    for e in members:  # by element (a packed task's code is each of its elements'), worst kept
                        self.returncodes[e] = rc if rc or e not in self.returncodes else self.returncodes[e]
                    count.ended(key, rc)
                    count.report(running)
        except BaseException:
            for proc, *_ in running.values():
                _signal(proc, signal.SIGTERM)
            for proc, *_ in running.values():
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    _signal(proc, signal.SIGKILL, group=True)
            for key, (proc, *_) in running.items():  # stopped now: finalized below with what ended before
                rc = proc.poll()
                ended_now += [(e, -9 if rc is None else rc) for e in _members(requests[key[0]], key[1])]
            raise
        finally:
            self._pool.close()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            if self._defer:  # also after a cancel: what ended is finalized, nothing is dropped
                self.on_ended(ended_now, True)  # type: ignore[misc]
        return ids

    def _release(self, proc: Any) -> None:
        if isinstance(proc, WorkerRun) and self._pool is not None:
            self._pool.release(proc)

    def _start(self, req: ArrayRequest, job_id: str, task: int) -> Any:
        """Element `task` of `req`: in a reused worker when the runner is a reusable `python -m`
        module and no setup lines must run first (module docstring), else a new process."""
        env = {**os.environ, **req.env, env_names.JOB_ID: job_id}
        out = req.work_dir / f"{job_id}_{task}.out"
        deferred = ["--no-epilogue"] if self._defer else []
        key = None if setup_lines(req.scheduler) or self._pool is None else worker_key(req.command, env)
        if key is not None:
            argv = [*req.command[3:], *_unit_args(req, task), *deferred]
            return self._pool.run(key, req.command, argv, env, out)  # type: ignore[union-attr]
        with open(out, "wb") as f:
            return subprocess.Popen(
                [*self._argv(req, task), *deferred], env=env, stdout=f, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )

    def element_job_id(self, job_id: str, task_id: int) -> str | None:
        return None  # a skipped element's runner reads SKIPPED and ends at once

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


class _ElementCount:
    """Progress in elements, as the CLI's bar says, though the pool runs tasks: a packed task is
    several elements, and a staged element is one task per stage (done when its last one ends)."""

    def __init__(self, requests: Sequence[ArrayRequest], tasks: list[tuple[int, int]],
                 progress: ProgressFn | None) -> None:
        self._requests = requests
        self._progress = progress
        self._left: dict[int, int] = {}  # element -> its tasks not yet ended
        for k, t in tasks:
            for e in _members(requests[k], t):
                self._left[e] = self._left.get(e, 0) + 1
        self._failed: set[int] = set()
        self._done = 0

    def ended(self, key: tuple[int, int], rc: int) -> None:
        for e in _members(self._requests[key[0]], key[1]):
            self._left[e] -= 1
            self._done += self._left[e] == 0
            if rc:
                self._failed.add(e)

    def report(self, running: Mapping[tuple[int, int], Any]) -> None:
        if self._progress:
            busy = {e for k, t in running for e in _members(self._requests[k], t)}
            self._progress(self._done, len(self._left), len(self._failed), len(busy))


def _units(req: ArrayRequest) -> list[int]:
    """What the local pool runs one process each for: element indices, or a packed array's tasks."""
    if req.pack > 1:
        return req.task_ids()
    return list(req.indices) if req.indices is not None else [0]


def _members(req: ArrayRequest, unit: int) -> list[int]:
    """The elements one unit of the pool ran: a packed task's, else the element itself."""
    return req.elements_of(unit) if req.pack > 1 else [unit]


def _unit_args(req: ArrayRequest, unit: int | str) -> list[str]:
    return ["--task" if req.pack > 1 else "--index", str(unit)]


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


def _limits(req: ArrayRequest) -> tuple[float, float]:
    """(time limit, signal margin) in seconds of a request's elements."""
    limit_s = float(req.scheduler.get("time") or 60) * 60
    return limit_s, float(effective_signal_margin(req.scheduler))


def _wait_any(procs: list[Any], timeout: float) -> None:
    """Sleep until one of `procs` ends or `timeout` passes: a worker's answer pipe, or on Linux a
    pidfd per process, wakes the loop the moment an element ends, instead of a poll interval later."""
    owned: list[int] = []
    try:
        poller = select.poll()
        for proc in procs:
            if isinstance(proc, WorkerRun):
                poller.register(proc.fileno(), select.POLLIN)
            else:
                owned.append(os.pidfd_open(proc.pid))
                poller.register(owned[-1], select.POLLIN)
        if procs:
            poller.poll(timeout * 1000)
            return
    except (AttributeError, OSError):  # no pidfd or poll here (not Linux, old kernel): sleep
        pass
    finally:
        for fd in owned:
            os.close(fd)
    time.sleep(timeout)
