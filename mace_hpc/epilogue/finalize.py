"""Bring finished contexts home: the one code path behind the epilogue hook, `mace merge` and the backstop.

For each context whose run ended (or that an earlier epilogue left PENDING_MERGE) the policy is
applied: `on_complete` (merge | archive | merge+archive | keep) for COMPLETED runs, `on_failure`
(keep | archive) otherwise. Merges go through `merge_many` (one lock, batched transactions, the
exactly-once ledger), so finalizing a context twice, or from two processes, adds nothing.

Outcomes, written to the context's state file:
- MERGED / ARCHIVED / KEPT: done; with cleanup configured a merged or archived context's data is
  removed, leaving only `state.json` + `context.json` (a tombstone, so `mace status` still knows).
- PENDING_MERGE: something failed (lock not obtained in time, disk full while archiving, ...);
  `pending_reason` says what, the context is untouched and the next `mace merge` retries.
- QUARANTINED: unreadable state file or corrupt context database; the context is moved to
  `<scratch_root>/.quarantine/<id>.<time>/` and a stub state file left in its place says where.

Two finalizers never work on one context at once: each holds the context's `.epilogue.lock`
(an NfsLock) and re-reads the state under it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..config import ON_COMPLETE, ON_FAILURE, Config, archive_location, effective_cleanup_on_exit, load_config
from ..database.merge import MergeReport, merge_many
from ..errors import InputError
from ..records import states as st
from ..records.element_state import ElementState, read_state_strict, write_state
from ..records.identity import read_identity, write_identity
from ..records.layout import EPILOGUE_LOCK, TOMBSTONE_FILES, ContextPaths
from ..records.manifest import Manifest, ManifestEntry, plan_of_context
from ..records.states import DONE_STATES, QUARANTINED
from ..util.atomic import atomic_write_json
from ..util.ids import validate_workflow_id
from ..util.nfslock import LockTimeout, NfsLock
from ..util.private import ensure_private_dir
from ..util.procs import hostname


def _traceback() -> str:
    import traceback  # lazy: only a failing finalizer formats one; elements start without it

    return traceback.format_exc()


@dataclass
class Target:
    """One context to finalize and the settings that apply to it."""

    context_dir: Path
    workflow_id: str
    isolation_mode: str = "isolated"
    shared_database: Path | None = None
    archive_dir: str | Path | None = None  # a directory or an s3:// URL
    on_complete: str = "merge"
    on_failure: str = "keep"
    cleanup: bool = False  # remove the data once merged or archived
    archive_before_cleanup: bool = True  # context_settings.archive_results
    plan: str | None = None
    index: int | None = None


@dataclass
class Outcome:
    """What finalizing one context did; `action` is one of ACTIONS."""

    workflow_id: str
    context_dir: str
    before: str
    state: str
    action: str
    reason: str = ""
    merge: dict[str, Any] | None = None
    archive: str | None = None
    removed: bool = False
    conflicts: int = 0
    index: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


ACTIONS = ("merged", "archived", "merged+archived", "kept", "pending", "quarantined", "busy", "skipped", "running")


@dataclass
class Options:
    """How to finalize: policy overrides, lock patience, who is asking (for the log), `ended`."""

    on_complete: str | None = None
    on_failure: str | None = None
    lock_timeout: float = 60.0
    ended: bool = False  # every element's job has ended: a RUNNING state means the runner died
    retry_pending: bool = True  # False (scheduler hooks): leave PENDING_MERGE to the backstop
    by: str = "merge"
    context_lock_timeout: float = 5.0
    scheduler_states: Mapping[str, str] = field(default_factory=dict)  # workflow id -> final state

    def __post_init__(self) -> None:
        if self.on_complete is not None and self.on_complete not in ON_COMPLETE:
            raise InputError(f"--on-complete: {self.on_complete!r} is invalid; allowed: {' | '.join(ON_COMPLETE)}")
        if self.on_failure is not None and self.on_failure not in ON_FAILURE:
            raise InputError(f"--on-failure: {self.on_failure!r} is invalid; allowed: {' | '.join(ON_FAILURE)}")


# ---------------------------------------------------------------------------- helpers
def log_line(context_dir: Path, line: str) -> None:
    """Append a line to `<context>/logs/epilogue.log`; never raises (the log is best effort)."""
    try:
        paths = ContextPaths(context_dir)
        if paths.logs.is_symlink():
            return
        paths.logs.mkdir(exist_ok=True, mode=0o700)
        fd = os.open(paths.epilogue_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as fh:
            fh.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {hostname()} pid {os.getpid()}: {line}\n")
    except OSError:
        pass


def policy_for(target: Target, run_state: str, opts: Options) -> str:
    if run_state == st.COMPLETED:
        return opts.on_complete or target.on_complete
    return opts.on_failure or target.on_failure


def wants_finalizing(state: ElementState, opts: Options, workflow_id: str = "") -> tuple[bool, str]:
    """Whether this state needs the epilogue, and if not a word on why (for the summary)."""
    name = state.state
    if name in st.FINAL_RUN_STATES:
        return True, ""
    if name == st.PENDING_MERGE:
        # a hook right after a failed epilogue would only wait for the same busy lock again,
        # holding the node: the backstop job and `mace merge` retry later
        return (True, "") if opts.retry_pending else (False, "skipped")
    if name == st.KEPT and (opts.on_complete or opts.on_failure):
        return True, ""  # an explicit policy on the command line revisits kept contexts
    if name == st.RUNNING:
        if workflow_id in opts.scheduler_states or (state.pid != os.getpid() and state.runner_dead_here()):
            return True, ""  # the scheduler says its job ended, or its runner died on this host
        if opts.ended and state.host != hostname():
            return True, ""  # every job has ended (the backstop): a runner elsewhere is gone too
        return False, "running"
    if name in DONE_STATES:
        return False, "skipped"
    return False, "running" if name == st.PENDING and state.attempts else "skipped"


def target_from_manifest(entry: ManifestEntry, manifest: Manifest, cfg: Config | None = None) -> Target:
    """The Target for one manifest entry: manifest values (plan > site config at submission) first."""
    cfg = cfg or load_config()
    return Target(
        context_dir=Path(entry.context_dir),
        workflow_id=validate_workflow_id(entry.workflow_id),
        isolation_mode=manifest.isolation_mode or cfg["isolation_mode"],
        shared_database=Path(manifest.shared_database or cfg.path("shared_database").absolute()),
        archive_dir=archive_location(manifest.archive_dir) or cfg.archive_dir(),
        on_complete=manifest.on_complete or cfg["on_complete"],
        on_failure=manifest.on_failure or cfg["on_failure"],
        cleanup=effective_cleanup_on_exit(cfg),
        archive_before_cleanup=bool(cfg["context_settings.archive_results"]),
        plan=manifest.plan,
        index=entry.index,
    )


def target_from_context(context_dir: Path, cfg: Config | None = None) -> Target:
    """A Target for a context with no manifest (made by WorkflowContext directly): config decides."""
    cfg = cfg or load_config()
    context_dir = Path(context_dir)
    ident = read_identity(context_dir)
    return Target(
        context_dir=context_dir,
        workflow_id=validate_workflow_id(ident.workflow_id if ident else context_dir.name),
        isolation_mode=ident.isolation_mode if ident else cfg["isolation_mode"],
        shared_database=cfg.path("shared_database").absolute(),
        archive_dir=cfg.archive_dir(),
        on_complete=cfg["on_complete"],
        on_failure=cfg["on_failure"],
        cleanup=effective_cleanup_on_exit(cfg),
        archive_before_cleanup=bool(cfg["context_settings.archive_results"]),
        plan=plan_of_context(context_dir),
    )


# ---------------------------------------------------------------------------- quarantine / tombstone
def quarantine(context_dir: Path, reason: str, *, run_state: str | None = None) -> Path:
    """Move a context aside to `<scratch_root>/.quarantine/<id>.<time>` and leave a stub state.

    The stub (state QUARANTINED, where it went, why) keeps `mace status` truthful; everything the
    element produced stays in the quarantined copy for a human to inspect.
    """
    context_dir = Path(context_dir)
    qdir = ContextPaths(context_dir).quarantine_dir
    ensure_private_dir(qdir, "quarantine directory")
    dest = qdir / f"{context_dir.name}.{time.strftime('%Y%m%d-%H%M%S')}.{os.getpid()}"
    ident = read_identity(context_dir)
    os.rename(context_dir, dest)
    record = {"reason": reason, "at": time.time(), "from": str(context_dir), "host": hostname()}
    try:
        atomic_write_json(dest / "QUARANTINE.json", record)
    except OSError:
        pass
    log_line(dest, f"quarantined: {reason}")
    os.mkdir(context_dir, 0o700)
    if ident is not None:
        write_identity(context_dir, ident)
    write_state(
        context_dir, state=QUARANTINED, run_state=run_state, quarantine={**record, "path": str(dest)},
        pending_reason=reason,
    )
    log_line(context_dir, f"quarantined to {dest}: {reason}")
    return dest


def remove_data(context_dir: Path) -> None:
    """Delete a finished context's data but keep state.json + context.json (the tombstone)."""
    for entry in os.scandir(context_dir):
        if entry.name in TOMBSTONE_FILES or entry.name.startswith(EPILOGUE_LOCK):
            continue
        if entry.is_dir(follow_symlinks=False):
            import shutil  # lazy: only removing a context's data; elements start without it

            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)


