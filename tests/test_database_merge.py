"""Exactly-once merge: ledger, conflicts, corrupt sources, 16 concurrent mergers, kill -9 at random."""

from __future__ import annotations

import multiprocessing
import os
import random
import shutil
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from mace_hpc.database.materials import MaterialDatabase
from mace_hpc.database.merge import (
    HASH_PREFIX,
    MergeReport,
    content_hash,
    lock_path,
    merge_database,
    merge_many,
    merge_status,
    merged_workflow_ids,
)
from mace_hpc.database.schema import (
    COLUMNS,
    DATA_TABLES,
    INDEXES,
    MERGE_TABLES,
    create_context_database,
    ensure_schema,
)
from mace_hpc.errors import InputError
from mace_hpc.util.nfslock import LockTimeout, NfsLock

FORK = multiprocessing.get_context("fork")
N_CONTEXTS = 200
T0 = "2024-01-01T00:00:00.000000+00:00"


def build_context(
    path: Path, i: int, n_materials: int = 3, calcs_per_material: int = 1, props_per_calc: int = 2
) -> None:
    """A context database with deterministic rows (fast: one transaction, no fsync).

    Every context also holds the same `Si` material (identical content and timestamps), which
    must merge once without being reported as a conflict.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if i % 2:  # odd contexts as elements create them (no query indexes), even ones with the full schema
        assert create_context_database(path)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = DELETE")
    conn.execute("PRAGMA synchronous = OFF")
    ensure_schema(conn)
    conn.execute("BEGIN")
    def ins(table: str, **values: object) -> None:
        conn.execute(f"INSERT INTO {table} ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
                     tuple(values.values()))

    def material(material_id: str, formula: str, space_group: int, source_type, source_file, metadata) -> None:
        ins("materials", material_id=material_id, formula=formula, space_group=space_group, dimensionality="CRYSTAL",
            source_type=source_type, source_file=source_file, metadata_json=metadata, created_at=T0, updated_at=T0)

    material("Si", "Si2", 227, None, None, "{}")
    for m in range(n_materials):
        mid = f"ctx{i:04d}-m{m}"
        material(mid, f"A{m}B{i}", 1 + (i + m) % 230, "cif", f"{mid}.cif", f'{{"i":{i}}}')
        for c in range(calcs_per_material):
            # upstream-style ids are only unique per database: every context reuses the same ones
            cid = f"m{m}_SP_20240101_000000000_{c}"
            key = f"{i:04d}{m:03d}{c:03d}"
            uid = f"c{key}".ljust(32, "0")
            ins("calculations", calc_id=cid, material_id=mid, calc_type="SP", status="completed",
                workflow_id=f"wf-{i}", input_file="in.d12", output_file="out.log", work_dir=f"/w/{i}",
                settings_json="{}", extra_json="{}", exit_code=0, runtime_seconds=1.5 * c, created_at=T0,
                started_at=T0, completed_at=T0, uid=uid, updated_at=T0)
            for p in range(props_per_calc):
                value = f"text-{i}-{p}" if p % 2 else -1.0 * i - p / 7
                text = value if isinstance(value, str) else None
                ins("properties", material_id=mid, calc_id=cid, property_category="energy", property_name=f"p{p}",
                    property_value=None if text else value, property_value_text=text, property_unit="eV",
                    extracted_at=T0, uid=f"p{key}{p}".ljust(32, "0"), updated_at=T0)
            ins("files", calc_id=cid, file_type="output", file_name="out.log", file_path=f"/w/{i}/out.log",
                file_size=100 + i, created_at=T0, checksum="abc", uid=f"f{key}".ljust(32, "0"), updated_at=T0)
    conn.execute("COMMIT")
    conn.close()


def rows_of(db: Path, by_identity: bool = True) -> dict[str, list[tuple]]:
    """Each table's merged columns; `by_identity` names a calculation by its uid, not by its id
    (which is local: the shared database may have renamed it)."""
    conn = sqlite3.connect(db)
    calc_uid = "(SELECT c.uid FROM calculations c WHERE c.calc_id = {t}.calc_id)"
    try:
        out = {}
        for t, pk in DATA_TABLES.items():
            cols = [c for c in COLUMNS[t] if not (by_identity and t == "calculations" and c == "calc_id")]
            if by_identity and t in ("properties", "files"):
                cols = [calc_uid.format(t=t) if c == "calc_id" else c for c in cols]
            out[t] = conn.execute(f"SELECT {', '.join(cols)} FROM {t} ORDER BY {pk}").fetchall()
        return out
    finally:
        conn.close()


def expected_rows(paths: list[Path]) -> dict[str, set[tuple]]:
    out: dict[str, set[tuple]] = {t: set() for t in DATA_TABLES}
    for p in paths:
        for t, rows in rows_of(p).items():
            out[t].update(rows)
    return out


def assert_rows_equal(shared: Path, expected: dict[str, set[tuple]]) -> None:
    got = rows_of(shared)
    for table in DATA_TABLES:
        assert len(got[table]) == len(set(got[table])) == len(expected[table]), table
        assert set(got[table]) == expected[table], table


def scalar(db: Path, sql: str):
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchone()[0]
    finally:
        conn.close()


@pytest.fixture(scope="module")
def contexts(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("contexts")
    out = []
    for i in range(N_CONTEXTS):
        path = root / f"wf-{i:04d}" / "materials.db"
        build_context(path, i)
        out.append((f"wf-{i:04d}", path))
    return out


@pytest.fixture(scope="module")
def expected(contexts) -> dict[str, set[tuple]]:
    return expected_rows([p for _, p in contexts])


# ------------------------------------------------------------------------------------ basics


def test_merge_once_then_again_is_a_noop(tmp_path: Path, contexts) -> None:
    shared = tmp_path / "shared.db"
    wid, src = contexts[0]
    report = merge_database(shared, src, wid)
    assert isinstance(report, MergeReport) and report.status == "merged" and report.error is None
    assert report.counts == {
        "materials": 4,
        "calculations": 3,
        "properties": 6,
        "files": 3,
        "calculations_updated": 0,
        "properties_updated": 0,
        "files_updated": 0,
    }
    assert report.content_hash.startswith(HASH_PREFIX) and len(report.content_hash) == len(HASH_PREFIX) + 64
    assert report.conflicts == []
    assert_rows_equal(shared, expected_rows([src]))
    snapshot = rows_of(shared)

    again = merge_database(shared, src, wid)
    assert again.status == "already_merged" and again.counts == report.counts
    assert again.content_hash == report.content_hash
    assert rows_of(shared) == snapshot
    assert scalar(shared, "SELECT count(*) FROM merge_ledger") == 1
    assert scalar(shared, "PRAGMA integrity_check") == "ok"
    assert not lock_path(shared).exists()


def test_merge_many_batches_match_the_union(tmp_path: Path, contexts) -> None:
    shared = tmp_path / "shared.db"
    chosen = contexts[:30]
    reports = merge_many(shared, chosen, batch_size=7)
    assert [r.workflow_id for r in reports] == [w for w, _ in chosen]
    assert [r.status for r in reports] == ["merged"] * 30
    assert sum(r.counts["materials"] for r in reports) == 1 + 30 * 3  # Si once
    assert_rows_equal(shared, expected_rows([p for _, p in chosen]))
    status = merge_status(shared)
    assert status["exists"] and status["ledger_entries"] == 30 and status["workflows_merged"] == 30
    assert status["conflicts"] == 0 and status["last_merged_at"]
    assert merged_workflow_ids(shared) == {w for w, _ in chosen}
    assert merge_many(shared, []) == []


def test_merge_status_of_missing_database(tmp_path: Path) -> None:
    status = merge_status(tmp_path / "none.db")
    assert status["exists"] is False and status["ledger_entries"] == 0 and status["conflicts"] == 0
    assert not (tmp_path / "none.db").exists()
    assert merged_workflow_ids(tmp_path / "none.db") == set()


def test_conflicting_material_is_recorded_not_overwritten(tmp_path: Path, contexts) -> None:
    shared = tmp_path / "shared.db"
    with MaterialDatabase(shared) as db:
        db.create_material("Si", "Si8", 227, metadata={"from": "shared"})
    wid, src = contexts[5]
    report = merge_database(shared, src, wid)
    assert report.status == "merged"
    (conflict,) = report.conflicts
    assert conflict["material_id"] == "Si"
    assert conflict["shared"]["formula"] == "Si8" and conflict["incoming"]["formula"] == "Si2"
    with MaterialDatabase(shared) as db:
        assert db.get_material("Si")["formula"] == "Si8"  # not overwritten
        assert db.get_material("ctx0005-m0") is not None  # the rest merged
        assert db.counts()["merge_conflicts"] == 1
    # Merging again: ledger says done; the conflict is still reported, and recorded once.
    again = merge_database(shared, src, wid)
    assert again.status == "already_merged" and [c["material_id"] for c in again.conflicts] == ["Si"]
    assert scalar(shared, "SELECT count(*) FROM merge_conflicts") == 1
    # Another workflow with the same disagreement gets its own record.
    merge_database(shared, contexts[6][1], contexts[6][0])
    assert scalar(shared, "SELECT count(*) FROM merge_conflicts") == 2
    assert merge_status(shared)["workflows_with_conflicts"] == 2


def test_corrupt_sources_are_reported_and_the_rest_merge(tmp_path: Path, contexts) -> None:
    shared = tmp_path / "shared.db"
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not sqlite" * 1000)
    truncated = tmp_path / "truncated.db"
    big = tmp_path / "big.db"
    build_context(big, 9999, n_materials=60, calcs_per_material=3, props_per_calc=4)
    truncated.write_bytes(big.read_bytes()[: big.stat().st_size // 2])
    dangling = tmp_path / "dangling.db"  # property of a material that is nowhere: FK rejects it
    build_context(dangling, 8888)
    conn = sqlite3.connect(dangling)
    conn.execute(
        "INSERT INTO properties (uid, material_id, property_name, property_value, extracted_at) VALUES ('prop_x', 'ghost', 'p', 1, ?)",
        (T0,),
    )
    conn.commit()
    conn.close()
    sources = [
        contexts[10],
        ("bad-garbage", garbage),
        contexts[11],
        ("bad-truncated", truncated),
        ("bad-dangling", dangling),
        contexts[12],
    ]
    reports = {r.workflow_id: r for r in merge_many(shared, sources, batch_size=10)}
    assert {w: r.status for w, r in reports.items()} == {
        "wf-0010": "merged",
        "bad-garbage": "corrupt",
        "wf-0011": "merged",
        "bad-truncated": "corrupt",
        "bad-dangling": "corrupt",
        "wf-0012": "merged",
    }
    assert "not a database" in reports["bad-garbage"].error
    assert reports["bad-truncated"].error
    assert "FOREIGN KEY" in reports["bad-dangling"].error
    assert_rows_equal(
        shared, expected_rows([contexts[i][1] for i in (10, 11, 12)])
    )  # nothing of the bad ones
    assert merged_workflow_ids(shared) == {"wf-0010", "wf-0011", "wf-0012"}
    assert scalar(shared, "PRAGMA integrity_check") == "ok"


def test_corrupt_context_schema_sources_are_reported(tmp_path: Path) -> None:
    """A context database without query indexes (as elements create them) is checked as fully:
    a torn table page, a stale uid index and a truncated file are each reported, not merged."""
    good = tmp_path / "good" / "materials.db"
    build_context(good, 1, n_materials=40, calcs_per_material=2, props_per_calc=3)
    assert not {r[0] for r in sqlite3.connect(good).execute("SELECT name FROM sqlite_master")} & set(INDEXES)
    page = sqlite3.connect(good).execute("PRAGMA page_size").fetchone()[0]

    def variant(name: str, data: bytes) -> Path:
        path = tmp_path / name / "materials.db"
        path.parent.mkdir()
        path.write_bytes(data)
        return path

    data = good.read_bytes()
    root = scalar(good, "SELECT rootpage FROM sqlite_master WHERE name = 'properties'")
    torn = bytearray(data)
    torn[(root - 1) * page + 8 : root * page] = bytes(page - 8)  # the table's root page, header kept
    stale = variant("stale", data)  # an index (as upstream code adds one) whose entries disagree with its table
    conn = sqlite3.connect(stale)
    conn.execute("CREATE INDEX idx_properties_name ON properties (property_name)")
    conn.execute("PRAGMA writable_schema = ON")
    conn.execute("UPDATE sqlite_master SET sql = replace(sql, 'property_name', 'property_unit') WHERE type = 'index'")
    conn.commit()
    conn.close()
    sources = [
        ("wf-good", good),
        ("bad-torn", variant("torn", bytes(torn))),
        ("bad-stale", stale),
        ("bad-truncated", variant("truncated", data[: len(data) * 2 // 3])),
    ]
    reports = {r.workflow_id: r for r in merge_many(tmp_path / "shared.db", sources)}
    assert {w: r.status for w, r in reports.items()} == {
        "wf-good": "merged", "bad-torn": "corrupt", "bad-stale": "corrupt", "bad-truncated": "corrupt"
    }
    assert "integrity_check" in reports["bad-stale"].error
    assert merged_workflow_ids(tmp_path / "shared.db") == {"wf-good"}


def test_merge_into_a_context_database_completes_its_schema(tmp_path: Path, contexts) -> None:
    """A context database as the merge target (a context exported into another) gets the ledger,
    the conflict table and upstream's indexes first; the shared database has them from the start."""
    target = tmp_path / "ctx" / "materials.db"
    target.parent.mkdir()
    assert create_context_database(target) and not create_context_database(target)  # never replaced
    names = lambda db: {r[0] for r in sqlite3.connect(db).execute("SELECT name FROM sqlite_master")}  # noqa: E731
    assert not names(target) & {*MERGE_TABLES, *INDEXES}
    assert [r.status for r in merge_many(target, contexts[:3])] == ["merged"] * 3
    assert {*MERGE_TABLES, *INDEXES} <= names(target)
    assert [r.status for r in merge_many(target, contexts[:3])] == ["already_merged"] * 3
    assert_rows_equal(target, expected_rows([p for _, p in contexts[:3]]))
    merge_many(tmp_path / "shared.db", contexts[:1])
    assert {*MERGE_TABLES, *INDEXES} <= names(tmp_path / "shared.db")


