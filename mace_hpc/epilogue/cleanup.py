"""`mace cleanup`: free scratch space by removing finished-and-safe contexts, oldest first.

Safe means the results are provably elsewhere: state ARCHIVED and the archive (with a matching
sidecar checksum) is on disk, or its object in an s3:// archive_dir has the size and SHA-256 the
state recorded, or state MERGED and the shared database's ledger lists the workflow
id (a MERGED context is archived first when `context_settings.archive_results` is on, the
default, because its step outputs are not in the database). Anything else (KEPT, PENDING_MERGE,
QUARANTINED, running, active in some process) is never removed. Removing keeps a tombstone
(`state.json` + `context.json`) so `mace status` still reports MERGED / ARCHIVED.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..config import Config, archive_location, load_config, resolve_scratch_root
from ..context import registry
from ..context.archive_store import archive_intact, archive_to, locate
from ..context.objectstore import ObjectStore
from ..database.merge import merged_workflow_ids
from ..errors import InputError
from ..records import states as st
from ..records.element_state import ElementState, read_state_strict, write_state
from ..records.identity import read_identity
from ..records.layout import IDENTITY_FILE, MANIFEST_FILE, STATE_FILE, ContextPaths, submissions_root
from ..records.manifest import Manifest, read_manifest
from ..util.nfslock import LockTimeout, NfsLock
from .finalize import remove_data

_SIZE_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_size(text: str) -> int:
    """'50G', '512M', '1.5T', '1000' -> bytes (binary units); InputError otherwise."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", str(text), re.IGNORECASE)
    if not m:
        raise InputError(f"--max-total-size: {text!r} is not a size; use e.g. 50G, 512M")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).upper()])


