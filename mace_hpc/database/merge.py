"""Exactly-once merge of context databases into the shared database (invariant 2 of docs/architecture.md).

Each source is read through a read-only connection (`file:…?mode=ro`), checked with
`PRAGMA integrity_check`, and hashed (a deterministic SHA-256 over its rows in primary-key
order). The shared database keeps a ledger keyed by (workflow_id, content_hash): a source already
in the ledger is skipped, otherwise its rows are copied with `INSERT … ON CONFLICT DO NOTHING`
and its ledger row is written in the same transaction. So a merge interrupted at any point (even
kill -9) leaves all of a source or none of it, and re-running, or running concurrently, never
duplicates or drops a row.

One merger at a time holds `NfsLock(<shared_db>.lock)`; the ledger check sits inside the
`BEGIN IMMEDIATE` transaction anyway, so correctness does not depend on the lock, only fairness
and NFS safety do. Sources are batched (many per transaction, one fsync per batch) for
throughput, each inside a SAVEPOINT so one bad source does not spoil its batch.

Why sources are not ATTACHed: SQLite cannot DETACH inside a transaction and allows at most ten
attached databases, which would force one transaction (one fsync) per source. Reading a source
into memory costs about the same as ATTACH and keeps batches possible.

Identity: a material is its `material_id` (a name the user chose); a calculation, property or
file is its global `uid` (schema.py). Upstream's local ids are not identities: a property's or
file's INTEGER id is assigned anew by the shared database, and a calculation keeps its
`{material}_{type}_{timestamp}` id unless another calculation already has it there, in which case
it becomes `<id>~<first 12 hex of its uid>` (references from its properties, files and
`prerequisite_calc_id` follow). A source in an older schema (upstream's, or mace-hpc 1) is read
through an in-memory migrated copy; the file itself is never written.

Rules beyond plain insertion:
- A material that already exists in the shared database with different content (formula,
  space group, dimensionality, source, metadata) is never overwritten: a `merge_conflicts` row
  records both versions (once per workflow and material) and the report lists it.
- A calculation, property or file already present is updated only when the incoming row is
  newer (`updated_at`), so re-merging a resubmitted context brings its final state home.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..util.ids import validate_workflow_id
from ..util.nfslock import NfsLock
from .journal import connect, connect_readonly, write_transaction
from .migrate import upgrade, upgrade_file
from .schema import (
    COLUMNS,
    DATA_TABLES,
    MATERIAL_CONTENT_COLUMNS,
    SCHEMA_VERSION,
    VERSIONED_TABLES,
    complete_schema,
    ensure_schema,
    material_value,
    utc_now,
)

STATUSES = ("merged", "already_merged", "empty", "corrupt")
DEFAULT_BATCH_SIZE = 256
_IN_CHUNK = 500  # host parameters per IN (...) query, well below SQLite's limit


@dataclass
class MergeReport:
    """What happened to one source: `status` is merged | already_merged | empty | corrupt.

    `counts` are rows inserted per table (for already_merged: what the original merge inserted),
    plus `<table>_updated` for calculations, properties and files. `conflicts` lists materials kept in their shared version.
    """

    workflow_id: str
    status: str
    counts: dict[str, int] = field(default_factory=dict)
    conflicts: list[dict[str, Any]] = field(default_factory=list)
    content_hash: str | None = None
    source: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Source:
    workflow_id: str
    path: Path
    rows: dict[str, list[tuple[Any, ...]]]
    content_hash: str


def lock_path(shared_db: str | os.PathLike[str]) -> Path:
    """The merge lock of a shared database: `<shared_db>.lock` next to it."""
    return Path(os.fspath(shared_db) + ".lock")


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"$bytes": value.hex()}
    raise TypeError(f"unexpected {type(value).__name__} in a database row")


def content_hash(rows: dict[str, list[tuple[Any, ...]]]) -> str:
    """SHA-256 over every data table's rows in primary-key order: same rows, same hash."""
    tables = [[table, rows.get(table, [])] for table in DATA_TABLES]
    return hashlib.sha256(json.dumps(tables, default=_jsonable, separators=(",", ":")).encode()).hexdigest()


