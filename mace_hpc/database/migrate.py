"""Bringing an older materials database to the current schema, in place, all or nothing.

Older means upstream MACE's `materials.db` (user_version 0, upstream's tables) or an earlier
mace-hpc one (user_version 1). The upgrade runs in one `BEGIN IMMEDIATE` transaction after a
backup copy is written next to the file (`<name>.backup-<stamp>`), and prints one notice line.
Each data table is rebuilt (renamed, recreated from `schema.TABLE_SQL`, rows copied, old one
dropped), so a migrated file and a new one have exactly the same definitions. If anything fails
the transaction rolls back, the backup is removed and the file is as it was: an InputError says so.

Rows that predate our columns get them here: `uid` derived from the row's local id and a seed
(random for an in-place upgrade; the workflow id when merge upgrades a read-only copy, so the same
source always yields the same uids), `updated_at` = EPOCH_UTC, timezone-aware timestamps turned
into upstream's naive local ones, text property values moved to `property_value_text`.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import sys
import time
from datetime import datetime
from pathlib import Path
from urllib.parse import quote

from ..errors import InputError
from ..util.atomic import temp_file_beside
from ..util.ids import random_uid
from .journal import BUSY_TIMEOUT_S
from .schema import (
    ALL_COLUMNS,
    DATA_TABLES,
    EPOCH_UTC,
    INDEX_SQL,
    SCHEMA_VERSION,
    TABLE_SQL,
    TRIGGER_SQL,
    WORKFLOW_TABLES,
    schema_version,
)

_REBUILT = (*DATA_TABLES, *WORKFLOW_TABLES)
_LOCAL_TS = ("created_at", "updated_at", "submitted_at", "started_at", "completed_at", "extracted_at")

#: How to fill a column from an old table: candidates `(old columns needed, SQL expression)`, the
#: first whose columns all exist wins. Columns not listed copy by name when the old table has them
#: (timestamps through `mace_local_ts`), else take their default.
_RULES: dict[tuple[str, str], list[tuple[frozenset[str], str]]] = {
    # mace-hpc 1 calc ids were globally unique: they are the uid, so rows merged before the
    # upgrade and the same rows merged after it are recognised as the same.
    ("calculations", "uid"): [
        (frozenset({"uid"}), "uid"),
        (frozenset({"extra_json"}), "calc_id"),
        (frozenset(), "mace_uid(:seed, 'calculations', calc_id)"),
    ],
    ("calculations", "updated_at"): [(frozenset({"updated_at"}), "updated_at"), (frozenset(), f"'{EPOCH_UTC}'")],
    ("properties", "uid"): [(frozenset({"uid"}), "uid"), (frozenset(), "mace_uid(:seed, 'properties', property_id)")],
    ("properties", "property_value"): [
        (frozenset({"property_value_text"}), "property_value"),
        (frozenset(), "CASE WHEN typeof(property_value) = 'text' THEN NULL ELSE property_value END"),
    ],
    ("properties", "property_value_text"): [
        (frozenset({"property_value_text"}), "property_value_text"),
        (frozenset(), "CASE WHEN typeof(property_value) = 'text' THEN property_value END"),
    ],
    ("properties", "property_category"): [
        (frozenset({"property_category"}), "COALESCE(property_category, 'General')")
    ],
    ("properties", "extracted_at"): [
        (frozenset({"extracted_at"}), "mace_local_ts(extracted_at)"),
        (frozenset({"created_at"}), "mace_local_ts(created_at)"),
    ],
    ("properties", "updated_at"): [(frozenset({"uid", "created_at"}), "created_at"), (frozenset(), f"'{EPOCH_UTC}'")],
    ("files", "uid"): [(frozenset({"uid"}), "uid"), (frozenset(), "mace_uid(:seed, 'files', file_id)")],
    ("files", "file_name"): [(frozenset({"file_name"}), "file_name"), (frozenset(), "mace_basename(file_path)")],
    ("files", "checksum"): [(frozenset({"checksum"}), "checksum"), (frozenset({"file_hash"}), "file_hash")],
    ("files", "updated_at"): [(frozenset({"uid", "created_at"}), "created_at"), (frozenset(), f"'{EPOCH_UTC}'")],
}


def _derived_uid(seed: str, table: str, key: object) -> str:
    return hashlib.sha256(f"{seed}\0{table}\0{key}".encode()).hexdigest()[:32]


def _local_ts(value: object) -> object:
    """Timezone-aware ISO text -> naive local ISO text (upstream's format); anything else as is."""
    if not isinstance(value, str):
        return value
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return value
    if parsed.tzinfo is None:
        return value
    return parsed.astimezone().replace(tzinfo=None).isoformat(timespec="microseconds")


def _register_functions(conn: sqlite3.Connection) -> None:
    conn.create_function("mace_uid", 3, _derived_uid, deterministic=True)
    conn.create_function("mace_local_ts", 1, _local_ts, deterministic=True)
    conn.create_function("mace_basename", 1, lambda p: os.path.basename(p) if isinstance(p, str) else p)


def _copy_select(table: str, old_columns: set[str], new_columns: tuple[str, ...]) -> tuple[list[str], list[str]]:
    targets, exprs = [], []
    for col in new_columns:
        expr = None
        for needed, candidate in _RULES.get((table, col), []):
            if needed <= old_columns:
                expr = candidate
                break
        if expr is None and col in old_columns:
            expr = f"mace_local_ts({col})" if col in _LOCAL_TS else col
        if expr is not None:
            targets.append(col)
            exprs.append(expr)
    return targets, exprs


def _table_columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]


