"""WorkflowContext: one workflow's private world (directory, database, environment).

Isolated mode gives each workflow its own directory under the scratch root (0700) with its own
SQLite database, so concurrent workflows never contend for one database file. Shared mode keeps
the legacy behaviour: the shared database. Either way, while a context is active its identity is
exported as MACE_WORKFLOW_ID / MACE_ISOLATION_MODE / MACE_CONTEXT_DIR so child processes (steps,
jobs) resolve the same database.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, ClassVar

from ..config import ISOLATION_MODES, Config, effective_cleanup_on_exit, load_config, resolve_scratch_root
from ..database.journal import sync_at_checkpoint
from ..database.materials_contextual import (
    ContextualMaterialDatabase,
    pop_active_database,
    push_active_database,
)
from ..database.merge import merge_database
from ..database.schema import create_context_database
from ..errors import InputError
from ..records import env as env_names
from ..records.identity import ContextIdentity, read_identity, write_identity
from ..records.layout import CONTEXT_SUBDIRS, ContextPaths
from ..util.ids import path_inside, validate_workflow_id
from ..util.private import ensure_private_dir
from . import registry

DB_SUFFIXES = (".db", ".sqlite", ".sqlite3")


def generate_workflow_id(prefix: str = "wf") -> str:
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(3).hex()}"


class WorkflowContext:
    """A workflow's isolated (or shared) resources; use as a context manager.

    Re-using a workflow id that was not cleaned up resumes the same directory and data.
    """

    _stack: ClassVar[list[WorkflowContext]] = []

    def __init__(
        self,
        workflow_id: str | None = None,
        isolation_mode: str | None = None,
        cleanup_on_exit: bool | None = None,
        *,
        archive_results: bool | None = None,
        scratch_root: str | os.PathLike[str] | None = None,
        shared_database: str | os.PathLike[str] | None = None,
        config: Config | None = None,
    ) -> None:
        cfg = config or load_config()
        self.config = cfg
        if workflow_id is None:
            workflow_id = os.environ.get("MACE_WORKFLOW_ID") or generate_workflow_id()
        self.workflow_id = validate_workflow_id(workflow_id)
        mode = isolation_mode or cfg["isolation_mode"]
        if mode not in ISOLATION_MODES:
            raise InputError(f"isolation_mode: {mode!r} is invalid; allowed: {' | '.join(ISOLATION_MODES)}")
        self.isolation_mode: str = mode
        self.cleanup_on_exit = effective_cleanup_on_exit(cfg) if cleanup_on_exit is None else bool(cleanup_on_exit)
        self.archive_results = (
            cfg["context_settings.archive_results"] if archive_results is None else bool(archive_results)
        )
        self.scratch_root = resolve_scratch_root(cfg, scratch_root)
        shared = Path(shared_database).expanduser() if shared_database else cfg.path("shared_database")
        self.shared_database_path = shared.absolute()
        self.directory = path_inside(self.scratch_root, self.workflow_id)
        self.state = "inactive"
        self.archive_path: Path | None = None
        self.last_merge_report: Any = None
        self._db: Any = None
        self._saved_env: dict[str, str | None] = {}
        self._activated_at: float | None = None
        self._depth = 0
        self._ensured: tuple[int, int] | None = None  # (device, inode) of the directory made complete

    # ------------------------------------------------------------------ paths
    @property
    def is_isolated(self) -> bool:
        return self.isolation_mode == "isolated"

    @property
    def paths(self) -> ContextPaths:
        return ContextPaths(self.directory)

    @property
    def database_path(self) -> Path:
        return self.paths.database if self.is_isolated else self.shared_database_path

    @property
    def config_dir(self) -> Path:
        return self.paths.config

    @property
    def calculations_dir(self) -> Path:
        return self.paths.calculations

    @property
    def exports_dir(self) -> Path:
        return self.paths.exports

    def ensure_directory(self) -> Path:
        """Create the context directory (0700, never through a symlink) and its identity file."""
        if self._ensured is not None:  # done by this object already: one lstat, not ten mkdir calls
            try:
                st = os.lstat(self.directory)
                if (st.st_dev, st.st_ino) == self._ensured:
                    return self.directory
            except OSError:
                pass
        self.scratch_root.mkdir(parents=True, exist_ok=True)
        ensure_private_dir(self.directory, "context directory")
        for sub in CONTEXT_SUBDIRS:
            (self.directory / sub).mkdir(mode=0o700, exist_ok=True)
        if not self.paths.identity.exists():
            write_identity(self.directory, ContextIdentity(self.workflow_id, self.isolation_mode))
        st = os.lstat(self.directory)
        self._ensured = (st.st_dev, st.st_ino)
        return self.directory

    # -------------------------------------------------------------- lifecycle
    def __enter__(self) -> WorkflowContext:
        self.activate()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.deactivate(failed=exc_type is not None)

    def activate(self) -> WorkflowContext:
        if self._depth:  # re-entered (`with ctx:` inside `with ctx:`): already set up
            self._depth += 1
            return self
        self._depth = 1
        with registry.holders_lock(self.scratch_root, self.workflow_id):  # not while a last holder cleans up
            self.ensure_directory()
            registry.register(
                self.scratch_root,
                self.workflow_id,
                {"isolation_mode": self.isolation_mode, "directory": str(self.directory),
                 "shared_database": str(self.shared_database_path)},
            )
        values = env_names.context_env(self.workflow_id, self.isolation_mode, str(self.directory))
        self._saved_env = {k: os.environ.get(k) for k in values}
        os.environ.update(values)
        self._activated_at = time.time()
        WorkflowContext._stack.append(self)
        push_active_database(self.database_path)
        self.state = "active"
        return self

    def deactivate(self, failed: bool = False) -> None:
        if self._depth > 1:  # leaving an inner `with` of the same context: the outer one still holds it
            self._depth -= 1
            return
        self._depth = 0
        if self in WorkflowContext._stack:
            WorkflowContext._stack.remove(self)
            pop_active_database(self.database_path)
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_env = {}
        self.close()
        self.state = "failed" if failed else "finished"
        if not self.cleanup_on_exit:  # leaving without cleaning up decides nothing for the others: no lock
            registry.unregister(self.scratch_root, self.workflow_id)
            return
        with registry.holders_lock(self.scratch_root, self.workflow_id):
            registry.unregister(self.scratch_root, self.workflow_id)
            others = registry.other_holders(self.scratch_root, self.workflow_id)
            if others:  # invariant 8: never remove a context another live process still writes to
                who = ", ".join(f"pid {e.get('pid')} on {e.get('host')}" for e in others[:3])
                self.state = "cleanup deferred"
                import logging  # lazy: a rare warning; the element runner must not import logging

                logging.getLogger("mace_hpc").warning("context %s: cleanup deferred to its last holder (still used by %s)",
                             self.workflow_id, who)
                return
            self.cleanup()

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def cleanup(self) -> Path | None:
        """Remove the context directory, archiving it first when `archive_results` is set.

        If archiving fails the directory is kept (nothing is lost) and the error propagates.
        """
        self.close()
        if not self.directory.exists():
            return None
        if self.archive_results:
            from .archive import archive_context  # lazy: only archiving contexts need zip and hashing

            self.archive_path = archive_context(self.directory, self.config.path("archive_dir"), self.workflow_id)
        import shutil  # lazy: only cleaning up a context removes a tree; elements start without it

        shutil.rmtree(self.directory)
        self.state = "cleaned"
        return self.archive_path

    # ---------------------------------------------------------------- results
    def get_database(self) -> Any:
        """The context's MaterialDatabase (isolated) or the shared one (shared mode)."""
        if self._db is None:
            self.ensure_directory()
            if self.is_isolated and self.database_path.is_symlink():
                raise InputError(f"context database {self.database_path} is a symlink; refusing to follow it")
            if self.is_isolated:
                create_context_database(self.database_path)  # without the query indexes: merges ~40 % faster
            self._db = ContextualMaterialDatabase(self.database_path)
            if self.is_isolated:
                sync_at_checkpoint(self._db.connection)  # the shared database keeps every commit synced
        return self._db

    def export_results(self, target: str | os.PathLike[str] | None = None) -> Path:
        """Export this context's results; returns the file written or merged into.

        No target: a JSON file in the context's `exports/`. A `.db` target: rows merged into that
        database exactly once (exporting twice adds nothing). A `.json` target: JSON there.
        """
        from ..database.export import export_json  # lazy: exporting is rare; elements must start fast

        self.get_database()  # the schema exists even when nothing was stored yet
        header = {"workflow_id": self.workflow_id, "isolation_mode": self.isolation_mode}
        if target is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            return export_json(self.database_path, self.exports_dir / f"{self.workflow_id}-{stamp}.json", **header)
        path = Path(target).expanduser().absolute()
        if path.suffix.lower() == ".json":
            return export_json(self.database_path, path, **header)
        if path.suffix.lower() in DB_SUFFIXES:
            if path.resolve() == self.database_path.resolve():
                return path
            self.last_merge_report = merge_database(path, self.database_path, self.workflow_id)
            return path
        raise InputError(f"export target {str(target)!r}: use a .json file or a .db/.sqlite database")

    def get_status(self) -> dict[str, Any]:
        ident = read_identity(self.directory)
        size = 0
        if self.directory.exists():
            for dirpath, _, files in os.walk(self.directory):
                for f in files:
                    try:
                        size += os.lstat(os.path.join(dirpath, f)).st_size
                    except OSError:
                        pass
        counts: dict[str, int] = {}
        if self.database_path.exists():
            from ..database.export import TABLES, dump_database  # lazy: as in export_results

            dump = dump_database(self.database_path)
            counts = {t: len(dump[t]) for t in TABLES}
        return {
            "workflow_id": self.workflow_id,
            "isolation_mode": self.isolation_mode,
            "state": self.state,
            "directory": str(self.directory),
            "exists": self.directory.exists(),
            "database": str(self.database_path),
            "size_bytes": size,
            "counts": counts,
            "created_at": ident.created_at if ident else None,
            "activated_at": self._activated_at,
            "cleanup_on_exit": self.cleanup_on_exit,
            "archive_results": self.archive_results,
        }

    # ------------------------------------------------------- active contexts
    @classmethod
    def current(cls) -> WorkflowContext | None:
        """The innermost context active in this process."""
        return cls._stack[-1] if cls._stack else None

    @classmethod
    def list_active_contexts(cls, scratch_root: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
        """Contexts active in any process on this scratch root; dead processes' entries say 'stale'."""
        root = Path(scratch_root) if scratch_root else load_config().path("scratch_root")
        return registry.list_entries(root.absolute())

    @classmethod
    def get_active_context(
        cls, workflow_id: str, scratch_root: str | os.PathLike[str] | None = None
    ) -> WorkflowContext | None:
        """The active context with this id: this process's object, or a handle on another process's."""
        for ctx in reversed(cls._stack):
            if ctx.workflow_id == workflow_id:
                return ctx
        for entry in cls.list_active_contexts(scratch_root):
            if entry["workflow_id"] == workflow_id and entry["status"] != "stale":
                root = Path(entry.get("directory", "")).parent if entry.get("directory") else scratch_root
                ctx = cls(workflow_id, entry.get("isolation_mode"), cleanup_on_exit=False, scratch_root=root,
                          shared_database=entry.get("shared_database"))
                ctx.state = f"active (pid {entry['pid']} on {entry['host']})"
                return ctx
        return None

    def __repr__(self) -> str:
        return f"WorkflowContext({self.workflow_id!r}, isolation_mode={self.isolation_mode!r}, state={self.state!r})"
