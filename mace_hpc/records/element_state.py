"""An element's own state file, `<context>/state.json`: the source of truth for `mace status`.

The scheduler forgets finished jobs (and sacct lags), so every element records its own lifecycle,
atomically (invariant 7 of docs/architecture.md). A missing or truncated file reads as PENDING,
never as a crash; `read_state_strict` tells the epilogue apart an unreadable file (quarantine).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..util.atomic import atomic_write_json, read_json
from ..util.nfslock import NfsLock
from ..util.procs import hostname, process_alive
from .layout import state_path
from .states import ARCHIVED, COMPLETED, MERGED, PENDING, RUNNING, State

VERSION = 1
HISTORY_LIMIT = 50


@dataclass(frozen=True)
class ElementState:
    """What one element's state file says. Unknown keys (a newer writer) survive in `extra`."""

    state: str = PENDING
    run_state: str | None = None
    attempts: int = 0
    index: int | None = None
    workflow_id: str | None = None
    host: str | None = None
    pid: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    updated_at: float | None = None
    queued_at: float | None = None
    resubmitted_at: float | None = None
    peak_rss_bytes: int | None = None  # the runner's and its steps' peak resident memory (for the report)
    cpu_seconds: float | None = None  # user + system CPU time of the run's steps
    message: str = ""
    steps: list[dict[str, Any]] = field(default_factory=list)
    scheduler: dict[str, str] = field(default_factory=dict)
    requeued: bool = False
    lost: bool = False
    pending_reason: str | None = None
    epilogue_error: str | None = None
    epilogue: dict[str, Any] = field(default_factory=dict)
    conflicts: int = 0
    quarantine: dict[str, Any] | None = None
    removed: bool = False
    removed_at: float | None = None
    removed_by: str | None = None
    restored_from: str | None = None  # the archive (path or s3:// URL) a removed context came back from
    restored_at: float | None = None
    history: list[list[Any]] = field(default_factory=list)
    stage: str | None = None  # multi-stage plans: the stage the element is in (records/stages.py)
    stages: dict[str, Any] = field(default_factory=dict)  # stage name -> {state, started_at, finished_at, ...}
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ElementState:
        # `mace status` builds 10,000 of these per call: fill the instance dict directly instead of
        # a 28-argument frozen __init__ (one object.__setattr__ per field); same result
        obj = object.__new__(cls)
        values = obj.__dict__
        values.update(_SCALAR_DEFAULTS)
        values.update(steps=[], scheduler={}, epilogue={}, history=[], stages={}, extra={})
        extra = values["extra"]
        for key, value in data.items():
            if key in _FIELD_SET:
                if value is not None:
                    values[key] = value
            elif key != "version":
                extra[key] = value
        values["state"] = _BY_VALUE.get(values["state"], values["state"])
        if values["run_state"] is not None:
            values["run_state"] = _BY_VALUE.get(values["run_state"], values["run_state"])
        return obj

    def to_dict(self) -> dict[str, Any]:
        out = {f: getattr(self, f) for f in _FIELDS if f != "extra"}
        return {"version": VERSION, **self.extra, **out}

    @property
    def last_run(self) -> str:
        """How the last run ended (or where it is): `run_state`, else `state`."""
        return str(self.run_state or self.state)

    def runner_dead_here(self) -> bool:
        """A RUNNING state whose runner is provably gone: it ran on this host and its pid is dead
        (or now another process). Then nothing will ever record its end but us."""
        if self.state != RUNNING or self.host != hostname() or not self.pid:
            return False
        return not process_alive(self.pid, started_by=self.started_at)

    @property
    def results_home(self) -> bool:
        """Merged or archived and then cleaned up (a tombstone): the results are home and nothing is
        left to resume from, so running the element again must do nothing."""
        return self.removed and self.state in (MERGED, ARCHIVED) and self.run_state == COMPLETED


_FIELDS = tuple(f.name for f in dataclasses.fields(ElementState))
_FIELD_SET = frozenset(_FIELDS) - {"extra"}
_SCALAR_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ElementState)
                    if f.default is not dataclasses.MISSING}
_BY_VALUE: dict[Any, State] = {s.value: s for s in State}
_ABSENT = ElementState()


def read_state(context_dir: str | os.PathLike[str]) -> ElementState:
    """The element's state; PENDING (attempts 0) when the file is missing, truncated or foreign."""
    data = read_json(state_path(context_dir))
    if not isinstance(data, dict) or not isinstance(data.get("state"), str):
        return _ABSENT
    return ElementState.from_dict(data)


def read_state_strict(context_dir: str | os.PathLike[str]) -> ElementState | None:
    """Like `read_state`, but None when a file is there and unusable (truncated, foreign, a symlink):
    the epilogue quarantines such a context instead of treating it as never run."""
    path = state_path(context_dir)
    if not os.path.lexists(path):
        return _ABSENT
    data = read_json(path)
    if os.path.islink(path) or not isinstance(data, dict) or not isinstance(data.get("state"), str):
        return None
    return ElementState.from_dict(data)


def write_state(context_dir: str | os.PathLike[str], *, fsync: bool = True, **updates: Any) -> ElementState:
    """Apply `updates` to the state file atomically and return the new state.

    `fsync=False` keeps the rename atomicity but not durability: for records that are rebuilt
    anyway after a crash (e.g. MERGED, which the merge ledger proves again on the next merge).
    """
    unknown = set(updates) - set(_FIELDS)
    if unknown:
        raise TypeError(f"write_state: unknown state fields {sorted(unknown)}")
    current = read_state(context_dir)
    now = time.time()
    history = current.history
    if "state" in updates:
        history = (history + [[str(updates["state"]), now, hostname()]])[-HISTORY_LIMIT:]
    new = dataclasses.replace(current, **updates, updated_at=now, history=history)
    atomic_write_json(state_path(context_dir), new.to_dict(), fsync=fsync)
    return new


STATE_LOCK = ".state.lock"


def update_state(context_dir: str | os.PathLike[str],
                 change: Callable[[ElementState], Mapping[str, Any]]) -> ElementState:
    """Apply the fields `change(current state)` returns, read and written under a lock in the
    context: two stages of one element may end at once (both need the same upstream), and each
    decides from what the other wrote (its stages map, whether the chain has ended)."""
    with NfsLock(os.path.join(context_dir, STATE_LOCK), lifetime=120.0, timeout=60.0):
        return write_state(context_dir, **change(read_state(context_dir)))


def write_stage(context_dir: str | os.PathLike[str], name: str, element: Mapping[str, Any] | None = None,
                **stage: Any) -> ElementState:
    """Update stage `name` of the element (and, with `element`, its own fields) in one write."""
    return update_state(context_dir, lambda current: {
        "stages": {**current.stages, name: {**(current.stages.get(name) or {}), **stage}}, **dict(element or {})})
