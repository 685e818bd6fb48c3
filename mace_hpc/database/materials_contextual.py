"""Context-aware MaterialDatabase: resolves to the active workflow's database when isolated.

Resolution order for `ContextualMaterialDatabase()` (and `MaterialDatabase()` once
`enable_contextual_databases()` was called): the innermost active isolated WorkflowContext in this
process; else a job environment carrying MACE_ISOLATION_MODE=isolated with MACE_CONTEXT_DIR (or
MACE_WORKFLOW_ID under the scratch root); else the shared database. Shared mode stays the default.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..config import load_config, resolve_scratch_root
from ..util.ids import path_inside, validate_workflow_id
from . import materials
from .materials import MaterialDatabase

DATABASE_FILE = "materials.db"


def contextual_database_path() -> Path:
    """Where a database opened without an explicit path should live right now."""
    from ..workflow.context import WorkflowContext

    ctx = WorkflowContext.current()
    if ctx is not None:
        return ctx.database_path
    cfg = load_config()
    if cfg["isolation_mode"] == "isolated":
        if os.environ.get("MACE_CONTEXT_DIR"):
            return Path(os.environ["MACE_CONTEXT_DIR"]) / DATABASE_FILE
        if os.environ.get("MACE_WORKFLOW_ID"):
            wf = validate_workflow_id(os.environ["MACE_WORKFLOW_ID"], "MACE_WORKFLOW_ID")
            directory = path_inside(resolve_scratch_root(cfg), wf)
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            return directory / DATABASE_FILE
    return cfg.path("shared_database")


class ContextualMaterialDatabase(MaterialDatabase):
    """A MaterialDatabase whose default location follows the active workflow context."""

    def __init__(self, db_path: str | os.PathLike[str] | None = None) -> None:
        super().__init__(contextual_database_path() if db_path is None else db_path)


def enable_contextual_databases() -> None:
    """Make every `MaterialDatabase()` opened without a path resolve contextually (process-wide)."""
    materials.set_default_path_resolver(contextual_database_path)


def disable_contextual_databases() -> None:
    materials.set_default_path_resolver(None)
