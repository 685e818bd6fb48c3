"""`MaterialDatabase`: the legacy MACE API that existing scripts call, over a safe SQLite connection.

Method names and tables are the upstream contract (see DESIGN.md). What changed underneath:
ids are globally unique text so context databases merge without clashes, every write is one
`BEGIN IMMEDIATE` transaction (all or nothing, no "database is locked" half-way), the journal
mode suits the filesystem, and bad input is an `InputError` that leaves no partial row.
Records come back as plain dicts with their JSON columns decoded.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..config import load_config
from ..errors import InputError
from .journal import connect, write_transaction
from .schema import ALL_TABLES, MATERIAL_CONTENT_COLUMNS, ensure_schema, utc_now

TERMINAL_STATUSES = frozenset({"completed", "failed", "timeout", "cancelled"})

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
    `shared_database`."""
    resolver = _resolver or _builtin_resolver
    return Path(resolver())


def new_id(prefix: str) -> str:
    """A globally unique text id (`calc_<32 hex>`): rows from many databases never collide."""
    return f"{prefix}_{uuid.uuid4().hex}"


# --------------------------------------------------------------------------- validation helpers


def _require_text(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{field}: must be a non-empty string, got {value!r}")
    return value


def _opt_text(value: Any, field: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, os.PathLike):
        return os.fspath(value)  # type: ignore[return-value]
    if not isinstance(value, str):
        raise InputError(f"{field}: must be a string or None, got {type(value).__name__}")
    return value


def _opt_int(value: Any, field: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputError(f"{field}: must be an integer or None, got {value!r}")
    return int(value)


def _opt_float(value: Any, field: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputError(f"{field}: must be a number or None, got {value!r}")
    return float(value)


def _encode_json(value: Any, field: str) -> str:
    """Canonical JSON (sorted keys, compact): equal content gives equal text, so merge can compare."""
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise InputError(f"{field}: must be a dict (JSON object), got {type(value).__name__}")
    try:
        return json.dumps(dict(value), sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{field}: not JSON-serialisable ({exc})") from None


def _property_value(value: Any, field: str = "property_value") -> Any:
    """Numbers and strings are stored as themselves (the column has no type affinity)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, numbers.Integral):
        value = int(value)
        if not -(2**63) <= value < 2**63:
            raise InputError(f"{field}: integer {value} does not fit in 64 bits; store it as a string")
        return value
    if isinstance(value, numbers.Real):
        value = float(value)
        if math.isnan(value):
            raise InputError(f"{field}: NaN cannot be stored (SQLite turns it into NULL); use None")
        return value
    raise InputError(f"{field}: must be a number, a string or None, got {type(value).__name__}")


def decode_row(row: sqlite3.Row) -> dict[str, Any]:
    """Row -> dict; `*_json` columns also appear decoded without the suffix; `extra` is flattened."""
    record = {key: row[key] for key in row.keys()}
    for key in [k for k in record if k.endswith("_json")]:
        try:
            decoded = json.loads(record[key]) if record[key] else {}
        except ValueError:
            decoded = {}
        name = key[: -len("_json")]
        if name == "extra":
            record["extra"] = decoded
            for k, v in decoded.items():
                record.setdefault(k, v)
        else:
            record[name] = decoded
    return record


# --------------------------------------------------------------------------- the database


class MaterialDatabase:
    """Materials, calculations, properties and files of one SQLite database (a context's or
    the shared one). Thread-safe; one connection per instance; use as a context manager."""

    _MATERIAL_FIELDS = frozenset(
        {"formula", "space_group", "dimensionality", "source_type", "source_file", "metadata"}
    )
    _CALC_COLUMN_EXTRAS = frozenset({"input_file", "work_dir", "workflow_id", "calc_type"})

    def __init__(self, db_path: str | os.PathLike[str] | None = None) -> None:
        if db_path is None:
            db_path = default_database_path()
        self.db_path = Path(os.path.expanduser(os.fspath(db_path)))
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = connect(self.db_path)
        self._conn.row_factory = sqlite3.Row
        try:
            ensure_schema(self._conn)
        except BaseException:
            self.close()
            raise

    # ----------------------------------------------------------------- plumbing

    @property
    def connection(self) -> sqlite3.Connection:
        """The underlying connection (autocommit; wrap writes in `write_transaction`)."""
        if self._conn is None:
            raise InputError(f"database {self.db_path} is closed")
        return self._conn

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
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> MaterialDatabase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MaterialDatabase({str(self.db_path)!r})"

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
        with different content an InputError (silently overwriting would lose data)."""
        material_id = _require_text(material_id, "material_id")
        content = {
            "formula": _require_text(formula, "formula"),
            "space_group": _opt_int(space_group, "space_group"),
            "dimensionality": _require_text(dimensionality, "dimensionality"),
            "source_type": _opt_text(source_type, "source_type"),
            "source_file": _opt_text(source_file, "source_file"),
            "metadata_json": _encode_json(metadata, "metadata"),
        }
        with self._tx() as conn:
            existing = conn.execute(
                f"SELECT {', '.join(MATERIAL_CONTENT_COLUMNS)} FROM materials WHERE material_id = ?",
                (material_id,),
            ).fetchone()
            if existing is not None:
                differing = [c for c in MATERIAL_CONTENT_COLUMNS if existing[c] != content[c]]
                if differing:
                    raise InputError(
                        f"material {material_id!r} already exists with different "
                        f"{', '.join(differing)}; use update_material to change it"
                    )
                return material_id
            now = utc_now()
            conn.execute(
                "INSERT INTO materials (material_id, formula, space_group, dimensionality, source_type,"
                " source_file, metadata_json, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (material_id, *(content[c] for c in MATERIAL_CONTENT_COLUMNS), now, now),
            )
        return material_id

    def get_material(self, material_id: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM materials WHERE material_id = ?", (material_id,))

    def get_all_materials(self) -> list[dict[str, Any]]:
        return self._query("SELECT * FROM materials ORDER BY created_at, material_id")

    def update_material(self, material_id: str, **fields: Any) -> None:
        """Change some of formula, space_group, dimensionality, source_type, source_file, metadata."""
        unknown = sorted(set(fields) - self._MATERIAL_FIELDS)
        if unknown:
            raise InputError(
                f"update_material: unknown field(s) {', '.join(unknown)}; "
                f"allowed: {', '.join(sorted(self._MATERIAL_FIELDS))}"
            )
        converters: dict[str, Callable[[Any], Any]] = {
            "formula": lambda v: _require_text(v, "formula"),
            "space_group": lambda v: _opt_int(v, "space_group"),
            "dimensionality": lambda v: _require_text(v, "dimensionality"),
            "source_type": lambda v: _opt_text(v, "source_type"),
            "source_file": lambda v: _opt_text(v, "source_file"),
            "metadata": lambda v: _encode_json(v, "metadata"),
        }
        values = {("metadata_json" if k == "metadata" else k): converters[k](v) for k, v in fields.items()}
        with self._tx() as conn:
            self._require_material(conn, material_id)
            if values:
                assignments = ", ".join(f"{col} = ?" for col in values)
                conn.execute(
                    f"UPDATE materials SET {assignments}, updated_at = ? WHERE material_id = ?",
                    (*values.values(), utc_now(), material_id),
                )

    @staticmethod
    def _require_material(conn: sqlite3.Connection, material_id: Any) -> None:
        if conn.execute("SELECT 1 FROM materials WHERE material_id = ?", (material_id,)).fetchone() is None:
            raise InputError(f"unknown material {material_id!r}: create_material it first")

    @staticmethod
    def _require_calculation(conn: sqlite3.Connection, calc_id: Any) -> None:
        if conn.execute("SELECT 1 FROM calculations WHERE calc_id = ?", (calc_id,)).fetchone() is None:
            raise InputError(f"unknown calculation {calc_id!r}")

    # ----------------------------------------------------------------- calculations

    def create_calculation(
        self,
        material_id: str,
        calc_type: str,
        input_file: str | None = None,
        work_dir: str | None = None,
        settings: Mapping[str, Any] | None = None,
        status: str = "pending",
        workflow_id: str | None = None,
        **extra: Any,
    ) -> str:
        """Record a calculation of an existing material; returns its new `calc_<hex>` id.
        Unknown keyword arguments (e.g. `slurm_job_id`, `priority`) are kept in `extra`."""
        material_id = _require_text(material_id, "material_id")
        row = (
            _require_text(calc_type, "calc_type"),
            _require_text(status, "status"),
            _opt_text(workflow_id, "workflow_id"),
            _opt_text(input_file, "input_file"),
            _opt_text(work_dir, "work_dir"),
            _encode_json(settings, "settings"),
            _encode_json(extra, "extra"),
        )
        calc_id = new_id("calc")
        now = utc_now()
        started = now if status.lower() == "running" else None
        completed = now if status.lower() in TERMINAL_STATUSES else None
        with self._tx() as conn:
            self._require_material(conn, material_id)
            conn.execute(
                "INSERT INTO calculations (calc_id, material_id, calc_type, status, workflow_id, input_file,"
                " work_dir, settings_json, extra_json, created_at, started_at, completed_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (calc_id, material_id, *row, now, started, completed, now),
            )
        return calc_id

    def get_calculation(self, calc_id: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM calculations WHERE calc_id = ?", (calc_id,))

    def update_calculation_status(
        self,
        calc_id: str,
        status: str,
        error_message: str | None = None,
        output_file: str | None = None,
        exit_code: int | None = None,
        runtime_seconds: float | None = None,
        **extra: Any,
    ) -> None:
        """Set a calculation's status (and whichever outcome fields are given).

        `started_at` is stamped when the status becomes running, `completed_at` when it becomes
        completed/failed/timeout/cancelled. `input_file`, `work_dir`, `workflow_id`, `calc_type`
        and `settings` update their columns; other keywords are merged into `extra`.
        """
        status = _require_text(status, "status")
        sets: dict[str, Any] = {"status": status}
        if error_message is not None:
            sets["error_message"] = _opt_text(error_message, "error_message")
        if output_file is not None:
            sets["output_file"] = _opt_text(output_file, "output_file")
        if exit_code is not None:
            sets["exit_code"] = _opt_int(exit_code, "exit_code")
        if runtime_seconds is not None:
            sets["runtime_seconds"] = _opt_float(runtime_seconds, "runtime_seconds")
        for key in [k for k in extra if k in self._CALC_COLUMN_EXTRAS]:
            value = extra.pop(key)
            sets[key] = _require_text(value, key) if key == "calc_type" else _opt_text(value, key)
        if "settings" in extra:
            sets["settings_json"] = _encode_json(extra.pop("settings"), "settings")
        extra_json = _encode_json(extra, "extra") if extra else None
        now = utc_now()
        with self._tx() as conn:
            current = conn.execute(
                "SELECT status, extra_json FROM calculations WHERE calc_id = ?", (calc_id,)
            ).fetchone()
            if current is None:
                raise InputError(f"unknown calculation {calc_id!r}")
            if status.lower() == "running" and str(current["status"]).lower() != "running":
                sets["started_at"] = now
            if status.lower() in TERMINAL_STATUSES:
                sets["completed_at"] = now
            if extra_json is not None:
                merged = json.loads(current["extra_json"] or "{}")
                merged.update(json.loads(extra_json))
                sets["extra_json"] = _encode_json(merged, "extra")
            sets["updated_at"] = now
            assignments = ", ".join(f"{col} = ?" for col in sets)
            conn.execute(
                f"UPDATE calculations SET {assignments} WHERE calc_id = ?", (*sets.values(), calc_id)
            )

    def get_calculations_by_material(self, material_id: str) -> list[dict[str, Any]]:
        return self._query(
            "SELECT * FROM calculations WHERE material_id = ? ORDER BY created_at, calc_id", (material_id,)
        )

    def get_calculations_by_status(self, status: str) -> list[dict[str, Any]]:
        return self._query(
            "SELECT * FROM calculations WHERE status = ? ORDER BY created_at, calc_id", (status,)
        )

    # ----------------------------------------------------------------- properties

    def store_material_property(
        self,
        material_id: str,
        property_name: str,
        property_value: Any,
        calc_id: str | None = None,
        property_unit: str | None = None,
        property_category: str | None = None,
        **extra: Any,
    ) -> str:
        """Store one property value (number or string, kept as given); returns its `prop_<hex>` uid.
        Values are appended, never overwritten: the history of a property is data too."""
        row = (
            _require_text(property_name, "property_name"),
            _property_value(property_value),
            _opt_text(property_unit, "property_unit"),
            _opt_text(property_category, "property_category"),
            _encode_json(extra, "extra"),
        )
        uid = new_id("prop")
        with self._tx() as conn:
            self._require_material(conn, material_id)
            if calc_id is not None:
                self._require_calculation(conn, calc_id)
            conn.execute(
                "INSERT INTO properties (uid, material_id, calc_id, property_name, property_value,"
                " property_unit, property_category, extra_json, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (uid, material_id, calc_id, *row, utc_now()),
            )
        return uid

    def get_material_properties(
        self, material_id: str, property_name: str | None = None
    ) -> list[dict[str, Any]]:
        if property_name is None:
            return self._query(
                "SELECT * FROM properties WHERE material_id = ? ORDER BY created_at, uid", (material_id,)
            )
        return self._query(
            "SELECT * FROM properties WHERE material_id = ? AND property_name = ? ORDER BY created_at, uid",
            (material_id, property_name),
        )

    # ----------------------------------------------------------------- files

    def add_file_record(
        self,
        calc_id: str,
        file_type: str,
        file_path: str | os.PathLike[str],
        file_hash: str | None = None,
        file_size: int | None = None,
    ) -> str:
        """Record a file produced by a calculation; returns its `file_<hex>` uid."""
        row = (
            _require_text(file_type, "file_type"),
            _require_text(_opt_text(file_path, "file_path"), "file_path"),
            _opt_text(file_hash, "file_hash"),
            _opt_int(file_size, "file_size"),
        )
        uid = new_id("file")
        with self._tx() as conn:
            self._require_calculation(conn, calc_id)
            conn.execute(
                "INSERT INTO files (uid, calc_id, file_type, file_path, file_hash, file_size, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (uid, calc_id, *row, utc_now()),
            )
        return uid

    def get_calculation_files(self, calc_id: str) -> list[dict[str, Any]]:
        return self._query("SELECT * FROM files WHERE calc_id = ? ORDER BY created_at, uid", (calc_id,))

    # ----------------------------------------------------------------- summary

    def counts(self) -> dict[str, int]:
        """Rows per table (data and merge bookkeeping), for status output and tests."""
        with self._lock:
            return {
                t: int(self.connection.execute(f"SELECT count(*) FROM {t}").fetchone()[0]) for t in ALL_TABLES
            }
