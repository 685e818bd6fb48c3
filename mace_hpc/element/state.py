"""An element's own state file, `<context>/state.json`: the source of truth for `mace status`.

The scheduler forgets finished jobs (and sacct lags), so every element records its own lifecycle,
atomically. A missing or truncated file reads as PENDING, never as a crash.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

from ..util.atomic import atomic_write_json, read_json

STATE_FILE = "state.json"
PENDING, RUNNING, COMPLETED, FAILED, TIMEOUT, CANCELLED = (
    "PENDING", "RUNNING", "COMPLETED", "FAILED", "TIMEOUT", "CANCELLED",
)
MERGED, ARCHIVED, PENDING_MERGE, KEPT = "MERGED", "ARCHIVED", "PENDING_MERGE", "KEPT"
RUN_STATES = (PENDING, RUNNING, COMPLETED, FAILED, TIMEOUT, CANCELLED)
FINAL_RUN_STATES = (COMPLETED, FAILED, TIMEOUT, CANCELLED)
EPILOGUE_STATES = (MERGED, ARCHIVED, PENDING_MERGE, KEPT)


def read_state(context_dir: str | os.PathLike[str]) -> dict[str, Any]:
    # os.path.join, not Path: `mace status` reads 10,000 of these per call
    state = read_json(os.path.join(context_dir, STATE_FILE))
    if not isinstance(state, dict) or "state" not in state:
        return {"state": PENDING, "attempts": 0}
    return state


def write_state(context_dir: Path, *, fsync: bool = True, **updates: Any) -> dict[str, Any]:
    """Merge `updates` into the state file (atomic); returns the new state.

    `fsync=False` keeps the rename atomicity but not durability: for records that are rebuilt
    anyway after a crash (e.g. MERGED, which the merge ledger proves again on the next merge).
    """
    state = read_state(context_dir)
    state.update(updates)
    state["updated_at"] = time.time()
    state.setdefault("history", [])
    if "state" in updates:
        state["history"] = (state["history"] + [[updates["state"], state["updated_at"], socket.gethostname()]])[-50:]
    atomic_write_json(Path(context_dir) / STATE_FILE, state, fsync=fsync)
    return state


def results_home(state: dict[str, Any]) -> bool:
    """A completed element merged or archived and then cleaned up (a tombstone): its results are
    home and its context holds nothing to resume from, so running it again must do nothing."""
    return bool(state.get("removed")) and state.get("state") in (MERGED, ARCHIVED) and state.get("run_state") == COMPLETED
