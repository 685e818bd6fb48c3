"""The materials database schema, in one place, versioned with `PRAGMA user_version`.

It is a superset of upstream MACE's `materials.db` (DjokicMa/MACE, `mace/database/materials.py`):
the same tables and columns with the same meanings, so upstream scripts and their raw SQL keep
working on our files. What we add is what merging many context databases needs:

- `uid` on calculations, properties and files: a globally unique merge identity. Upstream's own
  ids stay local: calc ids are `{material}_{type}_{timestamp}` (two contexts can mint the same
  one) and property/file ids are INTEGER autoincrements. A `DEFAULT` expression fills `uid` even
  when upstream code inserts the row.
- `updated_at` (fixed-width UTC text, compared as text) on the same tables: the newer version of a
  row wins when a context is merged again. A trigger stamps it when upstream code updates a row.
- `workflow_id`, `extra_json`, `runtime_seconds` on calculations; `extra_json` on properties.
- `merge_ledger` and `merge_conflicts` (exactly-once bookkeeping).

Relaxed against upstream, on purpose: `slurm_job_id` is indexed but not UNIQUE and
`prerequisite_calc_id` has no foreign key, so rows from many contexts (or copies of the same
calculation) merge instead of being rejected. Timestamps that upstream defines (`created_at`,
`started_at`, ...) are naive local ISO strings with microseconds, as upstream's callers compare
them with `datetime.now()`. Opening an older database migrates it (see `migrate.py`).
"""

from __future__ import annotations

import os
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from ..util.atomic import temp_file_beside
from .journal import journal_mode_for

SCHEMA_VERSION = 2

#: SQL expression for a new uid (32 hex digits, like `uuid4().hex`).
UID_SQL = "lower(hex(randomblob(16)))"
#: SQL expression for `utc_now()`'s format (SQLite has milliseconds; padded to microseconds).
UTC_NOW_SQL = "strftime('%Y-%m-%dT%H:%M:%f000+00:00', 'now')"
#: `updated_at` given to rows that predate it: older than any real update, so those win.
EPOCH_UTC = "1970-01-01T00:00:00.000000+00:00"

#: Data tables in foreign-key order (parents first), with their merge identity.
DATA_TABLES: dict[str, str] = {
    "materials": "material_id",
    "calculations": "uid",
    "properties": "uid",
    "files": "uid",
}

#: Local surrogate ids (upstream's INTEGER keys): never copied by a merge, the target assigns its own.
LOCAL_IDS: dict[str, str] = {"properties": "property_id", "files": "file_id"}

#: Upstream's workflow bookkeeping tables (kept per database; not merged).
WORKFLOW_TABLES: tuple[str, ...] = ("workflow_templates", "workflow_instances", "workflow_states")

