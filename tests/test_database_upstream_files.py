"""An existing upstream MACE `materials.db`: opened, migrated once (backup, notice, one
transaction), read, written, merged; upstream's own statements still work on it afterwards.

The upstream database is built from upstream's schema (vendored in tests/data/upstream_schema.sql)
with rows written the way upstream's methods write them (same columns, id and time formats).
"""

from __future__ import annotations

import hashlib
import multiprocessing
import sqlite3
from datetime import datetime
from pathlib import Path

import pytest
from test_database_upstream_calls import UPSTREAM_SRC, _upstream_module

from mace_hpc.database.materials import MaterialDatabase
from mace_hpc.database.merge import merge_database, merge_many
from mace_hpc.database.schema import ALL_COLUMNS, SCHEMA_VERSION, create_context_database
from mace_hpc.errors import InputError

DATA = Path(__file__).parent / "data"
UPSTREAM_SCHEMA = (DATA / "upstream_schema.sql").read_text()
V1_SCHEMA = (DATA / "mace_hpc_v1_schema.sql").read_text()
T = "2025-06-20T10:00:00.123456"

# Upstream's statements (the column lists its methods and scripts use), run with plain sqlite3.
UP_MATERIAL = ("INSERT INTO materials (material_id, formula, space_group, dimensionality, created_at, updated_at,"
               " source_type, source_file, metadata_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
UP_CALC = ("INSERT INTO calculations (calc_id, material_id, calc_type, calc_subtype, priority, created_at,"
           " input_file, work_dir, settings_json, prerequisite_calc_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
UP_STATUS = ("UPDATE calculations SET status = ?, slurm_job_id = ?, submitted_at = ?, completed_at = ?"
             " WHERE calc_id = ?")
UP_PROPERTY = ("INSERT INTO properties (material_id, calc_id, property_category, property_name, property_value,"
               " property_value_text, property_unit, extracted_at, extractor_script) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
UP_FILE = ("INSERT INTO files (calc_id, file_type, file_name, file_path, file_size, created_at, checksum)"
           " VALUES (?, ?, ?, ?, ?, ?, ?)")
UP_TEMPLATE = ("INSERT INTO workflow_templates (template_id, template_name, description, workflow_steps_json,"
               " created_at) VALUES (?, ?, ?, ?, ?)")
UP_STATE = ("INSERT INTO workflow_states (workflow_id, material_id, planned_sequence, completed_steps, current_step,"
            " status, last_updated, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
UP_PROPERTIES_READ = ("SELECT property_id, material_id, calc_id, property_category, property_name, property_value,"
                      " property_value_text, property_unit, confidence, extractor_script, extracted_at"
                      " FROM properties WHERE material_id = ? ORDER BY property_category, property_name")


def upstream_rows(conn: sqlite3.Connection, tag: str = "") -> None:
    """What a season of upstream MACE leaves behind: materials, calculations at several stages,
    numeric and text properties, files, a template and a workflow state."""
    conn.execute(UP_MATERIAL, ("Al2O3", "Al2O3", 167, "CRYSTAL", T, T, "cif", "Al2O3.cif", None))
    conn.execute(UP_MATERIAL, ("ZnO", "ZnO", 186, "CRYSTAL", T, T, "d12", "ZnO.d12", '{"note": "x"}'))
    opt = "Al2O3_OPT_20250620_100000123"
    sp = "Al2O3_SP_20250620_110000456"
    conn.execute(UP_CALC, (opt, "Al2O3", "OPT", None, 0, T, "/w/opt.d12", "/w/opt", '{"workflow_id": "wf_1"}', None))
    conn.execute(UP_CALC, (sp, "Al2O3", "SP", None, 0, "2025-06-20T11:00:00.456000", "/w/sp.d12", "/w/sp", None, opt))
    conn.execute(UP_CALC, ("ZnO_OPT_20250620_120000000", "ZnO", "OPT", None, 0, "2025-06-20T12:00:00", None, None,
                           None, None))
    conn.execute(UP_STATUS, ("completed", f"5001{tag}", T, T, opt))
    conn.execute(UP_STATUS, ("submitted", f"5002{tag}", T, None, sp))
    conn.execute(UP_PROPERTY, ("Al2O3", opt, "electronic", "band_gap", 8.8, None, "eV", str(datetime(2025, 6, 20)),
                               "crystal_property_extractor.py"))
    conn.execute(UP_PROPERTY, ("Al2O3", opt, "structural", "space_group_symbol", None, "R-3c", None, T, None))
    conn.execute(UP_FILE, (opt, "output", "opt.out", "/w/opt/opt.out", 2048, T, "md5:1"))
    conn.execute(UP_TEMPLATE, ("tmpl", "OPT-SP", None, '[{"calc_type": "OPT"}]', T))
    conn.execute(UP_STATE, ("wf_1", "Al2O3", '["OPT", "SP"]', '["OPT"]', 1, "active", T, T))


def make_upstream_db(path: Path, tag: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")  # upstream's connections all set WAL
    conn.executescript(UPSTREAM_SCHEMA)
    upstream_rows(conn, tag)
    conn.commit()
    conn.close()
    return path


def upstream_view(path: Path) -> dict[str, list[tuple]]:
    """Every upstream column of every upstream table, in a stable order."""
    conn = sqlite3.connect(path)
    try:
        out = {}
        for table in ("materials", "calculations", "properties", "files", "workflow_templates", "workflow_states"):
            cols = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
            out[table] = conn.execute(f"SELECT {', '.join(cols)} FROM {table} ORDER BY 1").fetchall()
            out[f"{table}.columns"] = cols
        return out
    finally:
        conn.close()


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def user_version(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("PRAGMA user_version").fetchone()[0]
    finally:
        conn.close()


def test_opening_migrates_once_with_backup_and_notice(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = make_upstream_db(tmp_path / "materials.db")
    before = upstream_view(path)
    with MaterialDatabase(path) as db:
        assert db.get_material("Al2O3")["formula"] == "Al2O3"
    err = capsys.readouterr().err.strip().splitlines()
    (backup,) = tmp_path.glob("materials.db.backup-*")
    assert err == [f"mace-hpc: migrated {path} from upstream MACE to schema {SCHEMA_VERSION} (backup: {backup})"]
    assert user_version(path) == SCHEMA_VERSION and user_version(backup) == 0
    assert upstream_view(backup) == before  # the backup is the untouched original
    after = upstream_view(path)
    for table, rows in before.items():
        if table.endswith(".columns"):
            assert set(rows) <= set(after[table]), table  # a superset of upstream's columns
            continue
        cols = before[f"{table}.columns"]
        idx = [after[f"{table}.columns"].index(c) for c in cols]
        assert [tuple(r[i] for i in idx) for r in after[table]] == rows, table  # every value kept
    with MaterialDatabase(path):  # a second open changes nothing
        pass
    assert capsys.readouterr().err == "" and len(list(tmp_path.glob("materials.db.backup-*"))) == 1


def test_migrated_database_reads_like_upstream_and_takes_writes(tmp_path: Path) -> None:
    path = make_upstream_db(tmp_path / "materials.db")
    with MaterialDatabase(path) as db:
        calcs = db.get_calculations_by_status(material_id="Al2O3")
        assert [c["calc_type"] for c in calcs] == ["SP", "OPT"]  # newest first
        assert calcs[1]["settings"] == {"workflow_id": "wf_1"} and calcs[0]["prerequisite_calc_id"] == calcs[1]["calc_id"]
        assert db.get_calculation_by_slurm_id("5001")["status"] == "completed"
        assert [(p["property_name"], p["property_value"]) for p in db.get_material_properties("Al2O3")] == [
            ("band_gap", 8.8), ("space_group_symbol", "R-3c")]
        assert db.get_material("ZnO")["metadata"] == {"note": "x"} and "metadata" not in db.get_material("Al2O3")
        assert db.get_workflow_state("wf_1")["completed_steps"] == ["OPT"]
        assert db.get_all_workflow_templates()[0]["workflow_steps"] == [{"calc_type": "OPT"}]
        # the first writes, which failed before (no workflow_id / extra_json / uid columns)
        sp = calcs[0]["calc_id"]
        new = db.create_calculation("Al2O3", "BAND", workflow_id="wf-9", node="n1")
        db.update_calculation_status(sp, "completed", exit_code=0, runtime_seconds=3.5)
        db.store_material_property("Al2O3", "fermi_energy", -4.2, "electronic", sp, "eV")
        db.add_file_record(sp, "output", "sp.out", "/w/sp/sp.out")
        assert db.get_calculation(new)["workflow_id"] == "wf-9" and db.get_calculation(new)["node"] == "n1"
        assert db.get_calculation(sp)["runtime_seconds"] == 3.5
        assert db.counts()["properties"] == 3 and db.counts()["files"] == 2
        uids = [r[0] for r in db.connection.execute("SELECT uid FROM calculations")]
        assert len(set(uids)) == 4 and all(len(u) == 32 for u in uids)


def test_upstream_statements_still_work_on_a_migrated_file(tmp_path: Path) -> None:
    """Upstream code that still opens the file: its schema script is a no-op, its inserts and
    updates work, and the rows it writes get our merge identity by themselves."""
    path = make_upstream_db(tmp_path / "materials.db")
    MaterialDatabase(path).close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(UPSTREAM_SCHEMA.replace("ALTER TABLE calculations ADD COLUMN input_settings_json TEXT;", ""))
    new_calc = "ZnO_SP_20250621_090000000"
    conn.execute(UP_CALC, (new_calc, "ZnO", "SP", None, 0, T, None, None, None, None))
    conn.execute(UP_PROPERTY, ("ZnO", new_calc, "electronic", "band_gap", 3.3, None, "eV", T, "x.py"))
    conn.execute(UP_FILE, (new_calc, "log", "sp.log", "/w/sp.log", None, T, None))
    uid, stamp = conn.execute("SELECT uid, updated_at FROM calculations WHERE calc_id = ?", (new_calc,)).fetchone()
    conn.execute(UP_STATUS, ("running", "6001", None, None, new_calc))
    conn.commit()
    assert len(uid) == 32 and stamp.endswith("+00:00")
    assert conn.execute("SELECT updated_at FROM calculations WHERE calc_id = ?", (new_calc,)).fetchone()[0] >= stamp
    rows = conn.execute(UP_PROPERTIES_READ, ("ZnO",)).fetchall()
    assert [(r[4], r[5]) for r in rows] == [("band_gap", 3.3)]
    assert conn.execute("SELECT count(*) FROM files WHERE uid IS NULL").fetchone()[0] == 0
    conn.close()
    with MaterialDatabase(path) as db:
        assert db.get_calculation(new_calc)["slurm_job_id"] == "6001"


def test_upstream_files_merge_in_one_batch_with_context_databases(tmp_path: Path) -> None:
    """An upstream file is merged through an in-memory migrated copy, attached like the context
    databases around it: one batch of 13, across SQLite's ten attached databases at a time."""
    sources = []
    for i in range(13):
        path = tmp_path / f"s{i}" / "materials.db"
        if i in (4, 10):
            make_upstream_db(path, tag=f"u{i}")
        else:
            with MaterialDatabase(path) as db:
                db.create_material(f"m{i}", "Si")
                db.create_calculation(f"m{i}", "SP", status="completed")
        sources.append((f"wf-{i}", path))
    digests = {i: file_digest(sources[i][1]) for i in (4, 10)}
    shared = tmp_path / "shared.db"
    reports = merge_many(shared, sources)
    assert [r.status for r in reports] == ["merged"] * 13
    assert [r.counts["calculations"] for r in reports] == [3 if i in (4, 10) else 1 for i in range(13)]
    assert {i: file_digest(sources[i][1]) for i in (4, 10)} == digests and user_version(sources[4][1]) == 0
    assert [r.status for r in merge_many(shared, sources)] == ["already_merged"] * 13

def test_migrated_upstream_database_merges_into_a_shared_one_exactly_once(tmp_path: Path) -> None:
    shared = tmp_path / "shared.db"
    a = make_upstream_db(tmp_path / "a" / "materials.db", tag="a")
    b = make_upstream_db(tmp_path / "b" / "materials.db", tag="b")  # same calc ids: ids are local
    MaterialDatabase(a).close()  # a was opened by us (migrated in place); b never was
    b_digest = file_digest(b)
    first = merge_database(shared, a, "legacy-a")
    second = merge_database(shared, b, "legacy-b")
    assert first.status == second.status == "merged"
    assert first.counts["calculations"] == second.counts["calculations"] == 3
    assert merge_database(shared, a, "legacy-a").status == "already_merged"
    assert merge_database(shared, b, "legacy-b").status == "already_merged"  # deterministic uids
    assert file_digest(b) == b_digest and user_version(b) == 0  # a source is never written
    with MaterialDatabase(shared) as db:
        calcs = db.get_calculations_by_status(material_id="Al2O3")
        ids = sorted(c["calc_id"] for c in calcs)
        assert len(ids) == 4 and ids[0] == "Al2O3_OPT_20250620_100000123" and ids[1].startswith(ids[0] + "~")
        # references follow the renamed calculation
        renamed_opt = ids[1]
        renamed_sp = next(c for c in calcs if c["calc_id"].startswith("Al2O3_SP") and "~" in c["calc_id"])
        assert renamed_sp["prerequisite_calc_id"] == renamed_opt
        props = db.get_material_properties("Al2O3")
        assert sorted(p["calc_id"] for p in props) == sorted([ids[0], ids[0], renamed_opt, renamed_opt])
        assert sorted(p["property_id"] for p in props) == [1, 2, 3, 4]  # local ids assigned by the target
        assert {db.get_calculation_by_slurm_id(j)["calc_id"] for j in ("5001a", "5001b")} == {ids[0], renamed_opt}
    # upstream's own read still works on the shared database
    conn = sqlite3.connect(shared)
    assert len(conn.execute(UP_PROPERTIES_READ, ("Al2O3",)).fetchall()) == 4
    conn.close()


def test_a_database_that_cannot_be_migrated_is_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "materials.db"
    conn = sqlite3.connect(path)
    conn.executescript(UPSTREAM_SCHEMA)
    conn.execute(UP_MATERIAL, ("m", "Si", None, "CRYSTAL", T, T, None, None, None))
    # a file-name collision upstream would not have: two rows, one calc id (no PRIMARY KEY here)
    conn.executescript("""
        ALTER TABLE calculations RENAME TO c_old;
        CREATE TABLE calculations AS SELECT * FROM c_old;
        DROP TABLE c_old;
    """)
    for _ in range(2):
        conn.execute("INSERT INTO calculations (calc_id, material_id, calc_type, created_at) VALUES ('dup', 'm', 'SP', ?)",
                     (T,))
    conn.commit()
    conn.close()
    digest = file_digest(path)
    with pytest.raises(InputError, match=r"cannot be migrated from upstream MACE .*UNIQUE.*left unchanged"):
        MaterialDatabase(path)
    assert file_digest(path) == digest and user_version(path) == 0
    assert list(tmp_path.glob("materials.db.backup-*")) == []
    conn = sqlite3.connect(path)
    assert "merge_ledger" not in {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}


def _open(path: str) -> None:
    MaterialDatabase(path).close()


def test_two_processes_opening_an_upstream_database_migrate_it_once(tmp_path: Path) -> None:
    path = make_upstream_db(tmp_path / "materials.db")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_open, args=(str(path),)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * 4
    assert len(list(tmp_path.glob("materials.db.backup-*"))) == 1 and user_version(path) == SCHEMA_VERSION
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT count(*) FROM calculations").fetchone()[0] == 3


def test_mace_hpc_1_database_migrates_and_keeps_merge_identity(tmp_path: Path) -> None:
    """A context written by mace-hpc 1 and already merged once is recognised after the upgrade:
    its calc ids were global, so they become the uids, and nothing is merged twice."""
    ctx, shared = tmp_path / "ctx.db", tmp_path / "shared.db"
    for path in (ctx, shared):
        conn = sqlite3.connect(path)
        conn.executescript(V1_SCHEMA)
        conn.execute("INSERT INTO materials VALUES ('m', 'Si', 227, 'CRYSTAL', NULL, NULL, '{}', ?, ?)",
                     ("2025-01-01T00:00:00.000000+00:00",) * 2)
        conn.execute("INSERT INTO calculations (calc_id, material_id, calc_type, status, workflow_id, settings_json,"
                     " extra_json, created_at, updated_at) VALUES ('calc_abc', 'm', 'SP', 'completed', 'wf', '{}',"
                     " '{\"node\": \"n1\"}', ?, ?)", ("2025-01-01T00:00:00.000000+00:00",) * 2)
        conn.execute("INSERT INTO properties VALUES ('prop_1', 'm', 'calc_abc', 'phase', 'alpha', NULL, NULL, '{}', ?)",
                     ("2025-01-01T00:00:00.000000+00:00",))
        conn.execute("INSERT INTO files VALUES ('file_1', 'calc_abc', 'output', '/w/out.log', 'h1', 10, ?)",
                     ("2025-01-01T00:00:00.000000+00:00",))
        conn.commit()
        conn.close()
    assert merge_database(shared, ctx, "wf").status == "merged"  # v1 source read through a migrated copy
    with MaterialDatabase(shared) as db:
        assert db.counts()["calculations"] == 1 and db.counts()["properties"] == 1
        calc = db.get_calculation("calc_abc")
        assert calc["uid"] == "calc_abc" and calc["node"] == "n1"
        assert datetime.fromisoformat(calc["created_at"]).tzinfo is None  # upstream's naive local time
        (prop,) = db.get_material_properties("m")
        assert (prop["property_value"], prop["property_value_text"], prop["uid"]) == ("alpha", "alpha", "prop_1")
        (f,) = db.get_calculation_files("calc_abc")
        assert (f["file_name"], f["checksum"]) == ("out.log", "h1")
    assert set(ALL_COLUMNS["calculations"]) == {r[1] for r in sqlite3.connect(shared).execute(
        "PRAGMA table_info(calculations)")}


@pytest.mark.skipif(UPSTREAM_SRC is None, reason="set UPSTREAM_MACE_SRC to a checkout of upstream MACE to run it")
def test_upstream_class_works_on_a_migrated_file(tmp_path: Path) -> None:
    """Upstream's own MaterialDatabase opens the migrated file and keeps working on it; what it
    writes is read by ours and merges."""
    path = make_upstream_db(tmp_path / "materials.db")
    MaterialDatabase(path).close()
    up = _upstream_module("materials").MaterialDatabase(str(path), str(tmp_path / "structures.db"))
    calc_id = up.create_calculation("ZnO", "SP", input_file="x.d12")
    up.update_calculation_status(calc_id, "submitted", slurm_job_id="777")
    up.update_calculation_settings(calc_id, {"a": 1}, merge=True)
    up.add_file_record(calc_id, "output", "x.out", "/w/x.out")
    assert [c["calc_id"] for c in up.get_calculations_by_status(material_id="ZnO")][0] == calc_id
    assert up.get_database_stats()["total_materials"] == 2
    with MaterialDatabase(path) as ours:
        calc = ours.get_calculation(calc_id)
        assert (calc["slurm_job_id"], calc["settings"], len(calc["uid"])) == ("777", {"a": 1}, 32)
    assert merge_database(tmp_path / "shared.db", path, "legacy").counts["calculations"] == 4


@pytest.mark.skipif(UPSTREAM_SRC is None, reason="set UPSTREAM_MACE_SRC to a checkout of upstream MACE to run it")
def test_upstream_class_works_on_a_context_database(tmp_path: Path) -> None:
    """A context database (created without the query indexes) opened by upstream's own class:
    it adds its indexes, writes, reads; ours reads what it wrote and the merge takes it."""
    path = tmp_path / "ctx" / "materials.db"
    path.parent.mkdir()
    assert create_context_database(path)
    up = _upstream_module("materials").MaterialDatabase(str(path), str(tmp_path / "structures.db"))
    up.create_material("ZnO", "ZnO", 186)
    calc_id = up.create_calculation("ZnO", "SP", input_file="x.d12")
    up.update_calculation_status(calc_id, "completed", slurm_job_id="778")
    assert [c["calc_id"] for c in up.get_calculations_by_status(material_id="ZnO")] == [calc_id]
    names = {r[0] for r in sqlite3.connect(path).execute("SELECT name FROM sqlite_master")}
    assert "idx_calculations_status" in names
    with MaterialDatabase(path) as ours:
        assert ours.get_calculation(calc_id)["slurm_job_id"] == "778"
    report = merge_database(tmp_path / "shared.db", path, "wf-up")
    assert report.status == "merged" and report.counts["calculations"] == 1


def test_merging_into_an_upstream_shared_database_migrates_it_first(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    shared = make_upstream_db(tmp_path / "shared" / "materials.db")
    ctx = tmp_path / "ctx" / "materials.db"
    with MaterialDatabase(ctx) as db:
        db.create_material("Al2O3", "Al2O3", 167, source_type="cif", source_file="Al2O3.cif")  # same as shared's
        calc_id = db.create_calculation("Al2O3", "OPT", workflow_id="wf-new")
        db.store_material_property("Al2O3", "band_gap", 8.7, "electronic", calc_id, "eV")
    report = merge_database(shared, ctx, "wf-new")
    assert report.status == "merged" and report.conflicts == [] and report.counts["materials"] == 0
    assert "from upstream MACE to schema 2" in capsys.readouterr().err
    assert len(list(shared.parent.glob("materials.db.backup-*"))) == 1
    conn = sqlite3.connect(shared)
    assert [r[4] for r in conn.execute(UP_PROPERTIES_READ, ("Al2O3",))] == ["band_gap", "band_gap",
                                                                          "space_group_symbol"]
    assert conn.execute("SELECT workflow_id FROM calculations WHERE calc_id = ?", (calc_id,)).fetchone() == ("wf-new",)


def test_a_database_at_this_schema_opens_with_one_connection_and_others_are_still_migrated(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`upgrade_file` reads the schema version from the file's header: a database already at this
    schema (every context database, from the template) gets no extra connection (whose -wal and
    -shm files a WAL database would create and remove), an upstream one is still migrated first,
    and what is no SQLite file (or a FIFO, which must not hang the open) is left to SQLite."""
    import os

    from mace_hpc.database import migrate

    current = tmp_path / "ctx.db"
    create_context_database(current)
    assert migrate.header_version(current) == SCHEMA_VERSION
    opened: list[str] = []
    real_connect = sqlite3.connect
    monkeypatch.setattr(migrate.sqlite3, "connect", lambda p, *a, **k: opened.append(str(p)) or real_connect(p, *a, **k))
    migrate.upgrade_file(current)
    assert opened == []
    upstream = make_upstream_db(tmp_path / "up.db")
    assert migrate.header_version(upstream) == 0
    migrate.upgrade_file(upstream)
    assert opened[:1] == [str(upstream)] and user_version(upstream) == SCHEMA_VERSION  # (then its backup)
    (tmp_path / "text.db").write_text("not a database")
    os.mkfifo(tmp_path / "fifo.db")
    assert [migrate.header_version(tmp_path / n) for n in ("text.db", "fifo.db", "missing.db")] == [None] * 3