def test_empty_and_missing_sources(tmp_path: Path) -> None:
    shared = tmp_path / "shared.db"
    empty = tmp_path / "empty.db"
    MaterialDatabase(empty).close()
    zero = tmp_path / "zero.db"
    zero.write_bytes(b"")
    reports = merge_many(shared, [("e", empty), ("z", zero), ("m", tmp_path / "missing.db")])
    assert [r.status for r in reports] == ["empty", "empty", "empty"]
    assert "no database file" in reports[2].error
    assert merge_status(shared)["ledger_entries"] == 0


def test_invalid_workflow_id_writes_nothing(tmp_path: Path, contexts) -> None:
    shared = tmp_path / "shared.db"
    with pytest.raises(InputError, match="workflow_id"):
        merge_many(shared, [contexts[0], ("../escape", contexts[1][1])])
    assert not shared.exists()


def test_lock_held_elsewhere_times_out(tmp_path: Path, contexts) -> None:
    shared = tmp_path / "shared.db"
    with NfsLock(lock_path(shared)):
        with pytest.raises(LockTimeout, match="held by pid"):
            merge_database(shared, contexts[0][1], contexts[0][0], lock_timeout=0.1)
    assert merge_status(shared)["ledger_entries"] == 0


def test_remerge_brings_newer_calculation_state_home(tmp_path: Path) -> None:
    shared, ctx = tmp_path / "shared.db", tmp_path / "ctx" / "materials.db"
    with MaterialDatabase(ctx) as db:
        db.create_material("m", "Si")
        cid = db.create_calculation("m", "SP", status="running")
    first_version = tmp_path / "first.db"
    shutil.copy(ctx, first_version)
    assert merge_database(shared, ctx, "wf-a").status == "merged"
    with MaterialDatabase(ctx) as db:  # the element was resubmitted and finished
        db.update_calculation_status(cid, "completed", exit_code=0)
        db.store_material_property("m", "energy", -10.5, calc_id=cid)
    second = merge_database(shared, ctx, "wf-a")
    assert second.status == "merged" and second.counts["calculations_updated"] == 1
    assert second.counts["properties"] == 1 and second.counts["materials"] == 0
    # A stale copy of the first version changes nothing (ledger), and never rolls the status back.
    assert merge_database(shared, first_version, "wf-a").status == "already_merged"
    with MaterialDatabase(shared) as db:
        calc = db.get_calculation(cid)
        assert calc["status"] == "completed" and calc["exit_code"] == 0
        assert [p["property_value"] for p in db.get_material_properties("m")] == [-10.5]
    assert merge_status(shared)["ledger_entries"] == 2 and merge_status(shared)["workflows_merged"] == 1



