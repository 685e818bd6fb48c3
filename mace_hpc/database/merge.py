"""Exactly-once merge of context databases into the shared database (DESIGN invariant 2).

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

Rules beyond plain insertion:
- A material that already exists in the shared database with different content (formula,
  space group, dimensionality, source, metadata) is never overwritten: a `merge_conflicts` row
  records both versions (once per workflow and material) and the report lists it.
- A calculation already present is updated only when the incoming row is newer (`updated_at`),
  so re-merging a resubmitted context brings its final status home; properties and files are
  append-only.
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

from ..util.ids import validate_workflow_id
from ..util.nfslock import NfsLock
from .journal import connect, connect_readonly, write_transaction
from .schema import COLUMNS, DATA_TABLES, MATERIAL_CONTENT_COLUMNS, SCHEMA_VERSION, ensure_schema, utc_now

STATUSES = ("merged", "already_merged", "empty", "corrupt")
DEFAULT_BATCH_SIZE = 256
_IN_CHUNK = 500  # host parameters per IN (...) query, well below SQLite's limit


@dataclass
class MergeReport:
    """What happened to one source: `status` is merged | already_merged | empty | corrupt.

    `counts` are rows inserted per table (for already_merged: what the original merge inserted),
    plus `calculations_updated`. `conflicts` lists materials kept in their shared version.
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
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        rows: dict[str, list[tuple[Any, ...]]] = {}
        for table, pk in DATA_TABLES.items():
            if table in tables:
                rows[table] = conn.execute(
                    f"SELECT {', '.join(COLUMNS[table])} FROM {table} ORDER BY {pk}"
                ).fetchall()
            else:
                rows[table] = []
        conn.execute("COMMIT")
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
_CALC_COLS = COLUMNS["calculations"]
_CALC_UPDATED_IDX = _CALC_COLS.index("updated_at")
_INSERT_SQL = {
    table: f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
    f" ON CONFLICT({DATA_TABLES[table]}) DO NOTHING"
    for table, cols in COLUMNS.items()
}
_UPDATE_CALC_SQL = (
    f"UPDATE calculations SET {', '.join(f'{c} = ?' for c in _CALC_COLS[1:])}"
    " WHERE calc_id = ? AND updated_at < ?"
)


def _material_content(row: tuple[Any, ...]) -> dict[str, Any]:
    return {c: row[i] for c, i in zip(MATERIAL_CONTENT_COLUMNS, _MAT_CONTENT_IDX, strict=True)}


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


def _detect_conflicts(conn: sqlite3.Connection, src: _Source, now: str) -> list[dict[str, Any]]:
    incoming = src.rows["materials"]
    shared: dict[str, dict[str, Any]] = {}
    ids = [row[0] for row in incoming]
    for start in range(0, len(ids), _IN_CHUNK):
        chunk = ids[start : start + _IN_CHUNK]
        for row in conn.execute(
            f"SELECT {', '.join(_MAT_COLS)} FROM materials WHERE material_id IN ({', '.join('?' * len(chunk))})",
            chunk,
        ):
            shared[row[0]] = _material_content(row)
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
        counts: dict[str, int] = {}
        for table in DATA_TABLES:
            before = conn.total_changes
            if src.rows[table]:
                conn.executemany(_INSERT_SQL[table], src.rows[table])
            counts[table] = conn.total_changes - before
        before = conn.total_changes
        calcs = src.rows["calculations"]
        if counts["calculations"] < len(calcs):  # some were there already: bring newer versions home
            conn.executemany(_UPDATE_CALC_SQL, [(*row[1:], row[0], row[_CALC_UPDATED_IDX]) for row in calcs])
        counts["calculations_updated"] = conn.total_changes - before
        conn.execute(
            "INSERT INTO merge_ledger (workflow_id, content_hash, merged_at, counts) VALUES (?, ?, ?, ?)",
            (src.workflow_id, src.content_hash, now, _canonical(counts)),
        )
        conn.execute("RELEASE merge_source")
    except sqlite3.Error as exc:
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
    reports: list[MergeReport] = []
    with NfsLock(lock_path(shared_db), lifetime=lock_lifetime, timeout=lock_timeout) as lock:
        conn = connect(shared_db)
        try:
            ensure_schema(conn)
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