def _migrated_copy(conn: sqlite3.Connection, workflow_id: str) -> sqlite3.Connection:
    """An in-memory copy of `conn`'s database migrated to the current schema (the source file is
    never written). Rows without a uid get one derived from the workflow id and their local id,
    so the same source always hashes and merges the same."""
    copy = sqlite3.connect(":memory:", isolation_level=None)
    try:
        conn.backup(copy)
        upgrade(copy, uid_seed=workflow_id, backup=False)
    except BaseException:
        copy.close()
        raise
    finally:
        conn.close()
    return copy


_SELECT_SQL = {table: f"SELECT {', '.join(COLUMNS[table])} FROM {table} ORDER BY {key}" for table, key in DATA_TABLES.items()}


def _read_rows(conn: sqlite3.Connection) -> dict[str, list[tuple[Any, ...]]]:
    """Every data table's merged columns, in merge-key order (call inside one read snapshot)."""
    try:  # one statement per table: a current source has them all
        return {table: conn.execute(sql).fetchall() for table, sql in _SELECT_SQL.items()}
    except sqlite3.OperationalError:  # an older file may lack a table: read those it has
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        return {table: conn.execute(sql).fetchall() if table in tables else [] for table, sql in _SELECT_SQL.items()}


def _load_source(workflow_id: str, path: Path) -> _Source | MergeReport:
    """Read and check one source; a report (empty/corrupt) if it cannot be merged."""
    source = str(path)
    if not path.exists():
        return MergeReport(
            workflow_id, "empty", source=source, error="no database file (nothing was recorded)"
        )
    try:
        conn = connect_readonly(path, isolation_level=None)
    except sqlite3.Error as exc:
        return MergeReport(workflow_id, "corrupt", source=source, error=f"cannot open: {exc}")
    try:
        conn.execute("BEGIN")  # one snapshot for the check and every table
        problems = [r[0] for r in conn.execute("PRAGMA integrity_check").fetchall()]
        if problems != ["ok"]:
            shown = "; ".join(str(p) for p in problems[:3]) + (" …" if len(problems) > 3 else "")
            return MergeReport(
                workflow_id, "corrupt", source=source, error=f"integrity_check failed: {shown}"
            )
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            return MergeReport(
                workflow_id,
                "corrupt",
                source=source,
                error=f"schema version {version} is newer than supported ({SCHEMA_VERSION}); upgrade mace-hpc",
            )
        if version == SCHEMA_VERSION:
            rows = _read_rows(conn)
            conn.execute("COMMIT")
        else:  # an upstream or older mace-hpc file: read a migrated copy
            conn.execute("COMMIT")
            conn = _migrated_copy(conn, workflow_id)
            rows = _read_rows(conn)
    except InputError as exc:
        return MergeReport(workflow_id, "corrupt", source=source, error=str(exc))
    except sqlite3.Error as exc:
        return MergeReport(workflow_id, "corrupt", source=source, error=f"unreadable: {exc}")
    finally:
        conn.close()
    if not any(rows.values()):
        return MergeReport(workflow_id, "empty", source=source)
    return _Source(workflow_id, path, rows, content_hash(rows))


def _load_batch(batch: list[tuple[str, Path]]) -> list[_Source | MergeReport]:
    return [_load_source(wid, path) for wid, path in batch]