_TABLES: dict[str, str] = {
    "materials": """
        material_id    TEXT PRIMARY KEY NOT NULL,
        formula        TEXT NOT NULL,
        space_group    INTEGER,
        dimensionality TEXT DEFAULT 'CRYSTAL',
        created_at     TEXT NOT NULL,
        updated_at     TEXT NOT NULL,
        source_type    TEXT,
        source_file    TEXT,
        status         TEXT DEFAULT 'active',
        metadata_json  TEXT,
        notes          TEXT""",
    "calculations": f"""
        calc_id              TEXT PRIMARY KEY NOT NULL,
        material_id          TEXT NOT NULL REFERENCES materials(material_id),
        calc_type            TEXT NOT NULL,
        calc_subtype         TEXT,
        status               TEXT DEFAULT 'pending',
        priority             INTEGER DEFAULT 0,
        slurm_job_id         TEXT,
        slurm_state          TEXT,
        created_at           TEXT NOT NULL,
        submitted_at         TEXT,
        started_at           TEXT,
        completed_at         TEXT,
        input_file           TEXT,
        output_file          TEXT,
        job_script           TEXT,
        work_dir             TEXT,
        settings_json        TEXT,
        exit_code            INTEGER,
        error_type           TEXT,
        error_message        TEXT,
        recovery_attempts    INTEGER DEFAULT 0,
        completion_type      TEXT DEFAULT 'first_try',
        prerequisite_calc_id TEXT,
        input_settings_json  TEXT,
        uid                  TEXT NOT NULL UNIQUE DEFAULT ({UID_SQL}),
        workflow_id          TEXT,
        extra_json           TEXT DEFAULT '{{}}',
        runtime_seconds      REAL,
        updated_at           TEXT NOT NULL DEFAULT ({UTC_NOW_SQL})""",
    # property_value has no declared type (upstream: REAL): no affinity, so an int and a float
    # each come back exactly as stored. Text values go to property_value_text, as upstream does.
    "properties": f"""
        property_id         INTEGER PRIMARY KEY AUTOINCREMENT,
        material_id         TEXT NOT NULL REFERENCES materials(material_id),
        calc_id             TEXT REFERENCES calculations(calc_id),
        property_category   TEXT NOT NULL DEFAULT 'General',
        property_name       TEXT NOT NULL,
        property_value,
        property_value_text TEXT,
        property_unit       TEXT,
        confidence          REAL,
        extracted_at        TEXT NOT NULL,
        extractor_script    TEXT,
        uid                 TEXT NOT NULL UNIQUE DEFAULT ({UID_SQL}),
        extra_json          TEXT DEFAULT '{{}}',
        updated_at          TEXT NOT NULL DEFAULT ({UTC_NOW_SQL})""",
    "files": f"""
        file_id    INTEGER PRIMARY KEY AUTOINCREMENT,
        calc_id    TEXT NOT NULL REFERENCES calculations(calc_id),
        file_type  TEXT NOT NULL,
        file_name  TEXT NOT NULL,
        file_path  TEXT NOT NULL,
        file_size  INTEGER,
        created_at TEXT NOT NULL,
        checksum   TEXT,
        uid        TEXT NOT NULL UNIQUE DEFAULT ({UID_SQL}),
        updated_at TEXT NOT NULL DEFAULT ({UTC_NOW_SQL})""",
    "workflow_templates": """
        template_id         TEXT PRIMARY KEY,
        template_name       TEXT NOT NULL,
        description         TEXT,
        workflow_steps_json TEXT NOT NULL,
        created_at          TEXT NOT NULL""",
    "workflow_instances": """
        instance_id           TEXT PRIMARY KEY,
        material_id           TEXT NOT NULL REFERENCES materials(material_id),
        template_id           TEXT REFERENCES workflow_templates(template_id),
        status                TEXT DEFAULT 'active',
        current_step          INTEGER DEFAULT 0,
        started_at            TEXT NOT NULL,
        completed_at          TEXT,
        workflow_config_json  TEXT,
        workflow_scripts_json TEXT""",
    "workflow_states": """
        workflow_id      TEXT PRIMARY KEY,
        material_id      TEXT NOT NULL REFERENCES materials(material_id),
        planned_sequence TEXT NOT NULL,
        completed_steps  TEXT NOT NULL,
        failed_steps     TEXT,
        current_step     INTEGER DEFAULT 0,
        status           TEXT DEFAULT 'active',
        last_updated     TEXT NOT NULL,
        error_count      INTEGER DEFAULT 0,
        recovery_count   INTEGER DEFAULT 0,
        created_at       TEXT NOT NULL,
        notes            TEXT""",
    # Exactly-once bookkeeping: one row per (workflow, content) merged, written in the same
    # transaction as the rows it accounts for.
    "merge_ledger": """
        workflow_id  TEXT NOT NULL,
        content_hash TEXT NOT NULL,
        merged_at    TEXT NOT NULL,
        counts       TEXT NOT NULL,
        PRIMARY KEY (workflow_id, content_hash)""",
    "merge_conflicts": """
        workflow_id      TEXT NOT NULL,
        material_id      TEXT NOT NULL,
        shared_content   TEXT NOT NULL,
        incoming_content TEXT NOT NULL,
        detected_at      TEXT NOT NULL,
        PRIMARY KEY (workflow_id, material_id)""",
}