def test_a_source_merged_before_hash_version_2_is_recognised(tmp_path: Path, contexts) -> None:
    """A ledger written by an older mace-hpc holds `content_hash` of the rows (no HASH_PREFIX):
    merging that source again finds it (no second copy, no second ledger row); a changed content
    of the same workflow is merged, under a hash of the current kind."""
    shared = tmp_path / "shared.db"
    wid, src = contexts[3]
    first = merge_database(shared, src, wid)
    legacy = content_hash(rows_of(src, by_identity=False))  # what the older version wrote
    conn = sqlite3.connect(shared)
    conn.execute("UPDATE merge_ledger SET content_hash = ? WHERE workflow_id = ?", (legacy, wid))
    conn.commit()
    conn.close()
    snapshot = rows_of(shared)
    again = merge_database(shared, src, wid)
    assert again.status == "already_merged" and again.content_hash == legacy and again.counts == first.counts
    assert rows_of(shared) == snapshot and scalar(shared, "SELECT count(*) FROM merge_ledger") == 1

    changed = tmp_path / "changed.db"
    shutil.copy(src, changed)
    with MaterialDatabase(changed) as db:
        db.store_material_property("Si", "gap", 1.1)
    third = merge_database(shared, changed, wid)
    assert third.status == "merged" and third.counts["properties"] == 1
    assert third.content_hash.startswith(HASH_PREFIX)
    assert scalar(shared, "SELECT count(*) FROM merge_ledger") == 2
    assert merge_database(shared, changed, wid).status == "already_merged"