_MAT_COLS = COLUMNS["materials"]
_MAT_CONTENT_IDX = [_MAT_COLS.index(c) for c in MATERIAL_CONTENT_COLUMNS]
_INSERT_SQL = {
    table: f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
    f" ON CONFLICT({DATA_TABLES[table]}) DO NOTHING"
    for table, cols in COLUMNS.items()
}
#: Columns a newer incoming version overwrites: all but the identity (a calculation keeps the id
#: it has in the shared database, which may differ from the context's).
_UPDATED_COLS = {
    t: [c for c in COLUMNS[t] if c not in ("uid", "calc_id" if t == "calculations" else "uid")]
    for t in VERSIONED_TABLES
}
_UPDATE_SQL = {
    t: f"UPDATE {t} SET {', '.join(f'{c} = ?' for c in cols)} WHERE uid = ? AND updated_at < ?"
    for t, cols in _UPDATED_COLS.items()
}


def _bind_null_directly() -> None:
    """Bind None as NULL without the sqlite3 module's adaptation protocol.

    The module binds int, float, str and bytearray directly but sends None through
    `__adapt__`/`__conform__` look-ups that fail with a formatted AttributeError each time: a
    context's rows carry ~200 NULLs, ~12 % of a merge's insert work (benchmarks/README.md, issue
    8). An adapter registered for None finds it in one dict look-up; it returns None, which binds
    NULL exactly as before. Process-wide but without effect on any value; one already registered is kept.
    """
    adapters = getattr(sqlite3, "adapters", None)
    if adapters is not None and (type(None), sqlite3.PrepareProtocol) not in adapters:
        sqlite3.register_adapter(type(None), {}.get)  # {}.get(x) is None for any x, a C call


def _material_content(row: tuple[Any, ...]) -> dict[str, Any]:
    return {c: material_value(row[i]) for c, i in zip(MATERIAL_CONTENT_COLUMNS, _MAT_CONTENT_IDX, strict=True)}


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_jsonable)


def _recorded_conflicts(conn: sqlite3.Connection, workflow_id: str) -> list[dict[str, Any]]:
    return [
        {"material_id": m, "shared": json.loads(s), "incoming": json.loads(i), "detected_at": d}
        for m, s, i, d in conn.execute(
            "SELECT material_id, shared_content, incoming_content, detected_at FROM merge_conflicts"
            " WHERE workflow_id = ? ORDER BY material_id",
            (workflow_id,),
        )
    ]


def _lookup_rows(conn: sqlite3.Connection, sql: str, keys: list[Any]) -> list[tuple[Any, ...]]:
    """Rows of `sql` (with `IN ({})` for the keys), queried in chunks of keys."""
    rows: list[tuple[Any, ...]] = []
    for start in range(0, len(keys), _IN_CHUNK):
        chunk = keys[start : start + _IN_CHUNK]
        rows.extend(conn.execute(sql.format(", ".join("?" * len(chunk))), chunk).fetchall())
    return rows


def _lookup(conn: sqlite3.Connection, sql: str, keys: list[Any]) -> dict[Any, Any]:
    return dict(_lookup_rows(conn, sql, keys))


def _detect_conflicts(conn: sqlite3.Connection, src: _Source, now: str) -> list[dict[str, Any]]:
    incoming = src.rows["materials"]
    sql = f"SELECT {', '.join(_MAT_COLS)} FROM materials WHERE material_id IN ({{}})"
    shared = {row[0]: _material_content(row) for row in _lookup_rows(conn, sql, [row[0] for row in incoming])}
    conflicts = []
    for row in incoming:
        have = shared.get(row[0])
        if have is None:
            continue
        new = _material_content(row)
        if have != new:
            conn.execute(
                "INSERT INTO merge_conflicts (workflow_id, material_id, shared_content, incoming_content,"
                " detected_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT(workflow_id, material_id) DO NOTHING",
                (src.workflow_id, row[0], _canonical(have), _canonical(new), now),
            )
            conflicts.append({"material_id": row[0], "shared": have, "incoming": new, "detected_at": now})
    return conflicts


