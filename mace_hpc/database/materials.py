"""`MaterialDatabase`: upstream MACE's API (DjokicMa/MACE, `mace/database/materials.py`) over a
safe SQLite connection.

The contract is upstream's callers (queue manager, workflow engine and executor, monitor,
recovery, file manager, database utilities, analysis): the same methods and module functions,
the same parameters in the same order, the same keys and orderings in what comes back (newest
first where upstream sorts by `created_at DESC`), and a schema that is a superset of upstream's
(`schema.py`), so `_get_connection()` with upstream's raw SQL works too. What changed underneath:
every write of ours is one `BEGIN IMMEDIATE` transaction (all or nothing, no "database is
locked" half-way), the journal mode suits the filesystem, bad input is an `InputError` that leaves
no partial row, and each row carries a global `uid` so thousands of context databases merge
exactly once. Deliberate differences from upstream are listed in docs/migration.md.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from ..config import load_config
from ..errors import InputError
from ..util.ids import random_uid
from .analysis import AnalysisMixin
from .compat import create_material_id_from_file, extract_formula_from_d12, find_material_by_similarity
from .journal import BUSY_TIMEOUT_S, connect, write_transaction
from .migrate import upgrade_file
from .rows import (
    decode_row,
    encode_json,
    opt_float,
    opt_int,
    opt_text,
    require_text,
    split_property_value,
    unused_id,
)
from .schema import (
    ALL_TABLES,
    MATERIAL_CONTENT_COLUMNS,
    create_context_database,
    ensure_schema,
    local_now,
    material_value,
    utc_now,
)
from .workflow_records import WorkflowRecordsMixin

__all__ = [
    "MaterialConflictError",
    "MaterialDatabase",
    "create_material_id_from_file",
    "decode_row",
    "default_database_path",
    "extract_formula_from_d12",
    "find_material_by_similarity",
    "new_uid",
    "set_default_path_resolver",
]

TERMINAL_STATUSES = frozenset({"completed", "failed", "timeout", "cancelled"})
#: The standard sequence `get_next_calculation_in_workflow` walks (upstream's).
STANDARD_SEQUENCE = ("OPT", "SP", "BAND", "DOSS")

_resolver: Callable[[], Path] | None = None


def _builtin_resolver() -> Path:
    return load_config().path("shared_database")


def set_default_path_resolver(fn: Callable[[], Path] | None) -> None:
    """Replace how `MaterialDatabase()` (no path) finds its database; None restores the default.

    The contextual layer installs a resolver that returns the current workflow context's
    database; it is looked up at construction time, so classes imported earlier honour it.
    """
    global _resolver
    _resolver = fn


def default_database_path() -> Path:
    """The database used when no path is given: the installed resolver's, else config's
    `shared_database` (`materials.db` in the working directory unless configured, as upstream)."""
    resolver = _resolver or _builtin_resolver
    return Path(resolver())


def new_uid() -> str:
    """A globally unique row identity (32 hex digits): rows from many databases never collide."""
    return random_uid()


class MaterialConflictError(InputError, sqlite3.IntegrityError):
    """A material id already exists with a different definition (upstream raised IntegrityError
    for any existing id; an identical re-creation is a no-op here)."""


#: Calculation columns a caller may set through `create_calculation(**extra)` or
#: `update_calculation_status(**extra)`, with their validators; other keywords go to `extra_json`.
_CALC_FIELDS: dict[str, Callable[[Any, str], Any]] = {
    "calc_type": require_text,
    "calc_subtype": opt_text,
    "priority": opt_int,
    "slurm_job_id": lambda v, f: None if v is None else str(v),
    "slurm_state": opt_text,
    "input_file": opt_text,
    "output_file": opt_text,
    "job_script": opt_text,
    "work_dir": opt_text,
    "exit_code": opt_int,
    "error_type": opt_text,
    "error_message": opt_text,
    "recovery_attempts": opt_int,
    "completion_type": opt_text,
    "prerequisite_calc_id": opt_text,
    "workflow_id": opt_text,
    "runtime_seconds": opt_float,
}


def _settings_from_text(text: Any) -> Any:
    try:
        return json.loads(text) if isinstance(text, str) else text
    except ValueError:
        raise InputError(f"settings_json: not valid JSON ({text!r:.60})") from None


def _status_stamps(status: str, now: str) -> dict[str, str]:
    lowered = status.lower()
    if lowered == "running":
        return {"started_at": now}
    if lowered in TERMINAL_STATUSES:
        return {"completed_at": now}
    return {}


class MaterialDatabase(WorkflowRecordsMixin, AnalysisMixin):
    """Materials, calculations, properties and files of one SQLite database (a context's or the
    shared one). Thread-safe; one connection per instance; use as a context manager.

    `ase_db_path` is kept for upstream's signature; no ASE structure database is opened (`ase_db`
    is None). With `auto_initialize=False` nothing is created until the first use.
    """

    #: Create a missing database with the context schema (schema.CONTEXT_SCHEMA_STATEMENTS).
    _context_schema = False

    _MATERIAL_FIELDS = frozenset(
        {"formula", "space_group", "dimensionality", "source_type", "source_file", "metadata", "status", "notes"}
    )

    def __init__(
        self,
        db_path: str | os.PathLike[str] | None = None,
        ase_db_path: str | os.PathLike[str] = "structures.db",
        auto_initialize: bool = True,
    ) -> None:
        if db_path is None:
            db_path = default_database_path()
        self.db_path = Path(os.path.expanduser(os.fspath(db_path)))
        self.ase_db_path = Path(os.path.expanduser(os.fspath(ase_db_path)))
        self.ase_db: Any = None
        self._lock = threading.RLock()
        self.lock = self._lock  # upstream's attribute name
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        if auto_initialize:
            self._open()

    # ----------------------------------------------------------------- plumbing

    def _open(self) -> sqlite3.Connection:
        with self._lock:
            if self._closed:
                raise InputError(f"database {self.db_path} is closed")
            if self._conn is None:
                self.db_path.parent.mkdir(parents=True, exist_ok=True)
                if self._context_schema:
                    create_context_database(self.db_path)
                upgrade_file(self.db_path)
                conn = connect(self.db_path)
                conn.row_factory = sqlite3.Row
                try:
                    ensure_schema(conn)
                except BaseException:
                    conn.close()
                    raise
                self._conn = conn
            return self._conn

    @property
    def _initialized(self) -> bool:
        return self._conn is not None

    @property
    def connection(self) -> sqlite3.Connection:
        """The underlying connection (autocommit; wrap writes in `write_transaction`)."""
        return self._open()

    @contextmanager
    def _get_connection(self) -> Iterator[sqlite3.Connection]:
        """Upstream's raw-SQL door: a fresh connection (rows by name) committed on success and
        rolled back on error. Upstream's column names all exist here (schema.py)."""
        self._open()
        conn = sqlite3.connect(self.db_path, timeout=BUSY_TIMEOUT_S, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            yield conn
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        finally:
            conn.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock, write_transaction(self.connection) as conn:
            yield conn

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        with self._lock:
            return [decode_row(r) for r in self.connection.execute(sql, params).fetchall()]

    def _one(self, sql: str, params: tuple[Any, ...]) -> dict[str, Any] | None:
        rows = self._query(sql, params)
        return rows[0] if rows else None

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> MaterialDatabase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.db_path)!r})"

    @staticmethod
    def _require_material(conn: sqlite3.Connection, material_id: Any) -> None:
        if conn.execute("SELECT 1 FROM materials WHERE material_id = ?", (material_id,)).fetchone() is None:
            raise InputError(f"unknown material {material_id!r}: create_material it first")

    @staticmethod
    def _require_calculation(conn: sqlite3.Connection, calc_id: Any) -> None:
        if conn.execute("SELECT 1 FROM calculations WHERE calc_id = ?", (calc_id,)).fetchone() is None:
            raise InputError(f"unknown calculation {calc_id!r}")

    # ----------------------------------------------------------------- materials

    def create_material(
        self,
        material_id: str,
        formula: str,
        space_group: int | None = None,
        dimensionality: str = "CRYSTAL",
        source_type: str | None = None,
        source_file: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> str:
        """Add a material; re-creating it with identical content is a no-op (reruns are safe),
        with different content a MaterialConflictError (silently overwriting would lose data)."""
        material_id = require_text(material_id, "material_id")
        content = {
            "formula": require_text(formula, "formula"),
            "space_group": opt_int(space_group, "space_group"),
            "dimensionality": require_text(dimensionality, "dimensionality"),
            "source_type": opt_text(source_type, "source_type"),
            "source_file": opt_text(source_file, "source_file"),
            "metadata_json": encode_json(metadata, "metadata"),
        }
        with self._tx() as conn:
            existing = conn.execute(
                f"SELECT {', '.join(MATERIAL_CONTENT_COLUMNS)} FROM materials WHERE material_id = ?",
                (material_id,),
            ).fetchone()
            if existing is not None:
                differing = [c for c in MATERIAL_CONTENT_COLUMNS if material_value(existing[c]) != material_value(content[c])]
                if differing:
                    raise MaterialConflictError(
                        f"material {material_id!r} already exists with different "
                        f"{', '.join(differing)}; use update_material to change it"
                    )
                return material_id
            now = local_now()
            columns = ("material_id", *MATERIAL_CONTENT_COLUMNS, "created_at", "updated_at")
            conn.execute(
                f"INSERT INTO materials ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                (material_id, *content.values(), now, now),
            )
        return material_id

    def get_material(self, material_id: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM materials WHERE material_id = ?", (material_id,))

    def get_all_materials(self) -> list[dict[str, Any]]:
        """All materials, newest first (upstream's order)."""
        return self._query("SELECT * FROM materials ORDER BY created_at DESC, rowid DESC")

    def get_materials_by_status(self, status: str = "active") -> list[dict[str, Any]]:
        return self._query(
            "SELECT * FROM materials WHERE status = ? ORDER BY created_at DESC, rowid DESC", (status,)
        )

    def update_material(self, material_id: str, **fields: Any) -> None:
        """Change some of formula, space_group, dimensionality, source_type, source_file,
        metadata, status, notes."""
        unknown = sorted(set(fields) - self._MATERIAL_FIELDS)
        if unknown:
            raise InputError(
                f"update_material: unknown field(s) {', '.join(unknown)}; "
                f"allowed: {', '.join(sorted(self._MATERIAL_FIELDS))}"
            )
        converters: dict[str, Callable[[Any], Any]] = {
            "formula": lambda v: require_text(v, "formula"),
            "space_group": lambda v: opt_int(v, "space_group"),
            "dimensionality": lambda v: require_text(v, "dimensionality"),
            "metadata": lambda v: encode_json(v, "metadata"),
        }
        values = {
            ("metadata_json" if k == "metadata" else k): converters.get(k, lambda v, k=k: opt_text(v, k))(v)
            for k, v in fields.items()
        }
        with self._tx() as conn:
            self._require_material(conn, material_id)
            if values:
                assignments = ", ".join(f"{col} = ?" for col in values)
                conn.execute(
                    f"UPDATE materials SET {assignments}, updated_at = ? WHERE material_id = ?",
                    (*values.values(), local_now(), material_id),
                )

    # ----------------------------------------------------------------- calculations

    @staticmethod
    def _calc_fields(extra: dict[str, Any]) -> dict[str, Any]:
        """Pop the keywords that are calculation columns out of `extra` (validated)."""
        return {key: _CALC_FIELDS[key](extra.pop(key), key) for key in [k for k in extra if k in _CALC_FIELDS]}

    def create_calculation(
        self,
        material_id: str,
        calc_type: str,
        calc_subtype: str | None = None,
        input_file: str | None = None,
        work_dir: str | None = None,
        settings: Mapping[str, Any] | None = None,
        prerequisite_calc_id: str | None = None,
        priority: int = 0,
        *,
        status: str = "pending",
        **extra: Any,
    ) -> str:
        """Record a calculation of an existing material; returns its id, upstream-style
        `{material}_{type}_{YYYYmmdd_HHMMSSmmm}[_{subtype}]` (unique in this database).

        Keywords naming calculation columns (`workflow_id`, `slurm_job_id`, `job_script`...)
        fill them; any other keyword is kept in `extra`.
        """
        material_id = require_text(material_id, "material_id")
        status = require_text(status, "status")
        extra = {"calc_type": calc_type, "calc_subtype": calc_subtype, "input_file": input_file, "work_dir": work_dir,
                 "prerequisite_calc_id": prerequisite_calc_id, "priority": priority, **extra}
        fields = self._calc_fields(extra)
        if "settings_json" in extra and settings is None:  # upstream's recovery passes the JSON text
            settings = _settings_from_text(extra.pop("settings_json"))
        fields["settings_json"] = encode_json(settings, "settings", empty=None)
        fields["extra_json"] = encode_json(extra, "extra")
        now = local_now()
        stamp = datetime.fromisoformat(now).strftime("%Y%m%d_%H%M%S%f")[:-3]
        base = f"{material_id}_{fields['calc_type']}_{stamp}" + (f"_{calc_subtype}" if calc_subtype else "")
        fields.update(status=status, created_at=now, uid=new_uid(), updated_at=utc_now(), **_status_stamps(status, now))
        if status.lower() == "submitted":
            fields["submitted_at"] = now
        with self._tx() as conn:
            self._require_material(conn, material_id)
            calc_id = unused_id(conn, "calculations", "calc_id", base)
            columns = ("calc_id", "material_id", *fields)
            conn.execute(
                f"INSERT INTO calculations ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                (calc_id, material_id, *fields.values()),
            )
        return calc_id

    def get_calculation(self, calc_id: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM calculations WHERE calc_id = ?", (calc_id,))

    def update_calculation_status(
        self,
        calc_id: str,
        status: str,
        slurm_job_id: str | None = None,
        slurm_state: str | None = None,
        output_file: str | None = None,
        exit_code: int | None = None,
        error_type: str | None = None,
        error_message: str | None = None,
        **extra: Any,
    ) -> None:
        """Set a calculation's status and whichever outcome fields are given (None or empty
        leaves a field as it is, as upstream). An unknown `calc_id` changes nothing, as upstream.

        `slurm_job_id` is recorded only while none is set. `submitted_at` is stamped when the
        status becomes submitted with a job id, `started_at` when it becomes running,
        `completed_at` when it becomes completed/failed/timeout/cancelled. Keywords naming other
        calculation columns (`runtime_seconds`, `work_dir`, `settings`...) update them; any
        other keyword is merged into `extra`.
        """
        status = require_text(status, "status")
        given = {
            "slurm_state": slurm_state,
            "output_file": output_file,
            "exit_code": exit_code,
            "error_type": error_type,
            "error_message": error_message,
        }
        sets: dict[str, Any] = {"status": status}
        sets.update(self._calc_fields({k: v for k, v in given.items() if v is not None and v != ""}))
        sets.update({k: v for k, v in self._calc_fields(extra).items() if v is not None})
        if "settings" in extra:
            sets["settings_json"] = encode_json(extra.pop("settings"), "settings", empty=None)
        job_id = _CALC_FIELDS["slurm_job_id"](slurm_job_id or None, "slurm_job_id")
        now = local_now()
        with self._tx() as conn:
            current = conn.execute(
                "SELECT status, slurm_job_id, extra_json FROM calculations WHERE calc_id = ?", (calc_id,)
            ).fetchone()
            if current is None:
                return
            if job_id and not current["slurm_job_id"]:
                sets["slurm_job_id"] = job_id
            if status == "submitted" and job_id:
                sets["submitted_at"] = now
            if not (status.lower() == "running" and str(current["status"]).lower() == "running"):
                sets.update(_status_stamps(status, now))
            if extra:
                merged = decode_row(current)["extra"]
                merged.update(extra)
                sets["extra_json"] = encode_json(merged, "extra")
            sets["updated_at"] = utc_now()
            assignments = ", ".join(f"{col} = ?" for col in sets)
            conn.execute(f"UPDATE calculations SET {assignments} WHERE calc_id = ?", (*sets.values(), calc_id))

    def update_calculation_settings(self, calc_id: str, settings: Mapping[str, Any], merge: bool = False) -> None:
        """Replace a calculation's settings, or with `merge=True` update the existing ones."""
        with self._tx() as conn:
            row = conn.execute("SELECT settings_json FROM calculations WHERE calc_id = ?", (calc_id,)).fetchone()
            if row is None:
                return
            new = dict(settings)
            if merge:
                new = {**(decode_row(row).get("settings") or {}), **new}
            conn.execute(
                "UPDATE calculations SET settings_json = ?, updated_at = ? WHERE calc_id = ?",
                (encode_json(new, "settings"), utc_now(), calc_id),
            )

    _NEWEST = "ORDER BY created_at DESC, rowid DESC"

    def get_calculation_by_slurm_id(self, slurm_job_id: str) -> dict[str, Any] | None:
        return self._one(f"SELECT * FROM calculations WHERE slurm_job_id = ? {self._NEWEST}", (str(slurm_job_id),))

    def get_calculations_by_status(
        self, status: str | None = None, calc_type: str | None = None, material_id: str | None = None
    ) -> list[dict[str, Any]]:
        """Calculations matching every filter given (none: all), newest first."""
        filters = {"status": status, "calc_type": calc_type, "material_id": material_id}
        used = {k: v for k, v in filters.items() if v}
        where = (" WHERE " + " AND ".join(f"{k} = ?" for k in used)) if used else ""
        return self._query(f"SELECT * FROM calculations{where} {self._NEWEST}", tuple(used.values()))

    def get_calculations_by_material(self, material_id: str) -> list[dict[str, Any]]:
        return self.get_calculations_by_status(material_id=material_id)

    def get_material_calculations(self, material_id: str) -> list[dict[str, Any]]:
        return self.get_calculations_by_status(material_id=material_id)

    def get_all_calculations(self) -> list[dict[str, Any]]:
        return self.get_calculations_by_status()

    def get_recent_calculations(self, limit: int = 20) -> list[dict[str, Any]]:
        return self._query(f"SELECT * FROM calculations {self._NEWEST} LIMIT ?", (int(limit),))

    def get_next_calculation_in_workflow(self, material_id: str) -> str | None:
        """The first of OPT, SP, BAND, DOSS not yet completed for this material (None: all done)."""
        with self._lock:
            done = {
                r[0]
                for r in self.connection.execute(
                    "SELECT calc_type FROM calculations WHERE material_id = ? AND status = 'completed'",
                    (material_id,),
                )
            }
        return next((t for t in STANDARD_SEQUENCE if t not in done), None)

    def cleanup_old_records(self, days_old: int = 30) -> int:
        """Delete failed/cancelled calculations created more than `days_old` days ago, and file
        records left without a calculation; returns the number of calculations deleted.
        (Upstream computed the cutoff with `replace(day=day - days_old)`, which raises.)"""
        cutoff = (datetime.now() - timedelta(days=days_old)).isoformat(timespec="microseconds")
        with self._tx() as conn:
            doomed = "SELECT calc_id FROM calculations WHERE status IN ('failed', 'cancelled') AND created_at < ?"
            conn.execute(f"DELETE FROM files WHERE calc_id IN ({doomed})", (cutoff,))
            conn.execute(f"UPDATE properties SET calc_id = NULL WHERE calc_id IN ({doomed})", (cutoff,))
            deleted = conn.execute(
                "DELETE FROM calculations WHERE status IN ('failed', 'cancelled') AND created_at < ?", (cutoff,)
            ).rowcount
        return int(deleted)

    # ----------------------------------------------------------------- properties

    def store_material_property(
        self,
        material_id: str,
        property_name: str,
        property_value: Any,
        property_category: str | None = "General",
        calc_id: str | None = None,
        property_unit: str | None = None,
        confidence: float | None = None,
        extractor_script: str | None = None,
        **extra: Any,
    ) -> str:
        """Store one property value (a number, kept exactly, or text); returns its global uid.
        Values are appended, never overwritten: the history of a property is data too."""
        value, text = split_property_value(property_value)
        row = {
            "material_id": require_text(material_id, "material_id"),
            "calc_id": calc_id,
            "property_category": opt_text(property_category, "property_category") or "General",
            "property_name": require_text(property_name, "property_name"),
            "property_value": value,
            "property_value_text": text,
            "property_unit": opt_text(property_unit, "property_unit"),
            "confidence": opt_float(confidence, "confidence"),
            "extracted_at": local_now(),
            "extractor_script": opt_text(extractor_script, "extractor_script"),
            "uid": new_uid(),
            "extra_json": encode_json(extra, "extra"),
            "updated_at": utc_now(),
        }
        with self._tx() as conn:
            self._require_material(conn, material_id)
            if calc_id is not None:
                self._require_calculation(conn, calc_id)
            conn.execute(
                f"INSERT INTO properties ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                tuple(row.values()),
            )
        return row["uid"]

    _PROPERTY_ORDER = "ORDER BY property_category, property_name, property_id"

    def get_material_properties(self, material_id: str, property_name: str | None = None) -> list[dict[str, Any]]:
        """A material's properties (upstream's order: category, name; then oldest first)."""
        if property_name is None:
            return self._query(f"SELECT * FROM properties WHERE material_id = ? {self._PROPERTY_ORDER}", (material_id,))
        return self._query(
            f"SELECT * FROM properties WHERE material_id = ? AND property_name = ? {self._PROPERTY_ORDER}",
            (material_id, property_name),
        )

    def get_all_properties(self) -> list[dict[str, Any]]:
        return self._query(
            "SELECT * FROM properties ORDER BY material_id, property_category, property_name, property_id"
        )

    def get_properties_by_name(self, property_name: str) -> list[dict[str, Any]]:
        """One property across materials, with each material's formula, by value."""
        return self._query(
            "SELECT m.material_id, m.formula, p.property_value, p.property_value_text, p.property_unit,"
            " p.calc_id, p.extracted_at FROM properties p JOIN materials m ON p.material_id = m.material_id"
            " WHERE p.property_name = ? ORDER BY p.property_value, p.property_id",
            (property_name,),
        )

    # ----------------------------------------------------------------- files

    def add_file_record(
        self,
        calc_id: str,
        file_type: str,
        file_name: str | os.PathLike[str],
        file_path: str | os.PathLike[str] | None = None,
        checksum: str | None = None,
        *,
        file_size: int | None = None,
    ) -> str:
        """Record a file produced by a calculation (size read from disk when not given); returns
        its global uid. Upstream's form is `(calc_id, file_type, file_name, file_path, checksum)`;
        given only three, the third is the path and the name is its last part. An unknown
        calculation is an InputError."""
        if file_path is None:
            file_path, file_name = file_name, os.path.basename(os.fspath(file_name))
        path = require_text(opt_text(file_path, "file_path"), "file_path")
        if file_size is None and os.path.isfile(path):
            file_size = os.path.getsize(path)
        row = {
            "calc_id": calc_id,
            "file_type": require_text(file_type, "file_type"),
            "file_name": require_text(opt_text(file_name, "file_name"), "file_name"),
            "file_path": path,
            "file_size": opt_int(file_size, "file_size"),
            "created_at": local_now(),
            "checksum": opt_text(checksum, "checksum"),
            "uid": new_uid(),
            "updated_at": utc_now(),
        }
        with self._tx() as conn:
            self._require_calculation(conn, calc_id)
            conn.execute(
                f"INSERT INTO files ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", tuple(row.values())
            )
        return row["uid"]

    def get_calculation_files(self, calc_id: str) -> list[dict[str, Any]]:
        return self._query("SELECT * FROM files WHERE calc_id = ? ORDER BY file_id", (calc_id,))

    # ----------------------------------------------------------------- summary

    def get_database_stats(self) -> dict[str, Any]:
        """Upstream's summary: material count, calculations by status and by type, file size."""
        with self._lock:
            conn = self.connection
            stats: dict[str, Any] = {
                "total_materials": conn.execute("SELECT count(*) FROM materials").fetchone()[0],
                "calculations_by_status": dict(
                    conn.execute("SELECT status, count(*) FROM calculations GROUP BY status").fetchall()
                ),
                "calculations_by_type": dict(
                    conn.execute("SELECT calc_type, count(*) FROM calculations GROUP BY calc_type").fetchall()
                ),
                "total_calculations": conn.execute("SELECT count(*) FROM calculations").fetchone()[0],
                "total_properties": conn.execute("SELECT count(*) FROM properties").fetchone()[0],
            }
        stats["db_size_mb"] = os.path.getsize(self.db_path) / (1024 * 1024)
        return stats

    def counts(self) -> dict[str, int]:
        """Rows per table (data, workflow records and merge bookkeeping), for status and tests."""
        with self._lock:
            return {t: int(self.connection.execute(f"SELECT count(*) FROM {t}").fetchone()[0]) for t in ALL_TABLES}

    def backup_database(self, backup_dir: str | os.PathLike[str] | None = None) -> Path:
        """A consistent copy (SQLite backup API) as `<dir>/materials_backup_<stamp>.db`
        (default dir: ./backups); the ASE file too when there is one."""
        target_dir = Path(backup_dir) if backup_dir is not None else Path.cwd() / "backups"
        target_dir.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now().strftime("%Y%m%d_%H%M%S")
        target = target_dir / f"materials_backup_{stamp}.db"
        dest = sqlite3.connect(target)
        try:
            with self._lock:
                self.connection.backup(dest)
        finally:
            dest.close()
        if self.ase_db_path.is_file():
            import shutil  # lazy: only a backup copies files; elements start without it

            shutil.copy2(self.ase_db_path, target_dir / f"structures_backup_{stamp}.db")
        return target

