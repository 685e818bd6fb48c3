"""The materials database schema, in one place, versioned with `PRAGMA user_version`.

Every database mace-hpc touches (a context's `materials.db`, the shared one, a merge target) is
created from these statements, so merging is a plain column-for-column copy. Ids are globally
unique text (`calc_<hex>`, `prop_<hex>`, `file_<hex>`) so rows from thousands of context
databases merge without renumbering. Timestamps are fixed-width UTC ISO strings, so comparing
them as text orders them in time (merge relies on this for calculation updates).
"""

from __future__ import annotations

import sqlite3
from datetime import datetime, timezone

from ..errors import InputError

SCHEMA_VERSION = 1

#: Data tables in foreign-key order (parents first), with their primary key.
DATA_TABLES: dict[str, str] = {
    "materials": "material_id",
    "calculations": "calc_id",
    "properties": "uid",
    "files": "uid",
}

#: Columns of each data table, in declaration order (merge copies exactly these).
COLUMNS: dict[str, tuple[str, ...]] = {
    "materials": (
        "material_id",
        "formula",
        "space_group",
        "dimensionality",
        "source_type",
        "source_file",
        "metadata_json",
        "created_at",
        "updated_at",
    ),
    "calculations": (
        "calc_id",
        "material_id",
        "calc_type",
        "status",
        "workflow_id",
        "input_file",
        "output_file",
        "work_dir",
        "settings_json",
        "extra_json",
        "error_message",
        "exit_code",
        "runtime_seconds",
        "created_at",
        "started_at",
        "completed_at",
        "updated_at",
    ),
    "properties": (
        "uid",
        "material_id",
        "calc_id",
        "property_name",
        "property_value",
        "property_unit",
        "property_category",
        "extra_json",
        "created_at",
    ),
    "files": ("uid", "calc_id", "file_type", "file_path", "file_hash", "file_size", "created_at"),
}

#: Material columns that make up its identity-independent content (timestamps excluded), used to
#: tell "the same material created twice" from "a conflicting definition".
MATERIAL_CONTENT_COLUMNS: tuple[str, ...] = tuple(
    c for c in COLUMNS["materials"] if c not in ("material_id", "created_at", "updated_at")
)

#: `INSERT INTO <table> (<COLUMNS>) VALUES (?, ...)` for each data table, in COLUMNS order.
INSERT_SQL: dict[str, str] = {
    t: f"INSERT INTO {t} ({', '.join(c)}) VALUES ({', '.join('?' * len(c))})" for t, c in COLUMNS.items()
}

SCHEMA_STATEMENTS: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS materials (
        material_id    TEXT PRIMARY KEY NOT NULL CHECK (length(material_id) > 0),
        formula        TEXT NOT NULL,
        space_group    INTEGER,
        dimensionality TEXT NOT NULL DEFAULT 'CRYSTAL',
        source_type    TEXT,
        source_file    TEXT,
        metadata_json  TEXT NOT NULL DEFAULT '{}',
        created_at     TEXT NOT NULL,
        updated_at     TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS calculations (
        calc_id         TEXT PRIMARY KEY NOT NULL,
        material_id     TEXT NOT NULL REFERENCES materials(material_id),
        calc_type       TEXT NOT NULL,
        status          TEXT NOT NULL DEFAULT 'pending',
        workflow_id     TEXT,
        input_file      TEXT,
        output_file     TEXT,
        work_dir        TEXT,
        settings_json   TEXT NOT NULL DEFAULT '{}',
        extra_json      TEXT NOT NULL DEFAULT '{}',
        error_message   TEXT,
        exit_code       INTEGER,
        runtime_seconds REAL,
        created_at      TEXT NOT NULL,
        started_at      TEXT,
        completed_at    TEXT,
        updated_at      TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS calculations_by_material ON calculations(material_id)",
    "CREATE INDEX IF NOT EXISTS calculations_by_status ON calculations(status)",
    # property_value has no declared type on purpose: no affinity, so an int, a float and a
    # string each come back exactly as stored (a TEXT or REAL column would convert them).
    """CREATE TABLE IF NOT EXISTS properties (
        uid               TEXT PRIMARY KEY NOT NULL,
        material_id       TEXT NOT NULL REFERENCES materials(material_id),
        calc_id           TEXT REFERENCES calculations(calc_id),
        property_name     TEXT NOT NULL,
        property_value,
        property_unit     TEXT,
        property_category TEXT,
        extra_json        TEXT NOT NULL DEFAULT '{}',
        created_at        TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS properties_by_material ON properties(material_id, property_name)",
    """CREATE TABLE IF NOT EXISTS files (
        uid        TEXT PRIMARY KEY NOT NULL,
        calc_id    TEXT NOT NULL REFERENCES calculations(calc_id),
        file_type  TEXT NOT NULL,
        file_path  TEXT NOT NULL,
        file_hash  TEXT,
        file_size  INTEGER,
        created_at TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS files_by_calc ON files(calc_id)",
    # Exactly-once bookkeeping: one row per (workflow, content) merged; written in the same
    # transaction as the rows it accounts for.
    """CREATE TABLE IF NOT EXISTS merge_ledger (
        workflow_id  TEXT NOT NULL,
        content_hash TEXT NOT NULL,
        merged_at    TEXT NOT NULL,
        counts       TEXT NOT NULL,
        PRIMARY KEY (workflow_id, content_hash)
    )""",
    """CREATE TABLE IF NOT EXISTS merge_conflicts (
        workflow_id      TEXT NOT NULL,
        material_id      TEXT NOT NULL,
        shared_content   TEXT NOT NULL,
        incoming_content TEXT NOT NULL,
        detected_at      TEXT NOT NULL,
        PRIMARY KEY (workflow_id, material_id)
    )""",
)

ALL_TABLES: tuple[str, ...] = (*DATA_TABLES, "merge_ledger", "merge_conflicts")


def utc_now() -> str:
    """Fixed-width UTC timestamp (microseconds): sorts as text in time order."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def schema_version(conn: sqlite3.Connection, schema: str = "main") -> int:
    return int(conn.execute(f"PRAGMA {schema}.user_version").fetchone()[0])


def ensure_schema(conn: sqlite3.Connection) -> None:
    """Create the schema if this database does not have it yet; idempotent and race-safe.

    The fast path is one PRAGMA read. Creation runs in a `BEGIN IMMEDIATE` transaction and
    re-checks the version inside it, so two processes opening a new database at once are fine.
    A database from a newer mace-hpc is refused rather than silently misread.
    """
    version = schema_version(conn)
    if version == SCHEMA_VERSION:
        return
    if version > SCHEMA_VERSION:
        raise InputError(
            f"database schema version {version} is newer than this mace-hpc supports "
            f"({SCHEMA_VERSION}); upgrade mace-hpc"
        )
    conn.execute("BEGIN IMMEDIATE")
    try:
        if schema_version(conn) < SCHEMA_VERSION:
            for statement in SCHEMA_STATEMENTS:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