def _calc_id_map(conn: sqlite3.Connection, calcs: list[tuple[Any, ...]]) -> dict[str, str]:
    """Context calc id -> the id the same calculation (same uid) has, or gets, in the shared
    database, for the ids that differ (rows are copied as they are when none do). Upstream-style ids are only unique per database: one already taken by another
    calculation gets its uid appended (deterministic, so a re-merge finds the same row)."""
    cols = COLUMNS["calculations"]
    i_id, i_uid = cols.index("calc_id"), cols.index("uid")
    known = _lookup(conn, "SELECT uid, calc_id FROM calculations WHERE uid IN ({})", [r[i_uid] for r in calcs])
    taken = set(_lookup(conn, "SELECT calc_id, 1 FROM calculations WHERE calc_id IN ({})", [r[i_id] for r in calcs]))
    mapping: dict[str, str] = {}
    for row in calcs:
        calc_id, uid = row[i_id], row[i_uid]
        if uid in known:
            mapping[calc_id] = known[uid]
            continue
        new = calc_id if calc_id not in taken else f"{calc_id}~{uid[:12]}"
        if new in taken:
            new = f"{calc_id}~{uid}"
        taken.add(new)
        mapping[calc_id] = new
    return {old: new for old, new in mapping.items() if old != new}  # only ids that change: usually none


def _remapped(table: str, rows: list[tuple[Any, ...]], mapping: dict[str, str]) -> list[tuple[Any, ...]]:
    refs = [i for i, c in enumerate(COLUMNS[table]) if c in ("calc_id", "prerequisite_calc_id")]
    if not refs or not mapping:
        return rows
    out = []
    for row in rows:
        values = list(row)
        for i in refs:
            values[i] = mapping.get(values[i], values[i])
        out.append(tuple(values))
    return out


def _update_newer(conn: sqlite3.Connection, table: str, rows: list[tuple[Any, ...]]) -> int:
    cols = COLUMNS[table]
    idx = [cols.index(c) for c in _UPDATED_COLS[table]]
    i_uid, i_updated = cols.index("uid"), cols.index("updated_at")
    before = conn.total_changes
    conn.executemany(_UPDATE_SQL[table], [(*(r[i] for i in idx), r[i_uid], r[i_updated]) for r in rows])
    return conn.total_changes - before


def _merge_one(conn: sqlite3.Connection, src: _Source, now: str) -> MergeReport:
    """Copy one loaded source inside the caller's transaction (all of it or, on error, none)."""
    done = conn.execute(
        "SELECT counts FROM merge_ledger WHERE workflow_id = ? AND content_hash = ?",
        (src.workflow_id, src.content_hash),
    ).fetchone()
    if done is not None:
        return MergeReport(
            src.workflow_id,
            "already_merged",
            counts=json.loads(done[0]),
            conflicts=_recorded_conflicts(conn, src.workflow_id),
            content_hash=src.content_hash,
            source=str(src.path),
        )
    conn.execute("SAVEPOINT merge_source")
    try:
        conflicts = _detect_conflicts(conn, src, now)
        mapping = _calc_id_map(conn, src.rows["calculations"])
        counts: dict[str, int] = {}
        updated: dict[str, int] = {}
        for table in DATA_TABLES:
            rows = _remapped(table, src.rows[table], mapping)
            before = conn.total_changes
            if rows:
                conn.executemany(_INSERT_SQL[table], rows)
            counts[table] = conn.total_changes - before
            if table in VERSIONED_TABLES:
                # some were there already: bring newer versions home
                updated[f"{table}_updated"] = _update_newer(conn, table, rows) if counts[table] < len(rows) else 0
        counts.update(updated)
        conn.execute(
            "INSERT INTO merge_ledger (workflow_id, content_hash, merged_at, counts) VALUES (?, ?, ?, ?)",
            (src.workflow_id, src.content_hash, now, _canonical(counts)),
        )
        conn.execute("RELEASE merge_source")
    except sqlite3.IntegrityError as exc:  # the source's rows break a constraint: the source is at fault
        conn.execute("ROLLBACK TO merge_source")
        conn.execute("RELEASE merge_source")
        return MergeReport(
            src.workflow_id,
            "corrupt",
            content_hash=src.content_hash,
            source=str(src.path),
            error=f"rows rejected by the shared database: {exc}",
        )
    return MergeReport(
        src.workflow_id,
        "merged",
        counts=counts,
        conflicts=conflicts,
        content_hash=src.content_hash,
        source=str(src.path),
    )


