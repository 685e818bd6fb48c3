"""Reused interpreters for the local backend: `python -m MODULE ARGS` per element, without a new
Python per element.

A short element's makespan is decided by what surrounds its step: a new interpreter and the
runner's imports cost ~70 ms of a ~100 ms runner. So the pool keeps up to `max_parallel` worker
processes (`python -m mace_hpc.schedulers.local.worker`, started like the runner would be: same
interpreter, the request's environment, its own session) and hands each one element at a time over
a pipe. The worker runs the module's `__main__` with `runpy`, as `python -m` would, in the
element's own environment, `sys.argv`, empty stdin and output file, and answers its exit code.

Workers are started, never forked from `mace-submit` (a fork of a process that imported numpy or
holds locks can hang, which an earlier fork-per-element mode saw once in CI). A worker dies with
its element only when the element is killed (time limit + 10 s, SIGKILL); the pool starts another.
"""

from __future__ import annotations

import json
import os
import runpy
import select
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from ...records.runner import runner_module

WORKER_MODULE = "mace_hpc.schedulers.local.worker"


# ---------------------------------------------------------------------------- worker side
def serve() -> int:
    """Run elements from stdin (one JSON line each: module, argv, env, out) until EOF; after each,
    its exit code on the original stdout (fds 0 and 1 become the element's /dev/null and output)."""
    requests = os.fdopen(os.dup(0), "rb")
    answers = os.fdopen(os.dup(1), "wb", buffering=0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    base_env = dict(os.environ)
    _idle()
    for line in requests:
        job = json.loads(line)
        code = _run(job["module"], job["argv"], job["env"], job["out"], devnull)
        os.environ.clear()
        os.environ.update(base_env)
        _idle()
        answers.write(b"%d\n" % code)
    return 0


def _idle() -> None:
    """Between elements: a late time-limit signal is ignored, a cancel (SIGTERM) ends the worker."""
    for sig in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _run(module: str, argv: list[str], env: Mapping[str, str], out: str, devnull: int) -> int:
    """One element, as `python -m module argv` started as a new process would see it."""
    code = 1
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.environ.clear()
    os.environ.update(env)
    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP, signal.SIGALRM):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115 - fresh streams on fds 0-2, as a new interpreter has
    sys.stdout = open(1, "w", closefd=False, buffering=1 if env.get("PYTHONUNBUFFERED") else -1)  # noqa: SIM115
    sys.stderr = open(2, "w", closefd=False, buffering=1, errors="backslashreplace")  # noqa: SIM115
    sys.argv = [module, *argv]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:  # noqa: BLE001 - reported in the element's output, as a new interpreter would
        traceback.print_exc()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
    return code


# ---------------------------------------------------------------------------- pool side
class Worker:
    """A started worker process; runs one element at a time."""

    def __init__(self, python: str, env: Mapping[str, str], errors: Path) -> None:
        # what the worker itself says (an interpreter that cannot import mace_hpc, say) goes to
        # `errors`, next to the elements' output files; each element's own output goes to its file
        with open(errors, "ab") as err:
            self.proc = subprocess.Popen(
                [python, "-m", WORKER_MODULE], env=dict(env), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=err, start_new_session=True,
            )
        self.pid = self.proc.pid
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._in: BinaryIO = self.proc.stdin
        self._out = self.proc.stdout.fileno()
        os.set_blocking(self._out, False)
        self._buffer = b""
        self.key: tuple[Any, ...] = ()

    def fileno(self) -> int:
        """Readable when the element ended (its exit code) or the worker died (end of file)."""
        return self._out

    def send(self, module: str, argv: Sequence[str], env: Mapping[str, str], out: Path) -> None:
        line = json.dumps({"module": module, "argv": list(argv), "env": dict(env), "out": str(out)})
        self._in.write(line.encode() + b"\n")
        self._in.flush()

    def answer(self) -> int | None:
        """The running element's exit code once it ended: what the worker answered, or the worker's
        own end (negative: the signal that killed it) when it died with the element."""
        eof = False
        try:
            while b"\n" not in self._buffer:
                data = os.read(self._out, 4096)
                if not data:
                    eof = True
                    break
                self._buffer += data
        except BlockingIOError:
            pass
        if b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            return int(line)
        if not eof:
            return None
        rc = self.proc.wait()  # the pipe closed: the worker is gone (or going) without answering
        return rc if rc else 1

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        """No more elements: the worker exits at end of input."""
        try:
            self._in.close()
        except OSError:
            pass

    def stop(self, timeout: float = 5.0) -> None:
        self.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()


class WorkerRun:
    """One element running in a worker (already sent to it), with the `Popen` surface the pool's loop uses."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.pid = worker.pid
        self.returncode: int | None = None

    def fileno(self) -> int:
        return self.worker.fileno()

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.worker.answer()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        end = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(f"element in worker pid {self.pid}", timeout or 0)
            select.select([self.fileno()], [], [], 0.05 if left is None else min(left, 0.05))
        return self.returncode  # type: ignore[return-value]


class WorkerPool:
    """At most `size` workers alive; idle ones are reused by requests of the same `worker_key`."""

    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self._idle: dict[tuple[Any, ...], list[Worker]] = {}
        self._all: list[Worker] = []

    def run(self, key: tuple[Any, ...], command: Sequence[str], argv: Sequence[str], env: Mapping[str, str],
            out: Path) -> WorkerRun:
        """Start the runner module of `command` with `argv` in an idle worker of `key`, or in a new one."""
        job = (runner_module(command), argv, env, out)
        idle = self._idle.setdefault(key, [])
        while idle:
            worker = idle.pop()
            try:
                worker.send(*job)
                return WorkerRun(worker)
            except OSError:  # it died while idle (OOM killer, a kill): drop it, take another
                worker.stop(0)
                self._all.remove(worker)
        worker = self._start(key, command[0], env, out.parent / "workers.err")
        try:
            worker.send(*job)
        except OSError:
            pass  # it died starting: its exit (and workers.err) is the element's end
        return WorkerRun(worker)

    def _start(self, key: tuple[Any, ...], python: str, env: Mapping[str, str], errors: Path) -> Worker:
        """A new worker, after retiring an idle one of another key if the pool is full."""
        self._all = [w for w in self._all if w.alive()]
        others = [w for k, ws in self._idle.items() if k != key for w in ws]
        while len(self._all) >= self.size and others:
            spare = others.pop()
            self._idle = {k: [w for w in ws if w is not spare] for k, ws in self._idle.items()}
            spare.stop()
            self._all.remove(spare)
        worker = Worker(python, env, errors)
        worker.key = key
        self._all.append(worker)
        return worker

    def release(self, run: WorkerRun) -> None:
        """The element ended: its worker takes the next one (unless it died with it)."""
        if run.worker.alive():
            self._idle.setdefault(run.worker.key, []).append(run.worker)

    def close(self) -> None:
        """Every worker exits (at end of input; killed after 5 s)."""
        for worker in self._all:
            worker.close()
        for worker in self._all:
            worker.stop()
        self._all, self._idle = [], {}


def worker_key(command: Sequence[str], env: Mapping[str, str]) -> tuple[Any, ...] | None:
    """Which workers can run this command: (interpreter, PYTHON* variables), or None when the
    command does not start the element runner (then every element is a new process). The runner's
    `__main__` only imports when imported, so a worker may run it repeatedly."""
    if runner_module(command) is None:
        return None
    return (os.path.realpath(command[0]), tuple(sorted((k, v) for k, v in env.items() if k.startswith("PYTHON"))))


if __name__ == "__main__":
    sys.exit(serve())