ALL_TABLES: tuple[str, ...] = tuple(_TABLES)

TABLE_SQL: dict[str, str] = {t: f"CREATE TABLE IF NOT EXISTS {t} ({body}\n    )" for t, body in _TABLES.items()}


def _column_names(body: str) -> tuple[str, ...]:
    return tuple(
        line.split()[0].rstrip(",") for line in body.strip().splitlines() if line.split()[0] != "PRIMARY"
    )


#: Every column of every table, in declaration order.
ALL_COLUMNS: dict[str, tuple[str, ...]] = {t: _column_names(body) for t, body in _TABLES.items()}

#: Columns of each data table that a merge copies (all but the local surrogate ids), in order.
COLUMNS: dict[str, tuple[str, ...]] = {
    t: tuple(c for c in ALL_COLUMNS[t] if c != LOCAL_IDS.get(t)) for t in DATA_TABLES
}

#: Material columns that define it (not timestamps or annotations such as status and notes):
#: tells "the same material created twice" from "a conflicting definition".
MATERIAL_CONTENT_COLUMNS: tuple[str, ...] = (
    "formula",
    "space_group",
    "dimensionality",
    "source_type",
    "source_file",
    "metadata_json",
)



def material_value(value: object) -> object:
    """A material content value as compared for conflicts: no metadata (NULL, upstream) and
    empty metadata ('{}', ours) are the same."""
    return None if value == "{}" else value


#: `INSERT INTO <table> (<COLUMNS>) VALUES (?, ...)` for each data table, in COLUMNS order.
INSERT_SQL: dict[str, str] = {
    t: f"INSERT INTO {t} ({', '.join(c)}) VALUES ({', '.join('?' * len(c))})" for t, c in COLUMNS.items()
}

#: Tables whose rows carry `uid` and `updated_at` (merged by uid, newer version wins).
VERSIONED_TABLES: tuple[str, ...] = ("calculations", "properties", "files")

#: Upstream's indexes by name (so its own `CREATE INDEX IF NOT EXISTS` finds them): what they index.
INDEXES: dict[str, str] = {
    "idx_materials_formula": "materials (formula)",
    "idx_materials_status": "materials (status)",
    "idx_calculations_material": "calculations (material_id)",
    "idx_calculations_status": "calculations (status)",
    "idx_calculations_type": "calculations (calc_type)",
    "idx_calculations_slurm": "calculations (slurm_job_id)",
    "idx_properties_material": "properties (material_id)",
    "idx_properties_name": "properties (property_name)",
    "idx_files_calc": "files (calc_id)",
    "idx_workflow_states_material": "workflow_states (material_id)",
    "idx_workflow_states_status": "workflow_states (status)",
}
INDEX_SQL: tuple[str, ...] = tuple(f"CREATE INDEX IF NOT EXISTS {name} ON {on}" for name, on in INDEXES.items())

#: An update that leaves `updated_at` alone (upstream code, raw SQL) still moves it forward.
TRIGGER_SQL: tuple[str, ...] = tuple(
    f"""CREATE TRIGGER IF NOT EXISTS {t}_touch AFTER UPDATE ON {t} FOR EACH ROW
        WHEN NEW.updated_at IS OLD.updated_at
        BEGIN UPDATE {t} SET updated_at = {UTC_NOW_SQL} WHERE rowid = NEW.rowid; END"""
    for t in VERSIONED_TABLES
)

SCHEMA_STATEMENTS: tuple[str, ...] = (*TABLE_SQL.values(), *INDEX_SQL, *TRIGGER_SQL)