# ---------------------------------------------------------------------------- the work
def _merge_group(shared: Path, group: list[Target], lock_timeout: float) -> dict[str, Any]:
    """merge_many over one shared database; workflow id -> MergeReport, or an Exception for all."""
    sources = [(t.workflow_id, ContextPaths(t.context_dir).database) for t in group]
    try:
        reports = merge_many(shared, sources, lock_timeout=lock_timeout)
    except LockTimeout as exc:
        return {t.workflow_id: exc for t in group}
    except Exception as exc:  # noqa: BLE001 - one unusable shared DB must not stop the rest
        return {t.workflow_id: exc for t in group}
    return {r.workflow_id: r for r in reports}


def _lost_run_state(target: Target, state: ElementState, opts: Options) -> dict[str, Any]:
    """A RUNNING state whose job ended: the runner was killed before it could record its end."""
    final = opts.scheduler_states.get(target.workflow_id) or st.FAILED
    message = (
        f"the element runner died without recording its end (scheduler: {final}); "
        "killed at the time limit, out of memory or with its node?"
    )
    return {"state": final, "run_state": final, "message": state.message or message, "lost": True,
            "finished_at": time.time()}


def finalize(targets: Iterable[Target], opts: Options | None = None) -> list[Outcome]:
    """Apply each target's policy (see the module docstring); never raises for one bad context."""
    opts = opts or Options()
    targets = list(targets)
    outcomes: dict[str, Outcome] = {}
    locks: dict[str, NfsLock] = {}
    work: list[_Work] = []
    try:
        for t in targets:
            out = _prepare(t, opts, locks)
            if isinstance(out, Outcome):
                outcomes[t.workflow_id] = out
            else:
                work.append(out)

        merge_reports: dict[str, Any] = {}
        groups: dict[Path, list[Target]] = {}
        for w in work:
            t = w.target
            if "merge" in w.policy and t.isolation_mode == "isolated":
                groups.setdefault(Path(t.shared_database or "materials.db"), []).append(t)
        for shared, group in groups.items():
            merge_reports.update(_merge_group(shared, group, opts.lock_timeout))

        for w in work:
            wid = w.target.workflow_id
            try:
                outcomes[wid] = _apply(w, merge_reports.get(wid), opts)
            except Exception as exc:  # noqa: BLE001 - record, go on with the rest
                outcomes[wid] = _pending(w, f"{type(exc).__name__}: {exc}", opts, detail=_traceback())
    finally:
        for lock in locks.values():
            try:
                lock.release()
            except Exception:  # noqa: BLE001 - a quarantined context took its lock file along
                pass
    return [outcomes[t.workflow_id] for t in targets if t.workflow_id in outcomes]


