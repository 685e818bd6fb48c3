"""The epilogue hook: finalize one finished element, within a deadline, and never fail the node.

`run_epilogue(context_dir, manifest=...)` is what the element runner calls at the end of every
element (success, failure, time-limit signal); `mace epilogue` / `mace-epilogue` is the same for
scheduler hooks and humans (see `find_context` for how it finds the element). Both:

- never raise and (the CLI) always exit 0: a failing site Epilog drains the node (invariant 4 of docs/architecture.md);
- never hang: the work runs in a forked child that is stopped at `epilogue_deadline` seconds
  (SIGUSR1, so it unwinds and releases its locks and temp files; SIGKILL after a short grace),
  and whatever could not be finished is left as PENDING_MERGE plus a log line in the context,
  for the backstop job or the next `mace merge`.

The child ignores SIGTERM/SIGINT/SIGUSR2: the scheduler's time-limit signals are for the element,
and an epilogue that already holds the merge lock is better finished than abandoned.
"""

from __future__ import annotations

import json
import os
import select
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import archive_location, load_config
from ..database.merge import lock_path
from ..records import states as st
from ..records.element_state import ElementState, read_state, read_state_strict, write_state
from ..records.layout import ContextPaths, SubmissionPaths
from ..records.manifest import Manifest, plan_of_context, read_manifest
from ..util.nfslock import LockTimeout, NfsLock
from .finalize import Options, Outcome, Target, finalize, log_line, target_from_context, target_from_manifest

KILL_GRACE_S = 5.0
DEFAULT_DEADLINE_S = 60.0


class _Deadline(BaseException):
    """Raised inside the epilogue child when its parent says time is up."""


def _raise_deadline(signum: int, frame: Any) -> None:
    raise _Deadline()


@dataclass(frozen=True)
class EpilogueResult:
    """The element's state after its epilogue, and what finalizing did (None if it did not finish)."""

    state: ElementState
    outcome: Outcome | None = None

    def to_dict(self) -> dict[str, Any]:
        out = self.state.to_dict()
        if self.outcome is not None:
            out["outcome"] = self.outcome.to_dict()
        return out


def find_manifest(context_dir: Path) -> Manifest | None:
    """The manifest of the submission a context belongs to (its element.json names the plan)."""
    plan = plan_of_context(context_dir)
    if plan is None:
        return None
    manifest = read_manifest(SubmissionPaths.of(context_dir.parent, plan).manifest)
    return manifest if manifest is not None and manifest.entry_for_context(context_dir) else None


def build_target(
    context_dir: Path,
    manifest: Manifest | None = None,
    *,
    shared_database: str | os.PathLike[str] | None = None,
    archive_dir: str | os.PathLike[str] | None = None,
) -> Target:
    """Settings for one context: its manifest entry when there is one, else the configuration."""
    cfg = load_config()
    if manifest is None:
        manifest = find_manifest(context_dir)
    entry = manifest.entry_for_context(context_dir) if manifest else None
    target = target_from_manifest(entry, manifest, cfg) if entry and manifest else target_from_context(context_dir, cfg)
    if shared_database:
        target.shared_database = Path(shared_database).absolute()
    if archive_dir:
        target.archive_dir = archive_location(archive_dir)
    return target


def _can_fork() -> bool:
    return hasattr(os, "fork") and threading.current_thread() is threading.main_thread() and threading.active_count() == 1


def run_with_deadline(fn: Callable[[], Any], deadline: float, grace: float = KILL_GRACE_S) -> tuple[bool, Any]:
    """Run `fn` in a forked child for at most `deadline` seconds; (finished, JSON result or None).

    Falls back to a daemon thread (which may outlive the deadline, but we stop waiting) when
    forking is unsafe (other threads running).
    """
    if not _can_fork():
        return _run_in_thread(fn, deadline)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # ---- child: do the work, report it as JSON on the pipe, never return
        code = 1
        try:
            os.close(r)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2, signal.SIGHUP):
                signal.signal(sig, signal.SIG_IGN)
            signal.signal(signal.SIGUSR1, _raise_deadline)
            data = json.dumps(fn(), default=str).encode()
            view = memoryview(data)
            while view:
                view = view[os.write(w, view):]
            code = 0
        except BaseException:  # noqa: BLE001 - the parent records what is missing
            pass
        finally:
            os._exit(code)
    os.close(w)
    chunks: list[bytes] = []
    end = time.monotonic() + deadline
    eof = False
    try:
        while not eof:
            remaining = end - time.monotonic()
            if remaining <= 0:
                break
            try:
                ready, _, _ = select.select([r], [], [], remaining)
            except BaseException:  # noqa: BLE001 - a signal handler of the caller raised: keep waiting
                continue
            if ready:
                data = os.read(r, 1 << 16)
                eof = not data
                chunks.append(data)
    finally:
        os.close(r)
    if not eof:
        _stop_child(pid, grace)
        return False, None
    if _exit_status(pid) != 0:
        return False, None  # it died before reporting (exception, OOM kill, crash): not finished
    try:
        return True, json.loads(b"".join(chunks) or b"null")
    except ValueError:
        return False, None


