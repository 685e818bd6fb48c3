"""Run one plan step inside a context, recording it as a calculation.

Each step gets its own work directory (`calculations/<step>`), its stdout/stderr saved to files,
its exit code and runtime recorded; a `results.json` it writes (or the dict a function step
returns) becomes properties of its material.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError
from .start import ensure_site

RESULTS_FILE = "results.json"


@dataclass
class StepOutcome:
    """How one step ended, as the state file's `steps` list records it."""

    name: str
    status: str  # completed | failed | timeout | skipped
    exit_code: int | None
    runtime_s: float
    calc_id: str | None
    message: str = ""
    cpu_seconds: float | None = None  # the step process's own (os.wait4), with what it waited for
    peak_rss_bytes: int | None = None  # ... and its peak resident memory (largest process)


class StepInterrupted(BaseException):
    """Raised inside a function step when the runner receives the time-limit signal.

    A BaseException (like KeyboardInterrupt) so that user code's `except Exception:` cannot
    swallow the time limit and let the step be recorded as completed."""


_current_proc: subprocess.Popen[bytes] | None = None
_usage: dict[int, Any] = {}  # pid -> os.wait4's resource usage of a step process that ended
_killer: threading.Thread | None = None
_interrupted = threading.Event()  # set when the time-limit signal stopped the running step


def terminate_current(grace: float = 5.0, block: bool = True) -> None:
    """Stop the running command step's whole process group (the time-limit path).

    From a signal handler pass `block=False`: the interrupted main thread sits in `Popen.wait()`
    holding its waitpid lock, so waiting here can only time out (that cost grace + 5 s of the
    signal margin). Instead: SIGTERM now, SIGKILL from a thread if the group outlives `grace`;
    `wait_for_stopped_group()` joins that thread (the group is gone when it returns).
    """
    global _killer
    proc = _current_proc
    if proc is None or proc.poll() is not None:
        return
    if not block:
        _interrupted.set()
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        _killer = threading.Thread(target=_kill_group_after, args=(proc.pid, grace), name="mace-step-killer",
                                   daemon=True)
        _killer.start()
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            wait_step(proc, wait)
            return
        except subprocess.TimeoutExpired:
            continue