def _outcome(t: Target, before: str, state: str, action: str, reason: str = "", **kw: Any) -> Outcome:
    return Outcome(t.workflow_id, str(t.context_dir), before, state, action, reason, index=t.index, **kw)


@dataclass(repr=False, eq=False)  # private, read field by field: no generated repr/eq to build at start
class _Work:
    """A locked context that needs its policy applied."""

    target: Target
    state: ElementState
    before: str  # its state when this finalizer found it
    run_state: str
    policy: str


def _prepare(t: Target, opts: Options, locks: dict[str, NfsLock]) -> Outcome | _Work:
    """Lock the context and decide: an Outcome (nothing to do / quarantined) or the work to do."""
    ctx = t.context_dir
    if ctx.is_symlink() or not ctx.is_dir():
        return _outcome(t, "MISSING", "MISSING", "skipped", "no context directory")
    state = read_state_strict(ctx)
    if state is not None:
        need, why = wants_finalizing(state, opts, t.workflow_id)
        if not need:
            return _outcome(t, state.state, state.state, why)
    lock = NfsLock(ContextPaths(ctx).epilogue_lock, lifetime=3600.0, timeout=opts.context_lock_timeout, poll=0.05)
    try:
        lock.acquire()
    except LockTimeout:
        before = state.state if state else "UNREADABLE"
        return _outcome(t, before, before, "busy", "another epilogue or merge is finalizing it")
    except OSError as exc:
        before = state.state if state else "UNREADABLE"
        return _outcome(t, before, before, "pending", f"cannot lock the context: {exc}")
    locks[t.workflow_id] = lock
    state = read_state_strict(ctx)  # again, under the lock: another finalizer may have finished
    if state is None:
        reason = "state file is truncated or unreadable"
        try:
            dest = quarantine(ctx, reason)
        except OSError as exc:
            return _outcome(t, "UNREADABLE", "UNREADABLE", "pending", f"{reason}; quarantine failed: {exc}")
        return _outcome(t, "UNREADABLE", QUARANTINED, "quarantined", f"{reason}; moved to {dest}")
    need, why = wants_finalizing(state, opts, t.workflow_id)
    if not need:
        return _outcome(t, state.state, state.state, why)
    if state.removed:
        return _outcome(t, state.state, state.state, "skipped", "data already removed")
    before = str(state.state)
    if before == st.RUNNING:
        lost = _lost_run_state(t, state, opts)
        state = write_state(ctx, **lost)
        log_line(ctx, f"{opts.by}: runner gone while RUNNING; recorded {lost['run_state']}")
    run_state = state.last_run
    if run_state not in st.FINAL_RUN_STATES:
        return _outcome(t, before, before, "skipped", f"run state {run_state} is not final")
    return _Work(t, state, before, run_state, policy_for(t, run_state, opts))