def _rebuild(conn: sqlite3.Connection, existing: set[str], seed: str) -> None:
    conn.execute("PRAGMA legacy_alter_table = ON")
    try:
        old: dict[str, set[str]] = {}
        for table in _REBUILT:
            if table in existing:
                old[table] = set(_table_columns(conn, table))
                conn.execute(f"ALTER TABLE {table} RENAME TO _mace_old_{table}")
        for statement in TABLE_SQL.values():
            conn.execute(statement)
        for table, columns in old.items():
            targets, exprs = _copy_select(table, columns, ALL_COLUMNS[table])
            conn.execute(
                f"INSERT INTO {table} ({', '.join(targets)}) SELECT {', '.join(exprs)} FROM _mace_old_{table}"
                f" ORDER BY rowid",
                {"seed": seed},
            )
            conn.execute(f"DROP TABLE _mace_old_{table}")
    finally:
        conn.execute("PRAGMA legacy_alter_table = OFF")


def database_file(conn: sqlite3.Connection) -> Path | None:
    """The file behind `conn`'s main database (None for an in-memory one)."""
    for _, name, file in conn.execute("PRAGMA database_list"):
        if name == "main":
            return Path(file) if file else None
    return None


def write_backup(path: Path) -> Path:
    """A consistent copy of the database at `path` next to it (SQLite backup API, then an atomic
    rename), with the same permissions; returns its path."""
    target = path.with_name(f"{path.name}.backup-{time.strftime('%Y%m%d-%H%M%S')}")
    if target.exists():
        target = target.with_name(f"{target.name}-{os.getpid()}")
    fd, tmp = temp_file_beside(path, ".backup.tmp")
    os.close(fd)
    try:
        src = sqlite3.connect("file:" + quote(os.path.abspath(path)) + "?mode=ro", uri=True, timeout=60)
        dst = sqlite3.connect(tmp)
        try:
            src.backup(dst)
        finally:
            dst.close()
            src.close()
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def header_version(path: str | os.PathLike[str]) -> int | None:
    """`user_version` as the file's own header holds it (bytes 60-63), or None when the file is no
    SQLite database: the common case, a database already at this schema, needs no connection here
    (a connection to a WAL database creates and removes its -wal and -shm files: ~1 ms per element
    open). A newer header page still in the WAL is seen by `ensure_schema` on the real connection."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))  # a FIFO must not hang it
        try:
            header = os.pread(fd, 64, 0)
        finally:
            os.close(fd)
    except OSError:
        return None
    if len(header) < 64 or not header.startswith(b"SQLite format 3\0"):
        return None
    return int.from_bytes(header[60:64], "big")


def upgrade_file(path: str | os.PathLike[str]) -> None:
    """Migrate the database at `path` if it is older than SCHEMA_VERSION, through a plain
    connection, before anything else (journal mode, pragmas) touches the file: a database that
    cannot be migrated stays byte-for-byte as it was."""
    if not os.path.exists(path) or header_version(path) == SCHEMA_VERSION:
        return
    conn = sqlite3.connect(os.fspath(path), timeout=BUSY_TIMEOUT_S, isolation_level=None)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        if schema_version(conn) != SCHEMA_VERSION:
            upgrade(conn)
    finally:
        conn.close()


def _describe(version: int) -> str:
    return "upstream MACE" if version == 0 else f"mace-hpc schema {version}"


def upgrade(conn: sqlite3.Connection, *, uid_seed: str | None = None, backup: bool = True) -> Path | None:
    """Create (new database) or migrate `conn`'s schema to SCHEMA_VERSION; returns the backup path.

    Safe against a concurrent opener: the version is re-read inside the write transaction.
    `backup=False` (and no notice) is for throw-away copies, e.g. merge reading an old source.
    """
    restore_fk = conn.execute("PRAGMA foreign_keys").fetchone()[0]
    conn.execute("PRAGMA foreign_keys = OFF")  # tables are rebuilt; only possible outside a transaction
    backup_path: Path | None = None
    path = database_file(conn)
    version = schema_version(conn)
    legacy = False
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = schema_version(conn)
            if version > SCHEMA_VERSION:
                raise InputError(
                    f"database {path}: schema version {version} is newer than this mace-hpc supports "
                    f"({SCHEMA_VERSION}); upgrade mace-hpc"
                )
            existing = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            legacy = version < SCHEMA_VERSION and bool(existing & {"materials", "calculations"})
            if legacy:
                _register_functions(conn)
                if backup and path is not None:
                    backup_path = write_backup(path)
                _rebuild(conn, existing, uid_seed or random_uid())
            if version < SCHEMA_VERSION:
                for statement in (*TABLE_SQL.values(), *INDEX_SQL, *TRIGGER_SQL):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if backup_path is not None:
                backup_path.unlink(missing_ok=True)
            if isinstance(exc, (sqlite3.Error, OSError)):
                raise InputError(
                    f"database {path}: cannot be migrated from {_describe(version)} to mace-hpc schema "
                    f"{SCHEMA_VERSION} ({exc}); it was left unchanged"
                ) from None
            raise
    finally:
        conn.execute(f"PRAGMA foreign_keys = {'ON' if restore_fk else 'OFF'}")
    if legacy and backup:
        print(
            f"mace-hpc: migrated {path} from {_describe(version)} to schema {SCHEMA_VERSION}"
            + (f" (backup: {backup_path})" if backup_path else ""),
            file=sys.stderr,
        )
    return backup_path