# ------------------------------------------------------------------------------ concurrency


def _merge_worker(shared: str, sources: list[tuple[str, str]], batch_size: int, out: str | None) -> None:
    reports = merge_many(shared, sources, lock_timeout=300, batch_size=batch_size)
    if out:
        Path(out).write_text("\n".join(f"{r.workflow_id} {r.status}" for r in reports))


def test_sixteen_concurrent_mergers_of_the_same_200_contexts(tmp_path: Path, contexts, expected) -> None:
    shared = tmp_path / "shared.db"
    rng = random.Random(16)
    procs = []
    for k in range(16):
        order = [(w, str(p)) for w, p in contexts]
        rng.shuffle(order)
        out = tmp_path / f"out-{k}"
        procs.append(
            FORK.Process(
                target=_merge_worker, args=(str(shared), order, rng.choice([1, 16, 64, 256]), str(out))
            )
        )
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
        assert p.exitcode == 0
    statuses = [line.split() for k in range(16) for line in (tmp_path / f"out-{k}").read_text().splitlines()]
    assert len(statuses) == 16 * N_CONTEXTS
    merged = sorted(w for w, s in statuses if s == "merged")
    assert merged == sorted(w for w, _ in contexts)  # each context merged by exactly one process
    assert {s for _, s in statuses} == {"merged", "already_merged"}
    assert_rows_equal(shared, expected)
    assert scalar(shared, "SELECT count(*) FROM merge_ledger") == N_CONTEXTS
    assert scalar(shared, "SELECT count(DISTINCT workflow_id) FROM merge_ledger") == N_CONTEXTS
    assert scalar(shared, "PRAGMA integrity_check") == "ok"
    assert scalar(shared, "SELECT count(*) FROM merge_conflicts") == 0