def _pending(w: _Work, reason: str, opts: Options, detail: str = "", **extra: Any) -> Outcome:
    t = w.target
    log_line(t.context_dir, f"{opts.by}: left PENDING_MERGE for `mace merge`: {reason}" + (f"\n{detail}" if detail else ""))
    try:
        write_state(t.context_dir, state=st.PENDING_MERGE, pending_reason=reason, epilogue_error=reason,
                    epilogue={"by": opts.by, "at": time.time(), "error": reason, **extra})
    except OSError:
        pass
    return _outcome(t, w.before, st.PENDING_MERGE, "pending", reason)


def _apply(w: _Work, report: Any, opts: Options) -> Outcome:
    t, state, before, run_state, policy = w.target, w.state, w.before, w.run_state, w.policy
    ctx = t.context_dir
    info: dict[str, Any] = {"policy": policy, "by": opts.by, "at": time.time(), "host": hostname()}
    merged = bool(state.epilogue.get("merged")) and state.state == st.PENDING_MERGE
    merge_dict: dict[str, Any] | None = None
    conflicts = 0
    if "merge" in policy:
        if t.isolation_mode != "isolated":
            merged = True  # shared mode: the steps wrote the shared database themselves
            info["merge"] = {"status": "shared-mode"}
        elif isinstance(report, MergeReport):
            merge_dict = {"status": report.status, "counts": report.counts, "conflicts": len(report.conflicts),
                          "content_hash": report.content_hash, "database": str(t.shared_database)}
            conflicts = len(report.conflicts)
            info["merge"] = merge_dict
            if report.status in ("corrupt", "empty"):
                # a completed isolated element always recorded rows: an empty or missing database
                # means its results are gone, which is never counted as merged (invariant 1)
                what = "corrupt" if report.status == "corrupt" else "missing or empty"
                reason = f"context database is {what}: {report.error or 'no rows to merge'}"
                dest = quarantine(ctx, reason, run_state=run_state)
                return _outcome(t, before, QUARANTINED, "quarantined", f"{reason}; moved to {dest}", merge=merge_dict)
            merged = True
            if conflicts:
                log_line(ctx, f"{opts.by}: {conflicts} material(s) differ from the shared database; kept the "
                              "shared version, see `mace status` (merge_conflicts)")
        else:
            reason = f"merge into {t.shared_database} failed: {report}" if report else "merge did not run"
            if isinstance(report, LockTimeout):
                reason = f"shared database busy: {report}"
            return _pending(w, reason, opts, policy=policy)
    info["merged"] = merged
    archived: str | None = None
    wants_archive = "archive" in policy or (t.cleanup and t.archive_before_cleanup and "merge" in policy)
    if wants_archive:
        try:
            from ..context.archive_store import archive_to  # lazy: tar and S3 only to archive

            record = archive_to(ctx, t.archive_dir or ctx.parent, t.workflow_id, plan=t.plan, index=t.index)
            archived = record.location
            info.update(record.info())
        except OSError as exc:  # disk full, or the object store down / refusing (StorageError)
            reason = f"archiving to {t.archive_dir} failed: {exc}; context kept"
            if "archive" in policy:
                return _pending(w, reason, opts, policy=policy, merged=merged, merge=merge_dict)
            info["cleanup_error"] = reason  # merged: only the cleanup is skipped
            log_line(ctx, f"{opts.by}: {reason}")
    if "archive" in policy and "merge" not in policy:
        new_state = st.ARCHIVED
    elif "merge" in policy:
        new_state = st.MERGED
    else:
        new_state = st.ARCHIVED if archived and policy != "keep" else st.KEPT
    info["archived"] = archived is not None
    action = {"merge": "merged", "archive": "archived", "merge+archive": "merged+archived"}.get(policy, "kept")
    removed = False
    if t.cleanup and new_state in (st.MERGED, st.ARCHIVED) and (archived or not t.archive_before_cleanup):
        removed = True
    # durable only when data is removed next: otherwise a lost MERGED record is proven again by
    # the ledger on the next merge, and skipping the fsync doubles `mace merge` throughput
    write_state(ctx, fsync=removed, state=new_state, epilogue=info, pending_reason=None, epilogue_error=None,
                   **({"conflicts": conflicts} if conflicts else {}))
    log_line(ctx, f"{opts.by}: {run_state} -> {new_state} ({policy})" + (f", archive {archived}" if archived else ""))
    if removed:
        try:
            remove_data(ctx)
            write_state(ctx, removed=True, removed_at=time.time())
        except OSError as exc:
            removed = False
            log_line(ctx, f"{opts.by}: cleanup failed (context kept): {exc}")
    return _outcome(t, str(before), new_state, action, merge=merge_dict, archive=archived, removed=removed,
                    conflicts=conflicts)