def parse_age(text: str) -> float:
    """'14d', '12h', '30m', '45s', '2w' -> seconds; InputError otherwise."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", str(text), re.IGNORECASE)
    if not m:
        raise InputError(f"--older-than: {text!r} is not an age; use e.g. 14d, 12h, 30m")
    return float(m.group(1)) * _AGE_UNITS[m.group(2).lower()]


def dir_size(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path, followlinks=False):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except OSError:
                pass
    return total


@dataclass
class Candidate:
    workflow_id: str
    directory: str
    state: str
    finished_at: float
    size: int
    safe: bool
    why: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CleanupReport:
    removed: list[Candidate] = field(default_factory=list)
    kept: list[Candidate] = field(default_factory=list)
    total_before: int = 0
    total_after: int = 0
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "total_before": self.total_before, "total_after": self.total_after,
                "removed": [c.to_dict() for c in self.removed], "kept": [c.to_dict() for c in self.kept]}


def _merged_ids(databases: set[Path]) -> set[tuple[str, str]]:
    out: set[tuple[str, str]] = set()
    for db in databases:
        try:
            out |= {(str(db), w) for w in merged_workflow_ids(db)}
        except Exception:  # noqa: BLE001 - unreadable shared DB: nothing counts as merged
            pass
    return out


def _shared_db_of(context_dir: Path, manifests: dict[str, Manifest], cfg: Config) -> Path:
    manifest = manifests.get(context_dir.name)
    return Path(manifest.shared_database if manifest and manifest.shared_database
                else cfg.path("shared_database").absolute())


def _archive_dir_of(context_dir: Path, manifests: dict[str, Manifest], cfg: Config) -> str | Path:
    """The context's archive location: its submission's (a directory or an s3:// URL), else the config's."""
    manifest = manifests.get(context_dir.name)
    return (archive_location(manifest.archive_dir) if manifest else None) or cfg.archive_dir()


def _manifest_index(root: Path) -> dict[str, Manifest]:
    """workflow id -> the manifest of its submission (shared DB, archive dir, isolation mode)."""
    out: dict[str, Manifest] = {}
    base = submissions_root(root)
    for mpath in sorted(base.glob(f"*/{MANIFEST_FILE}")) if base.is_dir() else []:
        manifest = read_manifest(mpath)
        for e in manifest.elements if manifest else ():
            out[e.workflow_id] = manifest
    return out


def survey(root: Path, cfg: Config) -> list[Candidate]:
    """Every context under `root` with its size and whether removing it is safe."""
    active = {e["workflow_id"] for e in registry.list_entries(root) if e.get("status") != "stale"}
    manifests = _manifest_index(root)
    rows: list[tuple[Path, ElementState | None]] = []
    for d in sorted(root.iterdir()) if root.is_dir() else []:
        if d.name.startswith(".") or d.is_symlink() or not d.is_dir():
            continue
        if not (d / STATE_FILE).exists() and not (d / IDENTITY_FILE).exists():
            continue
        rows.append((d, read_state_strict(d)))
    merged = _merged_ids({_shared_db_of(d, manifests, cfg) for d, s in rows if s and s.state == st.MERGED})
    out = []
    stores: dict[str, ObjectStore] = {}  # one client per bucket: a HEAD per archived context, never a listing
    for d, state in rows:
        name = str(state.state) if state else "UNREADABLE"
        finished = float((state.finished_at or state.updated_at if state else None) or d.stat().st_mtime)
        cand = Candidate(d.name, str(d), name, finished, dir_size(d), False)
        if state is None:
            cand.why = "state file unreadable"
        elif state.removed:
            cand.why = "already removed (tombstone)"
        elif d.name in active:
            cand.why = "active in a running process"
        elif name == st.ARCHIVED:
            arch = str(state.epilogue.get("archive") or locate(_archive_dir_of(d, manifests, cfg), d.name))
            cand.safe, cand.why = archive_intact(arch, state.epilogue.get("archive_sha256"),
                                                 state.epilogue.get("archive_size"), stores)
        elif name == st.MERGED:
            shared = _shared_db_of(d, manifests, cfg)
            manifest, ident = manifests.get(d.name), read_identity(d)
            mode = manifest.isolation_mode if manifest else ident.isolation_mode if ident else None
            isolated = mode == "isolated"
            if isolated and (str(shared), d.name) not in merged:
                cand.why = f"state says MERGED but {shared} has no ledger entry for it"
            else:
                cand.safe = True
        else:
            cand.why = f"{name}: not merged or archived"
        out.append(cand)
    return out


def cleanup(
    scratch_root: str | Path | None = None,
    *,
    older_than: float | None = None,
    max_total_size: int | None = None,
    dry_run: bool = False,
    archive_merged: bool | None = None,
    config: Config | None = None,
    now: float | None = None,
) -> CleanupReport:
    """Remove safe contexts finished more than `older_than` s ago, then (oldest first) more safe
    ones while the scratch root's contexts exceed `max_total_size` bytes. Neither: 14 days."""
    cfg = config or load_config()
    root = resolve_scratch_root(cfg, scratch_root)
    if older_than is None and max_total_size is None:
        older_than = 14 * 86400.0
    archive_merged = cfg["context_settings.archive_results"] if archive_merged is None else archive_merged
    now = time.time() if now is None else now
    cands = survey(root, cfg)
    report = CleanupReport(dry_run=dry_run)
    report.total_before = total = sum(c.size for c in cands)
    safe = sorted((c for c in cands if c.safe), key=lambda c: c.finished_at)
    chosen: list[Candidate] = []
    for c in safe:
        old = older_than is not None and c.finished_at < now - older_than
        big = max_total_size is not None and total > max_total_size
        if old or big:
            chosen.append(c)
            total -= c.size
    manifests = _manifest_index(root) if archive_merged else {}
    for c in cands:
        if c not in chosen:
            report.kept.append(c)
    for c in chosen:
        if dry_run:
            report.removed.append(c)
            continue
        ok, why = _remove_one(Path(c.directory), c, archive_merged, manifests, cfg)
        if ok:
            report.removed.append(c)
        else:
            c.safe, c.why = False, why
            report.kept.append(c)
    report.total_after = report.total_before - sum(c.size for c in report.removed)
    return report


def _remove_one(d: Path, c: Candidate, archive_merged: bool, manifests: dict[str, Manifest],
                cfg: Config) -> tuple[bool, str]:
    """Remove one context's data under its epilogue lock, re-checking its state first."""
    try:
        lock = NfsLock(ContextPaths(d).epilogue_lock, lifetime=3600.0, timeout=2.0).acquire()
    except (LockTimeout, OSError) as exc:
        return False, f"busy: {exc}"
    try:
        state = read_state_strict(d)
        if state is None or state.state != c.state or state.removed:
            return False, "state changed while cleaning up"
        epilogue = state.epilogue
        if c.state == st.MERGED and archive_merged:
            manifest = manifests.get(d.name)
            entry = manifest.entry_for_context(d) if manifest else None
            try:
                record = archive_to(d, _archive_dir_of(d, manifests, cfg), d.name,
                                    plan=manifest.plan if manifest else None, index=entry.index if entry else None)
            except OSError as exc:
                return False, f"archiving before removal failed: {exc}"
            epilogue = {**epilogue, **record.info()}
        remove_data(d)
        write_state(d, removed=True, removed_at=time.time(), removed_by="mace cleanup", epilogue=epilogue)
        return True, ""
    finally:
        lock.release()