def _assert_all_or_nothing(shared: Path, contexts_by_id: dict[str, Path]) -> int:
    """After a kill: each ledgered context is wholly present, every other one wholly absent."""
    assert scalar(shared, "PRAGMA integrity_check") == "ok"
    if scalar(shared, "SELECT count(*) FROM sqlite_master WHERE name = 'merge_ledger'") == 0:
        return 0  # killed before the schema was created: nothing else can be there either
    done = merged_workflow_ids(shared)
    assert scalar(shared, "SELECT count(*) FROM merge_ledger") == len(done)  # one entry each
    want = expected_rows([contexts_by_id[w] for w in sorted(done)])
    got = rows_of(shared)
    for table in DATA_TABLES:
        assert len(got[table]) == len(set(got[table]))
        assert set(got[table]) == want[table], table
    return len(done)


def _self_killing_worker(
    shared: str, sources: list[tuple[str, str]], batch_size: int, kill_at: int, after: bool
) -> None:
    """A merger that SIGKILLs itself while handling its `kill_at`-th source (inside a batch
    transaction, before or after that source's rows and ledger row were written)."""
    from mace_hpc.database import merge as merge_module

    original, calls = merge_module._merge_one, 0

    def wrapped(conn, src, now):
        nonlocal calls
        calls += 1
        if calls == kill_at and not after:
            os.kill(os.getpid(), signal.SIGKILL)
        report = original(conn, src, now)
        if calls == kill_at and after:
            os.kill(os.getpid(), signal.SIGKILL)
        return report

    merge_module._merge_one = wrapped  # only in this forked child
    merge_many(shared, sources, lock_timeout=300, batch_size=batch_size)


