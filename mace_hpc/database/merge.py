"""Exactly-once merge of context databases into the shared database (invariant 2 of docs/architecture.md).

Each source is ATTACHed to the shared connection read-only (`file:…?mode=ro`), checked with
`PRAGMA integrity_check` and its schema version, and copied by SQLite itself into temporary
staging tables (`temp.merge_stage_*`, one read transaction per source: one snapshot); from
there it is hashed and merged with `INSERT … SELECT … ON CONFLICT DO NOTHING`. Its rows never
become Python objects. The shared database keeps a ledger keyed by (workflow_id, content_hash):
a source already in the ledger is skipped, otherwise its rows are copied and its ledger row is
written in the same transaction. So a merge interrupted at any point (even kill -9) leaves all
of a source or none of it, and re-running, or running concurrently, never duplicates or drops a
row.

One merger at a time holds `NfsLock(<shared_db>.lock)`; the ledger check sits inside the
`BEGIN IMMEDIATE` transaction anyway, so correctness does not depend on the lock, only fairness
and NFS safety do. Sources are batched (many per transaction, one fsync per batch) for
throughput, each inside a SAVEPOINT so one bad source does not spoil its batch.

Why staging: SQLite attaches at most ten databases and cannot DETACH one read in a transaction
before it ends, so merging straight from attached sources would commit (fsync) every ten
sources, and every ATTACH makes SQLite prepare each statement of the connection anew. So a
batch's sources are attached ten at a time, all before anything is read, staged, and detached
(a source found corrupt at once: while a corrupt file SQLite has read stays attached, every
statement fails); the batch transaction then reads only the staging tables, with statements
prepared once. The check and the copy read two snapshots of a source: a finished context is
not written any more, and one that became unreadable in between fails its batch (nothing
written) rather than being half read.

The ledger hash (`HASH_PREFIX`, `_hash_lines_sql`) covers each material whole and every other
row as its version, `(uid, updated_at)`: what a merge acts on. Ledgers written before it hold
`content_hash` (over every column, in Python); for a workflow with such rows that hash is
computed too, so a source merged by an older mace-hpc is recognised and not merged again.

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
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..util.ids import validate_workflow_id
from ..util.nfslock import NfsLock
from .journal import connect, connect_readonly, file_uri, write_transaction
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
#: Marks a ledger hash of the current kind (`_versioned_hash`); one without it is `content_hash`.
HASH_PREFIX = "v2:"


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


@dataclass(repr=False, eq=False)  # private, read field by field: no generated repr/eq to build at start
class _Source:
    """One source of a batch: attached as `schema` while it is staged, then rows `src = number`
    of the staging tables."""

    workflow_id: str
    path: Path
    schema: str
    number: int


def lock_path(shared_db: str | os.PathLike[str]) -> Path:
    """The merge lock of a shared database: `<shared_db>.lock` next to it."""
    return Path(os.fspath(shared_db) + ".lock")


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"$bytes": value.hex()}
    raise TypeError(f"unexpected {type(value).__name__} in a database row")


def content_hash(rows: dict[str, list[tuple[Any, ...]]]) -> str:
    """The ledger hash mace-hpc wrote before HASH_PREFIX (SHA-256 over the rows as JSON, in
    primary-key order). Still computed, from rows fetched for it, for a workflow whose ledger has
    hashes of this kind, so that a source merged by an older version is not merged again."""
    tables = [[table, rows.get(table, [])] for table in DATA_TABLES]
    return hashlib.sha256(json.dumps(tables, default=_jsonable, separators=(",", ":")).encode()).hexdigest()


def _stage(table: str) -> str:
    return f"temp.merge_stage_{table}"


#: A batch's sources are copied into these (untyped columns: values kept exactly as read) while
#: attached, then merged from here: statements that read no attached database stay prepared.
_STAGE_TABLES_SQL = tuple(
    f"CREATE TEMP TABLE IF NOT EXISTS merge_stage_{t} (src INTEGER NOT NULL, {', '.join(COLUMNS[t])},"
    f" PRIMARY KEY (src, {key})) WITHOUT ROWID"
    for t, key in DATA_TABLES.items()
)
_STAGE_SQL = {
    t: f"INSERT INTO {_stage(t)} (src, {', '.join(COLUMNS[t])}) SELECT ?, {', '.join(COLUMNS[t])} FROM {{s}}.{t}"
    for t in DATA_TABLES
}


def _hash_lines_sql() -> str:
    """One statement for a source's hash lines, `<table number><JSON array>`: a material whole
    (`quote()` for its INTEGER: json_array would render a REAL there with 15 digits only), any
    other row as its version, `[uid, updated_at]`. That is what a merge acts on: a calculation,
    property or file in the shared database is replaced only by a newer `updated_at` (which the
    `_touch` triggers move on every update), so two contents with the same versions merge alike."""
    materials = ", ".join(c if c != "space_group" else f"quote({c})" for c in COLUMNS["materials"])
    parts = [f"SELECT '0' || json_array({materials}) FROM {_stage('materials')} WHERE src = :src"]
    parts += [
        f"SELECT '{k}' || json_array(uid, updated_at) FROM {_stage(t)} WHERE src = :src"
        for k, t in enumerate(VERSIONED_TABLES, 1)
    ]
    return " UNION ALL ".join(parts)


_HASH_SQL = _hash_lines_sql()
_TABLE_ORDER = ("materials", *VERSIONED_TABLES)
_PLAIN_SQL = {t: f"SELECT {', '.join(COLUMNS[t])} FROM {_stage(t)} WHERE src = ? ORDER BY {key}" for t, key in DATA_TABLES.items()}
_CALC_REFS = ("calc_id", "prerequisite_calc_id")


def _copied_rows_sql(table: str) -> str:
    values, joins = [], []
    for c in COLUMNS[table]:
        if c in _CALC_REFS:
            values.append(f"coalesce(map_{c}.new, s.{c})")
            joins.append(f" LEFT JOIN temp.merge_calc_ids AS map_{c} ON map_{c}.old = s.{c}")
        else:
            values.append(f"s.{c}")
    return f"SELECT {', '.join(values)} FROM {_stage(table)} AS s{''.join(joins)} WHERE s.src = ?"


_COPIED_SQL = {t: _copied_rows_sql(t) for t in DATA_TABLES}
_INSERT_SQL = {
    t: f"INSERT INTO main.{t} ({', '.join(COLUMNS[t])}) {_COPIED_SQL[t]} ON CONFLICT({key}) DO NOTHING"
    for t, key in DATA_TABLES.items()
}
_CALC_MAP_TABLE_SQL = "CREATE TEMP TABLE IF NOT EXISTS merge_calc_ids (old TEXT PRIMARY KEY, new TEXT NOT NULL)"
_CALC_IDS_SQL = (
    f"SELECT s.calc_id, s.uid, known.calc_id, taken.calc_id IS NOT NULL FROM {_stage('calculations')} AS s"
    " LEFT JOIN main.calculations AS known ON known.uid = s.uid"
    " LEFT JOIN main.calculations AS taken ON taken.calc_id = s.calc_id WHERE s.src = ? ORDER BY s.uid"
)
_SHARED_MATERIALS_SQL = (
    f"SELECT s.material_id, {', '.join(f's.{c}' for c in MATERIAL_CONTENT_COLUMNS)},"
    f" {', '.join(f'm.{c}' for c in MATERIAL_CONTENT_COLUMNS)} FROM {_stage('materials')} AS s"
    " JOIN main.materials AS m ON m.material_id = s.material_id WHERE s.src = ? ORDER BY s.material_id"
)

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


def _versioned_hash(conn: sqlite3.Connection, number: int) -> tuple[str, dict[str, int]]:
    """HASH_PREFIX + SHA-256 over the source's hash lines (`_hash_lines_sql`, rendered by SQLite,
    sorted: one order whatever the scan order), and each table's row count."""
    lines = sorted(r[0] for r in conn.execute(_HASH_SQL, {"src": number}))
    heads = [line[0] for line in lines]
    sizes = {table: heads.count(str(k)) for k, table in enumerate(_TABLE_ORDER)}
    return HASH_PREFIX + hashlib.sha256("\n".join(lines).encode()).hexdigest(), sizes