#: Tables only a merge target (the shared database) needs.
MERGE_TABLES: tuple[str, ...] = ("merge_ledger", "merge_conflicts")

#: A context database's schema: every upstream table (same definitions) and the triggers, but
#: neither the query indexes nor the merge tables. A context holds one element's few rows, where
#: an index buys nothing, and each index object costs every merge of it: opening it parses the
#: schema, `integrity_check` walks every index, so it is read ~40 % faster (benchmarks/README.md,
#: "Issue 8: merge throughput recovered"). Upstream code opening it adds its indexes itself
#: (`CREATE INDEX IF NOT EXISTS`); `complete_schema` gives it the rest when it becomes a merge target.
CONTEXT_SCHEMA_STATEMENTS: tuple[str, ...] = (
    *(sql for table, sql in TABLE_SQL.items() if table not in MERGE_TABLES),
    *TRIGGER_SQL,
)


def utc_now() -> str:
    """Fixed-width UTC timestamp (microseconds): sorts as text in time order (merge versions)."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def local_now() -> str:
    """Naive local timestamp with microseconds, upstream's format for `created_at`, `started_at`...:
    `datetime.fromisoformat` of it compares with `datetime.now()`."""
    return datetime.now().isoformat(timespec="microseconds")


def schema_version(conn: sqlite3.Connection, schema: str = "main") -> int:
    return int(conn.execute(f"PRAGMA {schema}.user_version").fetchone()[0])


def ensure_schema(conn: sqlite3.Connection) -> None:
    """Create or migrate this database's schema to SCHEMA_VERSION; idempotent and race-safe.

    The fast path is one PRAGMA read. A new database gets the schema; an older one (upstream
    MACE's, or an earlier mace-hpc's) is migrated in one transaction after a backup copy
    (`migrate.upgrade`); a database from a newer mace-hpc is refused rather than misread.
    """
    if schema_version(conn) == SCHEMA_VERSION:
        return
    from .migrate import upgrade  # lazy: migrate builds on this module

    upgrade(conn)


def complete_schema(conn: sqlite3.Connection) -> None:
    """Give a database of the current version every index and table a shared one has (a context
    database has neither the query indexes nor the merge tables); a no-op on a complete one."""
    present = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'index')")}
    if set(MERGE_TABLES) <= present and set(INDEXES) <= present:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in SCHEMA_STATEMENTS:
            conn.execute(statement)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


_context_template: bytes | None = None


def context_template() -> bytes:
    """The bytes of a new, empty context database (built once per process, in memory)."""
    global _context_template
    if _context_template is None:
        conn = sqlite3.connect(":memory:", isolation_level=None)
        try:
            conn.execute("BEGIN")
            for statement in CONTEXT_SCHEMA_STATEMENTS:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
            _context_template = conn.serialize()
        finally:
            conn.close()
    return _context_template


def create_context_database(path: str | os.PathLike[str]) -> bool:
    """Create `path` as an empty context database (a copy of `context_template()`: one write
    instead of ~20 statements), 0600; True if created. Anything already there (another process
    was first, a symlink) is left alone, as is a filesystem without hard links: the caller's
    normal open then creates or opens the database as before (with the full schema).

    Where the database will use WAL (journal.journal_mode_for), the copy says so in its header
    (bytes 18-19 = 2, SQLite's file format), so the first open finds WAL already set instead of
    switching to it under an exclusive lock (a sixth of an element's database opening)."""
    path = Path(path)
    if os.path.lexists(path):
        return False
    image = context_template()
    if journal_mode_for(path) == "wal":
        image = image[:18] + b"\x02\x02" + image[20:]
    try:
        fd, tmp = temp_file_beside(path)
    except OSError:  # no such or no writable directory: the normal open says so
        return False
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(image)
            fh.flush()
            os.fsync(fh.fileno())
        os.link(tmp, path)  # never replaces: a database created meanwhile wins
    except OSError:
        return False
    finally:
        os.unlink(tmp)
    return True
