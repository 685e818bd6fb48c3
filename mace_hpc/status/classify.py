"""One cause per ended attempt, from the scheduler's record, the element's state file and the
plan's named application errors.

The two records see different things: sacct knows a job was killed for memory or lost with its
node (the runner never got to write anything); the runner knows it was stopped by the time-limit
signal *before* the limit (so sacct says FAILED, exit 124) and which step failed with what exit
code. Precedence, first match wins:

1. the run completed (state file COMPLETED, or the scheduler COMPLETED and nothing says otherwise);
2. the scheduler's own death words: OUT_OF_MEMORY, NODE_FAIL/BOOT_FAIL, PREEMPTED, TIMEOUT/DEADLINE;
3. the runner's TIMEOUT (stopped by the signal before the limit) and CANCELLED;
4. a named application error: its regex over the failed step's output files (last 1 MiB each);
5. FAILED(exit N): the failed step's exit code, else the scheduler's (128 + signal when killed).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from pathlib import Path

from ..plan.policy import AppError
from ..records import causes as c
from ..records.causes import Cause, Usage
from ..records.element_state import ElementState
from ..records.layout import ContextPaths
from ..records.states import CANCELLED, COMPLETED, TIMEOUT

TAIL_BYTES = 1 << 20
_SCHEDULER_DEATHS = {
    "OUT_OF_MEMORY": c.OUT_OF_MEMORY, "NODE_FAIL": c.NODE_FAIL, "BOOT_FAIL": c.NODE_FAIL,
    "PREEMPTED": c.PREEMPTED, "TIMEOUT": c.TIMEOUT, "DEADLINE": c.TIMEOUT,
}


def classify(usage: Usage | None, state: ElementState, app_errors: Iterable[AppError] = (),
             context_dir: str | os.PathLike[str] | None = None) -> Cause:
    """The cause of an element's last attempt (see the module docstring for the order)."""
    run = state.last_run
    sched = (usage.state if usage else "") or ""
    if run == COMPLETED and sched not in _SCHEDULER_DEATHS:
        return Cause(c.COMPLETED)
    if sched in _SCHEDULER_DEATHS:
        return Cause(_SCHEDULER_DEATHS[sched], detail=f"scheduler: {sched}")
    if run == TIMEOUT:
        return Cause(c.TIMEOUT, detail=state.message or "runner: stopped by the time-limit signal")
    if run == CANCELLED or sched == "CANCELLED":
        return Cause(c.CANCELLED, detail=state.message or f"scheduler: {sched}")
    if sched == "COMPLETED" and run not in ("FAILED",):
        return Cause(c.COMPLETED)
    failed_step = next((s for s in reversed(state.steps) if s.get("status") not in ("completed", "skipped")), None)
    if context_dir is not None:
        found = match_app_error(Path(context_dir), failed_step, app_errors)
        if found is not None:
            return found
    code = failed_step.get("exit_code") if failed_step else None
    if code is None and usage is not None:
        code = 128 + usage.signal if usage.signal else usage.exit_code
    detail = f"step {failed_step['name']}" if failed_step else (state.message or f"scheduler: {sched or 'unknown'}")
    return Cause(c.FAILED, exit_code=code, detail=detail)


def match_app_error(context_dir: Path, step: dict | None, app_errors: Iterable[AppError]) -> Cause | None:
    """The first declared error whose pattern occurs in the failed step's files (all steps' when the
    runner did not say which failed, e.g. it was killed)."""
    errors = list(app_errors)
    if not errors:
        return None
    calc = ContextPaths(context_dir).calculations
    dirs = [calc / step["name"]] if step and step.get("name") else sorted(p for p in calc.glob("*") if p.is_dir())
    for err in errors:
        regex = err.regex()
        for d in dirs:
            for f in _files(d, err.files):
                text = _tail(f)
                m = regex.search(text)
                if m:
                    end = text.find("\n", m.end())
                    line = text[text.rfind("\n", 0, m.start()) + 1: end if end >= 0 else len(text)]
                    return Cause(c.APP_ERROR, name=err.name, retryable=err.retryable,
                                 detail=f"{f.name}: {line.strip()[:200]}")
    return None


def _files(directory: Path, patterns: Iterable[str]) -> list[Path]:
    """Regular files inside `directory` matching the globs; never through a symlink out of it."""
    out: list[Path] = []
    root = directory.resolve()
    for pattern in patterns:
        for name in sorted(glob.glob(glob.escape(str(directory)) + "/" + pattern)):
            p = Path(name)
            if p.is_file() and not p.is_symlink() and root in p.resolve().parents:
                out.append(p)
    return out


def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            fh.seek(max(0, size - TAIL_BYTES))
            return fh.read(TAIL_BYTES).decode("utf-8", errors="replace")
    except OSError:
        return ""