def _check(conn: sqlite3.Connection, schema: str) -> tuple[int, str | None]:
    """(user_version, what is wrong) of an open database: integrity_check, then a newer schema."""
    problems = [r[0] for r in conn.execute(f"PRAGMA {schema}.integrity_check").fetchall()]
    if problems != ["ok"]:
        shown = "; ".join(str(p) for p in problems[:3]) + (" …" if len(problems) > 3 else "")
        return 0, f"integrity_check failed: {shown}"
    version = int(conn.execute(f"PRAGMA {schema}.user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        return version, f"schema version {version} is newer than supported ({SCHEMA_VERSION}); upgrade mace-hpc"
    return version, None


def _migrated_copy(workflow_id: str, path: Path) -> sqlite3.Connection | MergeReport:
    """An in-memory copy of an older (checked) file migrated to the current schema; the file
    itself is never written. Rows without a uid get one derived from the workflow id and their
    local id, so the same source always hashes and merges the same."""
    source = str(path)
    try:
        conn = connect_readonly(path, isolation_level=None)
    except sqlite3.Error as exc:
        return MergeReport(workflow_id, "corrupt", source=source, error=f"cannot open: {exc}")
    try:
        copy = sqlite3.connect(":memory:", isolation_level=None)
        try:
            conn.backup(copy)
            upgrade(copy, uid_seed=workflow_id, backup=False)
        except BaseException:
            copy.close()
            raise
        return copy
    except InputError as exc:
        return MergeReport(workflow_id, "corrupt", source=source, error=str(exc))
    except sqlite3.Error as exc:
        return MergeReport(workflow_id, "corrupt", source=source, error=f"unreadable: {exc}")
    finally:
        conn.close()


def _attach(conn: sqlite3.Connection, src: _Source) -> MergeReport | None:
    """Attach a source as `src.schema`, checked; a report (empty/corrupt), and nothing attached,
    if it cannot be merged.

    Runs outside any transaction, so that a bad source can be detached again (once SQLite
    has met a corrupt attached file, every statement of the connection fails while it stays
    attached, and a file read in a transaction cannot be detached until it ends). A file of the
    current schema stays attached read-only (`mode=ro`); one of an older schema is replaced by
    its `_migrated_copy`, attached as an in-memory database."""
    source = str(src.path)
    if not src.path.exists():
        return MergeReport(src.workflow_id, "empty", source=source, error="no database file (nothing was recorded)")
    try:
        conn.execute(f"ATTACH ? AS {src.schema}", (file_uri(src.path, "ro"),))
    except sqlite3.Error as exc:
        return MergeReport(src.workflow_id, "corrupt", source=source, error=f"cannot open: {exc}")
    try:
        version, error = _check(conn, src.schema)
    except sqlite3.Error as exc:
        version, error = 0, f"unreadable: {exc}"
    if error is None and version == SCHEMA_VERSION:
        return None
    conn.execute(f"DETACH DATABASE {src.schema}")
    if error is not None:
        return MergeReport(src.workflow_id, "corrupt", source=source, error=error)
    copy = _migrated_copy(src.workflow_id, src.path)
    if isinstance(copy, MergeReport):
        return copy
    try:
        data = bytearray(copy.serialize())
    finally:
        copy.close()
    data[18:20] = b"\x01\x01"  # a copy of a WAL file says WAL, which an in-memory database cannot open
    conn.execute(f"ATTACH ':memory:' AS {src.schema}")
    conn.deserialize(data, name=src.schema)
    return None


def _stage_group(conn: sqlite3.Connection, group: list[_Source]) -> list[MergeReport | None]:
    """Attach, check and stage a group of sources (at most as many as SQLite attaches), then
    detach them: a report for each that cannot be merged, None for each staged. All are attached
    before anything is read (every ATTACH makes SQLite prepare each statement anew), and each
    is copied in one read transaction: one snapshot of its tables."""
    try:
        checked = [_attach(conn, src) for src in group]
        conn.execute("BEGIN")
        try:
            for src, report in zip(group, checked, strict=True):
                if report is None:
                    for sql in _STAGE_SQL.values():
                        conn.execute(sql.format(s=src.schema), (src.number,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return checked
    finally:
        _detach_all(conn)


def _detach_all(conn: sqlite3.Connection) -> None:
    for _, name, _ in conn.execute("PRAGMA database_list").fetchall():
        if name not in ("main", "temp"):
            conn.execute(f"DETACH DATABASE {name}")


def _material_content(values: Iterable[Any]) -> dict[str, Any]:
    return {c: material_value(v) for c, v in zip(MATERIAL_CONTENT_COLUMNS, values, strict=True)}


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
    n = len(MATERIAL_CONTENT_COLUMNS)
    conflicts = []
    for row in conn.execute(_SHARED_MATERIALS_SQL, (src.number,)).fetchall():
        new, have = _material_content(row[1 : 1 + n]), _material_content(row[1 + n :])
        if have != new:
            conn.execute(
                "INSERT INTO merge_conflicts (workflow_id, material_id, shared_content, incoming_content,"
                " detected_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT(workflow_id, material_id) DO NOTHING",
                (src.workflow_id, row[0], _canonical(have), _canonical(new), now),
            )
            conflicts.append({"material_id": row[0], "shared": have, "incoming": new, "detected_at": now})
    return conflicts


def _map_calc_ids(conn: sqlite3.Connection, number: int) -> None:
    """Fill temp.merge_calc_ids with the context calc ids whose calculation (same uid) has, or
    gets, another id in the shared database (usually none). Upstream-style ids are only unique
    per database: one already taken by another calculation gets its uid appended
    (deterministic, so a re-merge finds the same row)."""
    rows = conn.execute(_CALC_IDS_SQL, (number,)).fetchall()
    taken = {calc_id for calc_id, _, _, is_taken in rows if is_taken}
    mapping: dict[str, str] = {}
    for calc_id, uid, known, _ in rows:
        if known is not None:
            mapping[calc_id] = known
            continue
        new = calc_id if calc_id not in taken else f"{calc_id}~{uid[:12]}"
        if new in taken:
            new = f"{calc_id}~{uid}"
        taken.add(new)
        mapping[calc_id] = new
    conn.execute("DELETE FROM temp.merge_calc_ids")
    changed = [(old, new) for old, new in mapping.items() if old != new]
    if changed:
        conn.executemany("INSERT INTO temp.merge_calc_ids (old, new) VALUES (?, ?)", changed)


def _update_newer(conn: sqlite3.Connection, table: str, rows: list[tuple[Any, ...]]) -> int:
    cols = COLUMNS[table]
    idx = [cols.index(c) for c in _UPDATED_COLS[table]]
    i_uid, i_updated = cols.index("uid"), cols.index("updated_at")
    before = conn.total_changes
    conn.executemany(_UPDATE_SQL[table], [(*(r[i] for i in idx), r[i_uid], r[i_updated]) for r in rows])
    return conn.total_changes - before


def _merge_one(conn: sqlite3.Connection, src: _Source, now: str) -> MergeReport:
    """Copy one staged source inside the caller's transaction (all of it or, on error, none),
    unless the ledger has its content already."""
    ledger = dict(conn.execute("SELECT content_hash, counts FROM merge_ledger WHERE workflow_id = ?", (src.workflow_id,)))
    digest, sizes = _versioned_hash(conn, src.number)
    if digest not in ledger and any(not h.startswith(HASH_PREFIX) for h in ledger):
        legacy = content_hash({t: conn.execute(sql, (src.number,)).fetchall() for t, sql in _PLAIN_SQL.items()})
        digest = legacy if legacy in ledger else digest
    if digest in ledger:
        return MergeReport(
            src.workflow_id,
            "already_merged",
            counts=json.loads(ledger[digest]),
            conflicts=_recorded_conflicts(conn, src.workflow_id),
            content_hash=digest,
            source=str(src.path),
        )
    if not any(sizes.values()):
        return MergeReport(src.workflow_id, "empty", source=str(src.path))
    conn.execute("SAVEPOINT merge_source")
    try:
        conflicts = _detect_conflicts(conn, src, now)
        _map_calc_ids(conn, src.number)
        counts: dict[str, int] = {}
        updated: dict[str, int] = {}
        for table in DATA_TABLES:
            before = conn.total_changes
            conn.execute(_INSERT_SQL[table], (src.number,))
            counts[table] = conn.total_changes - before
            if table in VERSIONED_TABLES:  # some were there already: bring newer versions home
                rows = conn.execute(_COPIED_SQL[table], (src.number,)).fetchall() if counts[table] < sizes[table] else []
                updated[f"{table}_updated"] = _update_newer(conn, table, rows) if rows else 0
        counts.update(updated)
        conn.execute(
            "INSERT INTO merge_ledger (workflow_id, content_hash, merged_at, counts) VALUES (?, ?, ?, ?)",
            (src.workflow_id, digest, now, _canonical(counts)),
        )
        conn.execute("RELEASE merge_source")
    except sqlite3.IntegrityError as exc:  # the source's rows break a constraint: the source is at fault
        conn.execute("ROLLBACK TO merge_source")
        conn.execute("RELEASE merge_source")
        return MergeReport(
            src.workflow_id,
            "corrupt",
            content_hash=digest,
            source=str(src.path),
            error=f"rows rejected by the shared database: {exc}",
        )
    return MergeReport(
        src.workflow_id,
        "merged",
        counts=counts,
        conflicts=conflicts,
        content_hash=digest,
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
    transaction (staged beforehand: SQLite's in-memory temporary database holds a batch's rows,
    as Python lists did before). Returns one report per source, in input order. Raises InputError
    for an invalid workflow id (before anything is written) and LockTimeout if another merger
    holds the lock longer than `lock_timeout`.
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
        upgrade_file(shared_db)  # an upstream shared database: migrated before we touch it
        conn = connect(shared_db)
        try:
            ensure_schema(conn)
            complete_schema(conn)  # a context database as the target: it gets the ledger and indexes
            conn.execute("PRAGMA temp_store = MEMORY")  # staging: no temporary file (set first: it drops temp tables)
            conn.execute(_CALC_MAP_TABLE_SQL)
            for statement in _STAGE_TABLES_SQL:
                conn.execute(statement)
            group_size = conn.getlimit(sqlite3.SQLITE_LIMIT_ATTACHED)
            refreshed = time.monotonic()
            for start in range(0, len(items), batch_size):
                batch = [_Source(wid, path, f"source{k % group_size}", k) for k, (wid, path) in enumerate(items[start : start + batch_size])]
                try:
                    staged: list[MergeReport | None] = []
                    for first in range(0, len(batch), group_size):
                        staged.extend(_stage_group(conn, batch[first : first + group_size]))
                    now = utc_now()
                    with write_transaction(conn):
                        reports.extend(r or _merge_one(conn, src, now) for src, r in zip(batch, staged, strict=True))
                finally:
                    for table in DATA_TABLES:
                        conn.execute(f"DELETE FROM {_stage(table)}")
                if time.monotonic() - refreshed > lock_lifetime / 4:  # a file rewrite: not every batch
                    lock.refresh()
                    refreshed = time.monotonic()
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
