"""Lanes: a packed task with cpus > 1 runs that many of its elements at once (records/pack.py).

The task's runner starts the other lanes as processes of their own (`python -m mace_hpc.element
MANIFEST --task T --lane J --claims DIR`: this interpreter, this environment, its process group)
and runs lane 0 itself. Every lane goes through the task's elements in order and runs the next
one no lane has taken yet: it takes it by creating the element's file in the claims directory
(O_EXCL: exactly one lane gets it) and writes the element's exit code there when it ends. So a
slow element holds up no other element (a fixed share, elements[j::C], would keep the ones behind
it waiting while other lanes idle), and still no lane runs longer than ceil(K / lanes) element
budgets (records/pack.lane_slots), the task's time limit.

Why processes and not threads: a runner runs one step at a time (the running step, the time-limit
signal that stops it, its CPU and memory accounting are per process), so a lane that is a runner
keeps everything an element has: own context, state, time budget (SIGALRM), retries.

The task's time-limit or cancel signal reaches the runner only (SLURM `--signal=B:USR2`, the local
backend): `forward` sends it on to every lane, each stops its running element and takes no new
one, so the elements no lane has taken stay PENDING.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from ..records.runner import runner_argv

# the lanes this runner started (only the runner of a laned task has any)
_procs: list[subprocess.Popen[bytes]] = []
# exit codes of lanes that did not end cleanly (killed by a signal, or an element of theirs raised):
# their elements may be left RUNNING (run.py `mark_ended`)
unclean: list[int] = []
THREADS_VAR = "OMP_NUM_THREADS"


def forward(signum: int) -> None:
    """Send the task's signal on to every lane still running (called from the signal handler)."""
    for proc in _procs:
        if proc.returncode is None:
            try:
                os.kill(proc.pid, signum)
            except (ProcessLookupError, PermissionError):
                pass


class Claims:
    """Which lane runs which element, and how each ended: one file per element taken."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def take(self, index: int) -> bool:
        """Take element `index` for this lane; False when another lane has it."""
        try:
            os.close(os.open(self.directory / str(index), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileExistsError:
            return False
        return True

    def done(self, index: int, code: int) -> None:
        # read only after every lane has ended: no reader can see it half-written
        (self.directory / str(index)).write_text(str(int(code)))

    def codes(self, elements: Sequence[int]) -> list[int]:
        """The exit codes of the elements taken, in element order; one taken but without an end
        (its lane was killed) counts as failed."""
        out = []
        for index in elements:
            path = self.directory / str(index)
            if path.exists():
                text = path.read_text().strip()
                if not text:
                    print(f"mace run-element: element {index}: its lane ended before the element did",
                          file=sys.stderr)
                out.append(int(text) if text.lstrip("-").isdigit() else 1)
        return out


def lane_argv(manifest: str | os.PathLike[str], task: int, lane: int, claims: str, stage: str | None,
              run_epilogue: bool) -> list[str]:
    """The command of lane `lane` of packed task `task`: this interpreter, the runner module."""
    return [*runner_argv(), str(manifest), "--task", str(task), "--lane", str(lane),
            "--claims", claims, *(["--stage", stage] if stage else []), *([] if run_epilogue else ["--no-epilogue"])]


@contextmanager
def team(argv_of: Callable[[int, str], list[str]], count: int, cpus: str | None) -> Iterator[Claims]:
    """Start lanes 1..count-1 (`argv_of(lane, claims directory)`); the caller runs lane 0 with
    the claims yielded, then `wait()`s. Each element's steps see OMP_NUM_THREADS = their share of
    the cpus (`cpus`, MACE_CPUS) unless the environment sets it: `count` lanes of numerical code
    each starting a thread per core would share every core `count` times over."""
    import tempfile  # lazy: only a laned pack shares a directory; elements start without it

    saved = os.environ.get(THREADS_VAR)
    if saved is None and cpus:
        os.environ[THREADS_VAR] = cpus
    try:
        with tempfile.TemporaryDirectory(prefix="mace-lanes-") as directory:
            for lane in range(1, count):
                try:
                    _procs.append(subprocess.Popen(argv_of(lane, directory), stdin=subprocess.DEVNULL))
                except OSError as exc:  # the lanes started (at least lane 0) take every element
                    print(f"mace run-element: lane {lane} not started: {exc}", file=sys.stderr)
            try:
                yield Claims(directory)
            finally:
                wait()
    finally:
        if saved is None:
            os.environ.pop(THREADS_VAR, None)


def wait() -> list[int]:
    """Wait for every lane this runner started (a signal meanwhile is still forwarded); their exit codes."""
    codes = [proc.wait() for proc in _procs]
    _procs.clear()
    unclean.extend(c for c in codes if c != 0)
    return codes
