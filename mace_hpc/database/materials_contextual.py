"""Context-aware MaterialDatabase: resolves to the active workflow's database when isolated.

Resolution order for `ContextualMaterialDatabase()` (and `MaterialDatabase()` once
`enable_contextual_databases()` was called): the innermost active isolated WorkflowContext in this
process; else a job environment carrying MACE_ISOLATION_MODE=isolated with MACE_CONTEXT_DIR (or
MACE_WORKFLOW_ID under the scratch root); else the shared database. Shared mode stays the default.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

from ..config import load_config
from ..errors import InputError
from ..records import env as env_names
from ..records.layout import DATABASE_FILE
from ..util.ids import path_inside, validate_workflow_id
from . import materials
from .materials import MaterialDatabase
from .schema import COLUMNS

# the databases of the workflow contexts active in this process, innermost last; WorkflowContext
# pushes on activation and pops on exit (the database layer never imports the context layer)
_active: list[Path] = []


def push_active_database(path: Path) -> None:
    _active.append(Path(path))


def pop_active_database(path: Path) -> None:
    for i in range(len(_active) - 1, -1, -1):
        if _active[i] == Path(path):
            del _active[i]
            return


ASE_FILE = "structures.db"


def _context_database() -> Path | None:
    """The database of the innermost workflow context active in this process, else of the
    isolated job environment this process runs in; None outside any context."""
    if _active:
        return _active[-1]
    cfg = load_config()
    if cfg["isolation_mode"] == "isolated":
        if os.environ.get(env_names.CONTEXT_DIR):
            return Path(os.environ[env_names.CONTEXT_DIR]) / DATABASE_FILE
        if os.environ.get(env_names.WORKFLOW_ID):
            wf = validate_workflow_id(os.environ[env_names.WORKFLOW_ID], env_names.WORKFLOW_ID)
            directory = path_inside(cfg.path("scratch_root").absolute(), wf)
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            return directory / DATABASE_FILE
    return None


def contextual_database_path() -> Path:
    """Where a database opened without an explicit path should live right now."""
    return _context_database() or load_config().path("shared_database")


def copy_rows(source: sqlite3.Connection, target: MaterialDatabase, table: str, material_id: str) -> int:
    """Copy a material's rows of `table` as they are (same ids and uids; a row already there is
    kept); returns how many were added."""
    cols = ", ".join(COLUMNS[table])
    rows = source.execute(f"SELECT {cols} FROM {table} WHERE material_id = ? ORDER BY rowid", (material_id,)).fetchall()
    with target._tx() as conn:
        before = conn.total_changes
        conn.executemany(f"INSERT OR IGNORE INTO {table} ({cols}) VALUES ({', '.join('?' * len(COLUMNS[table]))})", rows)
        return conn.total_changes - before


class ContextualMaterialDatabase(MaterialDatabase):
    """A MaterialDatabase whose default location follows the active workflow context.

    Upstream's signature: an explicit `db_path` wins; else `workflow_context`'s database; else
    (with `auto_detect_context`) the active context's or the job environment's; else the shared
    database. `ase_db_path` defaults to `structures.db` in the context directory (or the cwd).
    A database found that way (no path, no context) is created on first use, not here.
    """

    def __init__(
        self,
        db_path: str | os.PathLike[str] | None = None,
        ase_db_path: str | os.PathLike[str] | None = None,
        workflow_context: Any = None,
        auto_detect_context: bool = True,
        auto_initialize: bool | None = None,
    ) -> None:
        """`workflow_context` is a WorkflowContext (anything with its `database_path`,
        `directory`, `workflow_id`, `isolation_mode`); this layer does not import the context one."""
        self.workflow_context = workflow_context
        detected = _context_database() if workflow_context is None and auto_detect_context else None
        self._detected = detected is not None
        if auto_initialize is None:  # upstream: a default database that does not exist yet is created on first use
            auto_initialize = db_path is not None or workflow_context is not None or self._detected
        resolved = db_path is None
        if db_path is None:
            if workflow_context is not None:
                db_path = workflow_context.database_path
            else:
                db_path = detected or load_config().path("shared_database")
        if ase_db_path is None:
            ase_db_path = workflow_context.directory / ASE_FILE if workflow_context is not None else ASE_FILE
        shared = os.path.abspath(load_config().path("shared_database"))
        self._isolated = (
            bool(workflow_context.is_isolated)
            if workflow_context is not None
            else self._detected and os.path.abspath(os.path.expanduser(db_path)) != shared
        )
        # a workflow's own database found here (not a path the caller chose) is created without
        # the query indexes (schema.CONTEXT_SCHEMA_STATEMENTS); WorkflowContext creates its own so too
        self._context_schema = self._isolated and resolved
        super().__init__(db_path, ase_db_path, auto_initialize=auto_initialize)
        self.resolved_db_path = str(self.db_path)
        self.resolved_ase_db_path = str(self.ase_db_path)

    @classmethod
    def from_context(
        cls, workflow_context: Any = None, require: bool = False, **kwargs: Any
    ) -> ContextualMaterialDatabase:
        """The database of `workflow_context` (default: the active one); `require=True` makes
        the absence of an active context an error instead of the shared database."""
        if workflow_context is None and require and _context_database() is None:
            raise InputError("no active workflow context: enter one with `with WorkflowContext(...)` first")
        return cls(workflow_context=workflow_context, **kwargs)

    def is_isolated(self) -> bool:
        """True when this database is a workflow's private one (not the shared database)."""
        return bool(self._isolated)

    def get_context_info(self) -> dict[str, Any]:
        """Upstream's summary; a context detected from this process or the job (no object) is
        described by the identity it exported (MACE_WORKFLOW_ID, MACE_ISOLATION_MODE, MACE_CONTEXT_DIR)."""
        ctx = self.workflow_context
        if ctx is not None:
            identity = (ctx.workflow_id, ctx.isolation_mode, str(ctx.directory), str(ctx.state).startswith("active"))
        elif self._detected:
            identity = (
                os.environ.get(env_names.WORKFLOW_ID),
                os.environ.get(env_names.ISOLATION_MODE) or ("isolated" if self._isolated else "shared"),
                os.environ.get(env_names.CONTEXT_DIR),
                True,
            )
        else:
            identity = (None, "shared", None, False)
        workflow_id, mode, directory, active = identity
        return {
            "has_context": ctx is not None or self._detected,
            "workflow_id": workflow_id,
            "isolation_mode": mode,
            "db_path": self.resolved_db_path,
            "ase_db_path": self.resolved_ase_db_path,
            "context_dir": directory,
            "is_active": active,
        }

    def copy_to_context(
        self,
        target_context: Any,
        material_ids: list[str] | None = None,
        include_calculations: bool = True,
        include_properties: bool = True,
    ) -> dict[str, int]:
        """Copy materials (and their calculations and properties) into another context's
        database, keeping each row's identity: merging the copy back adds no duplicates.
        Returns rows copied per table."""
        wanted = None if material_ids is None else set(material_ids)
        materials = [m for m in self.get_all_materials() if wanted is None or m["material_id"] in wanted]
        copied = {"materials": 0, "calculations": 0, "properties": 0}
        with ContextualMaterialDatabase(workflow_context=target_context) as target:
            for m in reversed(materials):  # oldest first, as they were created
                if target.get_material(m["material_id"]) is None:
                    target.create_material(
                        m["material_id"], m["formula"], m["space_group"], m["dimensionality"] or "CRYSTAL",
                        m["source_type"], m["source_file"], m.get("metadata"),
                    )
                    copied["materials"] += 1
                tables = (("calculations", include_calculations), ("properties", include_properties))
                for table, wanted_table in tables:
                    if wanted_table:
                        copied[table] += copy_rows(self.connection, target, table, m["material_id"])
        return copied

    def _workflow_filter(self, workflow_id: str | None) -> str | None:
        if workflow_id is None:
            workflow_id = self.get_context_info()["workflow_id"]
        return workflow_id

    _BY_WORKFLOW = "(workflow_id = ? OR json_extract(settings_json, '$.workflow_id') = ?)"

    def get_workflow_materials(self, workflow_id: str | None = None) -> list[dict[str, Any]]:
        """Materials with a calculation of this workflow (default: the context's; none: all)."""
        workflow_id = self._workflow_filter(workflow_id)
        if not workflow_id:
            return self.get_all_materials()
        return self._query(
            f"SELECT * FROM materials WHERE material_id IN (SELECT material_id FROM calculations WHERE "
            f"{self._BY_WORKFLOW}) ORDER BY created_at DESC, rowid DESC",
            (workflow_id, workflow_id),
        )

    def get_workflow_calculations(self, workflow_id: str | None = None) -> list[dict[str, Any]]:
        """Calculations of this workflow, latest started first (no workflow: the 100 most recent)."""
        workflow_id = self._workflow_filter(workflow_id)
        if not workflow_id:
            return self.get_recent_calculations(limit=100)
        return self._query(
            f"SELECT * FROM calculations WHERE {self._BY_WORKFLOW} ORDER BY started_at DESC, rowid DESC",
            (workflow_id, workflow_id),
        )


def get_contextual_database(db_path: str | os.PathLike[str] | None = None, **kwargs: Any) -> ContextualMaterialDatabase:
    """Upstream's convenience constructor."""
    return ContextualMaterialDatabase(db_path=db_path, **kwargs)


def enable_contextual_databases() -> None:
    """Make every `MaterialDatabase()` opened without a path resolve contextually (process-wide)."""
    materials.set_default_path_resolver(contextual_database_path)


def disable_contextual_databases() -> None:
    materials.set_default_path_resolver(None)