def wait_step(proc: subprocess.Popen[bytes], timeout: float | None = None) -> int:
    """`proc.wait(timeout)`, keeping the process's own resource usage (os.wait4: the step and the
    processes it waited for) in `_usage`: the runner's children's total would also hold every
    step it ran before (a packed task's runner runs several elements)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = 0.0005
    while proc.returncode is None:
        try:
            pid, status, usage = os.wait4(proc.pid, 0 if deadline is None else os.WNOHANG)
        except ChildProcessError:  # reaped meanwhile by Popen.poll() (the signal handler): no usage
            return proc.wait()
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            _usage[pid] = usage
            break
        remaining = deadline - time.monotonic() if deadline is not None else 0.0
        if remaining <= 0:
            raise subprocess.TimeoutExpired(proc.args, timeout or 0)
        time.sleep(min(delay, remaining, 0.05))
        delay *= 2
    return proc.returncode


def rss_bytes(maxrss: int) -> int:
    """ru_maxrss in bytes: it is bytes on macOS, KiB on Linux."""
    return maxrss if sys.platform == "darwin" else maxrss * 1024


def own_peak_rss() -> int:
    """This process's own peak resident memory, in bytes. Linux: VmHWM of /proc/self/status, because
    RUSAGE_SELF's ru_maxrss starts at the RSS of whatever started this program (the kernel keeps
    the pre-exec peak): a runner started by a 400 MB process would report 400 MB for every element."""
    try:
        with open("/proc/self/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return rss_bytes(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _kill_group_after(pgid: int, grace: float) -> None:
    """SIGKILL the group if it is still there after `grace` s; return as soon as it is gone."""
    end = time.monotonic() + grace
    while time.monotonic() < end:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.05)
    _kill_group(pgid)


def wait_for_stopped_group(timeout: float = 30.0) -> None:
    """Wait until an interrupted step's process group is gone (its killer thread has ended), so
    nothing writes into the context any more and the epilogue can fork (no other thread)."""
    killer = _killer
    if killer is not None:
        killer.join(timeout)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # already gone


def load_callable(spec: str, search_path: list[str]) -> Any:
    module_name, _, attr = spec.partition(":")
    ensure_site()
    for p in reversed(search_path):
        if p and p not in sys.path:
            sys.path.insert(0, p)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InputError(f"function {spec!r}: cannot import module {module_name!r}: {exc}") from None
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise InputError(f"function {spec!r}: module {module_name!r} has no attribute {attr!r}")
    if not callable(fn):
        raise InputError(f"function {spec!r}: {attr!r} is not callable")
    return fn


def read_results(work_dir: Path) -> dict[str, Any]:
    """`results.json` as flat name -> number/string; anything else is ignored with a note."""
    data: Any = None
    path = work_dir / RESULTS_FILE
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, RecursionError):  # not JSON, or nested too deep to parse
            return {}
    return flat_results(data)


def flat_results(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        return {}
    return {
        str(k): v for k, v in data.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)
    }


EXIT_LOAD_ERROR = 127  # the function step could not load its function (function_step.py)


def function_argv(step: dict[str, Any], search_path: list[str]) -> list[str]:
    """A function step as a command: this interpreter runs it in a process of its own."""
    kwargs = json.dumps(step.get("kwargs") or {})
    return [sys.executable, "-m", "mace_hpc.element.function_step", step["function"], kwargs,
            *[p for p in search_path if p]]


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


def run_step(
    step: dict[str, Any],
    db: Any,
    work_dir: Path,
    env: dict[str, str],
    material_id: str | None,
    workflow_id: str,
    search_path: list[str],
) -> StepOutcome:
    """Run one step (command argv or python function) and record it in `db`."""
    global _current_proc
    _interrupted.clear()
    work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    name = step["name"]
    calc_id = db.create_calculation(
        material_id,
        step.get("calc_type") or name,
        work_dir=str(work_dir),
        settings={"step": name, "command": step.get("command"), "function": step.get("function")},
        status="running",
        workflow_id=workflow_id,
    )
    db.update_calculation_status(calc_id, "running")
    t0 = time.monotonic()
    stdout_path, stderr_path = work_dir / "stdout.txt", work_dir / "stderr.txt"
    status, exit_code, message, results, usage = "failed", None, "", {}, None
    timeout = step.get("timeout")
    try:
        argv = list(step["command"]) if step.get("command") else function_argv(step, search_path)
        with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
            try:
                _current_proc = subprocess.Popen(
                    argv, cwd=work_dir, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            except FileNotFoundError:
                raise InputError(f"step {name!r}: program {argv[0]!r} not found") from None
            except PermissionError:
                raise InputError(f"step {name!r}: program {argv[0]!r} is not executable") from None
            pid = _current_proc.pid
            try:
                exit_code = wait_step(_current_proc, timeout=timeout)
            except subprocess.TimeoutExpired:
                terminate_current()
                exit_code = _current_proc.returncode
                status, message = "timeout", f"step timeout after {timeout}s"
            finally:
                _current_proc = None
                usage = _usage.pop(pid, None)
        if _interrupted.is_set():
            status, message = "timeout", "interrupted by the time-limit signal"
        elif status != "timeout":
            status = "completed" if exit_code == 0 else "failed"
            if exit_code and exit_code < 0:
                message = f"killed by signal {-exit_code}"
            elif exit_code == EXIT_LOAD_ERROR and not step.get("command"):
                message = _last_line(stderr_path) or f"exit code {exit_code}"
            elif exit_code:
                message = f"exit code {exit_code}"
        results = read_results(work_dir)
    except StepInterrupted:
        status, message = "timeout", "interrupted by the time-limit signal"
    except InputError as exc:
        status, exit_code, message = "failed", 127, str(exc)
    runtime = time.monotonic() - t0
    if material_id and status == "completed":  # a failed step's results may be partial
        for key, value in results.items():
            db.store_material_property(material_id, key, value, calc_id=calc_id)
    for fname in ("stdout.txt", "stderr.txt", RESULTS_FILE):
        p = work_dir / fname
        if p.is_file():
            db.add_file_record(calc_id, fname.split(".")[0], str(p), file_size=p.stat().st_size)
    db.update_calculation_status(
        calc_id, status, error_message=message or None, exit_code=exit_code, runtime_seconds=runtime
    )
    return StepOutcome(name, status, exit_code, runtime, calc_id, message,
                       *((round(usage.ru_utime + usage.ru_stime, 3), rss_bytes(usage.ru_maxrss)) if usage else ()))