def merge_many(
    shared_db: str | os.PathLike[str],
    sources: Iterable[tuple[str, str | os.PathLike[str]]],
    *,
    lock_timeout: float = 60.0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    lock_lifetime: float = 600.0,
) -> list[MergeReport]:
    """Merge `(workflow_id, context_db_path)` sources into `shared_db`, exactly once each.

    One lock acquisition for the whole call; `batch_size` sources per `BEGIN IMMEDIATE`
    transaction. Returns one report per source, in input order. Raises InputError for an
    invalid workflow id (before anything is written) and LockTimeout if another merger holds
    the lock longer than `lock_timeout`.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    items = [(validate_workflow_id(wid, "workflow_id"), Path(os.fspath(p))) for wid, p in sources]
    if not items:
        return []
    shared_db = Path(os.fspath(shared_db))
    shared_db.parent.mkdir(parents=True, exist_ok=True)
    _bind_null_directly()
    reports: list[MergeReport] = []
    with NfsLock(lock_path(shared_db), lifetime=lock_lifetime, timeout=lock_timeout) as lock:
        upgrade_file(shared_db)  # an upstream shared database: migrated before we touch it
        conn = connect(shared_db)
        try:
            ensure_schema(conn)
            complete_schema(conn)  # a context database as the target: it gets the ledger and indexes
            for start in range(0, len(items), batch_size):
                loaded = _load_batch(items[start : start + batch_size])
                now = utc_now()
                with write_transaction(conn):
                    reports.extend(
                        x if isinstance(x, MergeReport) else _merge_one(conn, x, now) for x in loaded
                    )
                lock.refresh()
        finally:
            conn.close()
    return reports


def merge_database(
    shared_db: str | os.PathLike[str],
    source_db: str | os.PathLike[str],
    workflow_id: str,
    *,
    lock_timeout: float = 60.0,
) -> MergeReport:
    """Merge one context database into `shared_db` (`merge_many` of one)."""
    return merge_many(shared_db, [(workflow_id, source_db)], lock_timeout=lock_timeout)[0]


def merge_status(shared_db: str | os.PathLike[str]) -> dict[str, Any]:
    """Ledger and conflict summary for `mace status`; never creates or writes the database."""
    path = Path(os.fspath(shared_db))
    summary: dict[str, Any] = {
        "database": str(path),
        "exists": path.exists(),
        "ledger_entries": 0,
        "workflows_merged": 0,
        "conflicts": 0,
        "workflows_with_conflicts": 0,
        "last_merged_at": None,
    }
    if not summary["exists"]:
        return summary
    conn = connect_readonly(path)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "merge_ledger" in tables:
            n, wids, last = conn.execute(
                "SELECT count(*), count(DISTINCT workflow_id), max(merged_at) FROM merge_ledger"
            ).fetchone()
            summary.update(ledger_entries=n, workflows_merged=wids, last_merged_at=last)
        if "merge_conflicts" in tables:
            n, wids = conn.execute(
                "SELECT count(*), count(DISTINCT workflow_id) FROM merge_conflicts"
            ).fetchone()
            summary.update(conflicts=n, workflows_with_conflicts=wids)
    finally:
        conn.close()
    return summary


def merged_workflow_ids(shared_db: str | os.PathLike[str]) -> set[str]:
    """Workflow ids with at least one ledger entry (for status: which elements are home)."""
    path = Path(os.fspath(shared_db))
    if not path.exists():
        return set()
    conn = connect_readonly(path)
    try:
        return {r[0] for r in conn.execute("SELECT DISTINCT workflow_id FROM merge_ledger")}
    except sqlite3.OperationalError:
        return set()
    finally:
        conn.close()
