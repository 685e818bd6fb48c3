"""Cross-process registry of active workflow contexts.

One small JSON file per activation (`<scratch_root>/.registry/<workflow_id>.<host>.<pid>.json`),
written atomically and removed on exit, so no lock is needed and a crashed process leaves an entry
that psutil can prove stale (pid gone, or reused by a process with another start time).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from ..records.layout import REGISTRY_DIR
from ..util.atomic import atomic_write_json, read_json
from ..util.nfslock import NfsLock
from ..util.private import ensure_private_dir
from ..util.procs import hostname, process_alive, process_start_time


def _entry_path(scratch_root: Path, workflow_id: str) -> Path:
    return scratch_root / REGISTRY_DIR / f"{workflow_id}.{hostname()}.{os.getpid()}.json"


def register(scratch_root: Path, workflow_id: str, info: dict[str, Any]) -> Path:
    """Record that this process has `workflow_id` active."""
    path = _entry_path(scratch_root, workflow_id)
    ensure_private_dir(path.parent, "registry directory", parents=True)
    entry = {
        "workflow_id": workflow_id,
        "host": hostname(),
        "pid": os.getpid(),
        "process_start": process_start_time(os.getpid()),
        "activated_at": time.time(),
        **info,
    }
    atomic_write_json(path, entry, fsync=False)  # a liveness hint: after a crash nobody holds it anyway
    return path


def unregister(scratch_root: Path, workflow_id: str) -> None:
    try:
        _entry_path(scratch_root, workflow_id).unlink()
    except FileNotFoundError:
        pass


def is_alive(entry: dict[str, Any]) -> bool | None:
    """True/False for a process on this host; None when it runs elsewhere (cannot tell)."""
    if entry.get("host") != hostname():
        return None
    return process_alive(entry.get("pid"), entry.get("process_start"))


def list_entries(scratch_root: Path) -> list[dict[str, Any]]:
    """Every registry entry with `status`: active, stale (dead process) or unknown (other host)."""
    folder = scratch_root / REGISTRY_DIR
    if not folder.is_dir():
        return []
    out = []
    for path in sorted(folder.glob("*.json")):
        entry = read_json(path)
        if not isinstance(entry, dict) or "workflow_id" not in entry:
            continue
        alive = is_alive(entry)
        entry["status"] = {True: "active", False: "stale", None: "unknown"}[alive]
        entry["registry_file"] = str(path)
        out.append(entry)
    return out


def holders_lock(scratch_root: Path, workflow_id: str) -> NfsLock:
    """Serialises joining and leaving one workflow id across processes, so exactly the last
    holder to leave sees nobody else and may clean the context up."""
    folder = ensure_private_dir(scratch_root / REGISTRY_DIR, "registry directory", parents=True)
    return NfsLock(folder / f".{workflow_id}.lock", lifetime=600.0, timeout=120.0)


def other_holders(scratch_root: Path, workflow_id: str) -> list[dict[str, Any]]:
    """Live (or, on another host, possibly live) processes that hold `workflow_id`, besides this one."""
    me = (hostname(), os.getpid())
    return [e for e in list_entries(scratch_root) if e["workflow_id"] == workflow_id
            and e["status"] != "stale" and (e.get("host"), e.get("pid")) != me]


def prune_stale(scratch_root: Path) -> list[str]:
    """Remove entries whose process is provably dead; returns their workflow ids."""
    removed = []
    for entry in list_entries(scratch_root):
        if entry["status"] == "stale":
            Path(entry["registry_file"]).unlink(missing_ok=True)
            removed.append(entry["workflow_id"])
    return removed