def _reap(pid: int, timeout: float | None = None) -> bool:
    end = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            done, _ = os.waitpid(pid, 0 if end is None else os.WNOHANG)
        except ChildProcessError:
            return True
        except InterruptedError:
            continue
        if done:
            return True
        if end is not None and time.monotonic() >= end:
            return False
        time.sleep(0.02)


def _exit_status(pid: int) -> int:
    """Reap the child; its raw wait status (0: exited 0; unknown when already reaped elsewhere)."""
    while True:
        try:
            return os.waitpid(pid, 0)[1]
        except ChildProcessError:
            return 0
        except InterruptedError:
            continue


def _stop_child(pid: int, grace: float) -> None:
    for sig, wait in ((signal.SIGUSR1, grace), (signal.SIGKILL, None)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
        if _reap(pid, wait):
            return


def _run_in_thread(fn: Callable[[], Any], deadline: float) -> tuple[bool, Any]:
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["result"] = json.loads(json.dumps(fn(), default=str))
        except BaseException as exc:  # noqa: BLE001
            box["error"] = exc

    thread = threading.Thread(target=work, name="mace-epilogue", daemon=True)
    thread.start()
    thread.join(deadline)
    if thread.is_alive() or "result" not in box:
        return False, None
    return True, box["result"]


def _clear_dead_locks(target: Target) -> None:
    """After killing a child: break the locks it held (dead holder on this host), so the backstop
    on another host does not wait for their lifetime."""
    paths = [ContextPaths(target.context_dir).epilogue_lock]
    if target.shared_database:
        paths.append(lock_path(target.shared_database))
    for path in paths:
        if not os.path.lexists(path):
            continue
        try:
            NfsLock(path, timeout=0.3, poll=0.05).acquire().release()
        except (LockTimeout, OSError):
            pass


def _record_pending(context_dir: Path, reason: str) -> ElementState:
    """PENDING_MERGE + log line, unless the context is already done (the child got that far)."""
    log_line(context_dir, f"epilogue: {reason}; left PENDING_MERGE for the backstop / `mace merge`")
    try:
        state = read_state_strict(context_dir)
        if state is not None and state.state in st.DONE_STATES:
            return state
        if state is not None and state.state not in (*st.FINAL_RUN_STATES, st.PENDING_MERGE):
            return state  # not finished running: nothing is pending yet
        return write_state(context_dir, state=st.PENDING_MERGE, pending_reason=reason, epilogue_error=reason)
    except Exception:  # noqa: BLE001
        return ElementState(state=st.PENDING_MERGE, pending_reason=reason)


def run_epilogue(
    context_dir: str | Path,
    *,
    manifest: Manifest | None = None,
    on_complete: str | None = None,
    on_failure: str | None = None,
    shared_database: str | Path | None = None,
    archive_dir: str | Path | None = None,
    deadline: float | None = None,
    ended: bool = False,
    retry_pending: bool = True,
    by: str = "epilogue",
) -> EpilogueResult:
    """Apply the element's policy to one context within `deadline` s; returns its new state. Never raises.

    `ended=True` (scheduler hooks): the job is over, so a RUNNING state means the runner was
    killed before recording its end; it is recorded as such and the on_failure policy applied.
    `retry_pending=False` (scheduler hooks): a PENDING_MERGE left by the runner's own epilogue is
    not retried at once (same busy lock, node held longer); the backstop and `mace merge` do it.
    """
    context_dir = Path(context_dir).absolute()
    try:
        if deadline is None:
            deadline = float(load_config()["epilogue_deadline"])
        target = build_target(context_dir, manifest, shared_database=shared_database, archive_dir=archive_dir)
        lock_wait = max(0.5, deadline - 10.0) if deadline > 20 else deadline / 2
        opts = Options(on_complete, on_failure, lock_timeout=lock_wait, ended=ended, by=by,
                       context_lock_timeout=min(5.0, deadline / 4), retry_pending=retry_pending)

        def work() -> list[dict[str, Any]]:
            return [o.to_dict() for o in finalize([target], opts)]

        started = time.monotonic()
        finished, result = run_with_deadline(work, deadline)
        if not finished:
            _clear_dead_locks(target)
            if time.monotonic() - started < deadline:
                return EpilogueResult(_record_pending(context_dir, "epilogue process died before finishing"))
            return EpilogueResult(_record_pending(context_dir, f"epilogue deadline of {deadline:g} s exceeded"))
        outcome = Outcome(**result[0]) if result else None
        return EpilogueResult(read_state(context_dir), outcome)
    except Exception as exc:  # noqa: BLE001 - the hook must never fail its caller
        return EpilogueResult(_record_pending(context_dir, f"epilogue failed: {type(exc).__name__}: {exc}"))