def test_merger_killed_at_random_points_converges(tmp_path: Path, contexts, expected) -> None:
    """36 mergers SIGKILLed: two in three at a random source inside a batch transaction (exact
    points), one in three after a short random delay (anywhere: lock, schema, commit). After
    each kill the database is consistent; a clean run then converges to exactly the 200 contexts."""
    rng = random.Random(9)
    by_id = dict(contexts)
    sources = [(w, str(p)) for w, p in contexts]
    round_no, shared = 0, tmp_path / "shared-0.db"
    finished_rounds: list[Path] = []
    observed: list[int] = []
    for iteration in range(36):
        if shared.exists() and _assert_all_or_nothing(shared, by_id) == N_CONTEXTS:  # complete: start over
            finished_rounds.append(shared)
            round_no += 1
            shared = tmp_path / f"shared-{round_no}.db"
        order = sources[:]
        rng.shuffle(order)
        batch = rng.choice([1, 4, 16])
        if iteration == 0:  # a known partial state: 9 batches of 16 committed, the 10th killed
            proc = FORK.Process(target=_self_killing_worker, args=(str(shared), order, 16, 150, True))
        elif iteration % 3 != 2:
            kill_at, after = rng.randint(1, N_CONTEXTS), rng.random() < 0.5
            proc = FORK.Process(target=_self_killing_worker, args=(str(shared), order, batch, kill_at, after))
        else:
            proc = FORK.Process(target=_merge_worker, args=(str(shared), order, batch, None))
        proc.start()
        if iteration % 3 == 2:
            time.sleep(rng.uniform(0.0, 0.15))
            os.kill(proc.pid, signal.SIGKILL)
        proc.join(60)
        assert proc.exitcode in (0, -signal.SIGKILL)
        observed.append(_assert_all_or_nothing(shared, by_id) if shared.exists() else 0)
    assert observed[0] == 144
    for db in [*finished_rounds, shared]:  # a clean run converges everywhere
        reports = merge_many(db, sources, lock_timeout=60)
        assert {r.status for r in reports} <= {"merged", "already_merged"}
        assert_rows_equal(db, expected)
        assert scalar(db, "SELECT count(*) FROM merge_ledger") == N_CONTEXTS
        assert scalar(db, "PRAGMA integrity_check") == "ok"
        assert not lock_path(db).exists()


@pytest.mark.parametrize("journal", ["wal", "delete"])
def test_context_database_copy_starts_in_its_journal_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         journal: str) -> None:
    """The template copy carries the journal mode its filesystem gets (WAL in the header), so the
    first open does not switch it; the copy is a sound database either way."""
    monkeypatch.setenv("MACE_SQLITE_JOURNAL", journal)
    path = tmp_path / "materials.db"
    assert create_context_database(path)
    assert path.read_bytes()[18:20] == (b"\x02\x02" if journal == "wal" else b"\x01\x01")
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == journal
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    db = MaterialDatabase(path)
    db.create_material("m1", "Al")
    assert db.get_material("m1")["formula"] == "Al"
    db.close()
