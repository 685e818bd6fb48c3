"""MaterialDatabase (legacy API), schema versioning and journal-mode selection."""

from __future__ import annotations

import json
import re
import sqlite3
from collections import namedtuple
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mace_hpc.database import journal, materials
from mace_hpc.database.journal import connect, is_network_filesystem, write_transaction
from mace_hpc.database.materials import MaterialDatabase, default_database_path, set_default_path_resolver
from mace_hpc.database.schema import ALL_TABLES, SCHEMA_VERSION, ensure_schema
from mace_hpc.errors import InputError


@pytest.fixture
def db(tmp_path: Path):
    with MaterialDatabase(tmp_path / "sub" / "materials.db") as database:
        yield database


def test_material_roundtrip_and_idempotent_create(db: MaterialDatabase) -> None:
    assert db.db_path.parent.is_dir()
    mid = db.create_material("mp-149", "Si2", 227, "CRYSTAL", "cif", "si.cif", {"a": 5.43, "tags": ["x"]})
    assert mid == "mp-149"
    rec = db.get_material("mp-149")
    assert rec is not None
    assert (rec["formula"], rec["space_group"], rec["dimensionality"]) == ("Si2", 227, "CRYSTAL")
    assert (rec["source_type"], rec["source_file"]) == ("cif", "si.cif")
    assert rec["metadata"] == {"a": 5.43, "tags": ["x"]}
    # Same content again: a no-op (metadata key order does not matter).
    assert (
        db.create_material("mp-149", "Si2", 227, "CRYSTAL", "cif", "si.cif", {"tags": ["x"], "a": 5.43})
        == "mp-149"
    )
    assert db.counts()["materials"] == 1
    with pytest.raises(InputError, match="mp-149"):
        db.create_material("mp-149", "Ge2", 227)
    assert db.get_material("mp-149")["formula"] == "Si2"
    assert db.get_material("nope") is None


def test_get_all_and_update_material(db: MaterialDatabase) -> None:
    db.create_material("a", "A")
    db.create_material("b", "B", metadata={"k": 1})
    assert [m["material_id"] for m in db.get_all_materials()] == ["b", "a"]  # newest first, as upstream
    db.update_material("b", formula="B2", metadata={"k": 2}, space_group=12)
    b = db.get_material("b")
    assert (b["formula"], b["metadata"], b["space_group"]) == ("B2", {"k": 2}, 12)
    assert b["updated_at"] >= b["created_at"]
    with pytest.raises(InputError, match="unknown field"):
        db.update_material("b", colour="red")
    with pytest.raises(InputError, match="unknown material"):
        db.update_material("zz", formula="Z")


def test_calculation_lifecycle(db: MaterialDatabase) -> None:
    db.create_material("m", "Si")
    cid = db.create_calculation(
        "m",
        "SP",
        input_file="m.d12",
        work_dir=Path("/w/m"),
        settings={"kpts": [4, 4, 4]},
        workflow_id="wf-1",
        slurm_job_id="123",
    )
    assert re.fullmatch(r"m_SP_\d{8}_\d{9}", cid)  # upstream's {material}_{type}_{timestamp}
    calc = db.get_calculation(cid)
    assert calc["status"] == "pending" and calc["started_at"] is None and calc["completed_at"] is None
    assert calc["settings"] == {"kpts": [4, 4, 4]} and calc["work_dir"] == "/w/m"
    assert calc["slurm_job_id"] == "123" and calc["extra"] == {} and re.fullmatch(r"[0-9a-f]{32}", calc["uid"])
    assert calc["workflow_id"] == "wf-1" and calc["input_file"] == "m.d12"

    db.update_calculation_status(cid, "running")
    calc = db.get_calculation(cid)
    assert calc["status"] == "running" and calc["started_at"] and calc["completed_at"] is None
    db.update_calculation_status(
        cid,
        "completed",
        output_file="m.out",
        exit_code=0,
        runtime_seconds=12.5,
        node="n01",
        settings={"k": 1},
    )
    calc = db.get_calculation(cid)
    assert calc["status"] == "completed" and calc["completed_at"] >= calc["started_at"]
    assert (calc["output_file"], calc["exit_code"], calc["runtime_seconds"]) == ("m.out", 0, 12.5)
    assert calc["extra"] == {"node": "n01"} and calc["settings"] == {"k": 1}

    other = db.create_calculation("m", "OPT")
    db.update_calculation_status(other, "failed", error_message="SCF did not converge", exit_code=1)
    assert db.get_calculation(other)["error_message"] == "SCF did not converge"
    assert [c["calc_id"] for c in db.get_calculations_by_material("m")] == [other, cid]  # newest first
    assert [c["calc_id"] for c in db.get_calculations_by_status("failed")] == [other]
    assert db.get_calculations_by_status("pending") == []
    assert db.get_calculation("calc_nope") is None
    before = db.counts()
    db.update_calculation_status("calc_nope", "running")  # upstream: an unknown id changes nothing
    assert db.counts() == before and db.get_calculation("calc_nope") is None


def test_properties_numbers_and_strings(db: MaterialDatabase) -> None:
    db.create_material("m", "Si")
    cid = db.create_calculation("m", "SP")
    u1 = db.store_material_property(
        "m", "band_gap", 1.12, calc_id=cid, property_unit="eV", property_category="electronic"
    )
    u2 = db.store_material_property("m", "space_group_symbol", "Fd-3m")
    u3 = db.store_material_property("m", "n_atoms", 2, source="parser")
    db.store_material_property("m", "is_metal", False)
    assert len({u1, u2, u3}) == 3 and all(re.fullmatch(r"[0-9a-f]{32}", u) for u in (u1, u2, u3))
    props = db.get_material_properties("m")
    # upstream's order: category ('General' by default), then name
    assert [(p["property_category"], p["property_name"], p["property_value"]) for p in props] == [
        ("General", "is_metal", 0),
        ("General", "n_atoms", 2),
        ("General", "space_group_symbol", "Fd-3m"),
        ("electronic", "band_gap", 1.12),
    ]
    assert type(props[1]["property_value"]) is int and props[1]["source"] == "parser"
    assert (props[2]["property_value_text"], props[3]["property_value_text"]) == ("Fd-3m", None)
    assert [type(p["property_id"]) for p in props] == [int] * 4
    gap = db.get_material_properties("m", "band_gap")
    assert len(gap) == 1 and gap[0]["calc_id"] == cid and gap[0]["property_unit"] == "eV"
    assert gap[0]["property_category"] == "electronic"


def test_files(db: MaterialDatabase) -> None:
    db.create_material("m", "Si")
    cid = db.create_calculation("m", "SP")
    uid = db.add_file_record(cid, "output", "m.out", Path("/w/m.out"), "ab12", file_size=2048)
    assert re.fullmatch(r"[0-9a-f]{32}", uid)
    (rec,) = db.get_calculation_files(cid)
    assert (rec["file_type"], rec["file_name"], rec["file_path"], rec["checksum"], rec["file_size"]) == (
        "output",
        "m.out",
        "/w/m.out",
        "ab12",
        2048,
    )
    with pytest.raises(InputError, match="unknown calculation"):
        db.add_file_record("calc_missing", "output", "x", "/x")


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda db: db.create_material("", "Si"), "material_id"),
        (lambda db: db.create_material("  ", "Si"), "material_id"),
        (lambda db: db.create_material("x", ""), "formula"),
        (lambda db: db.create_material("x", "Si", space_group="227"), "space_group"),
        (
            lambda db: db.create_material("x", "Si", metadata={"f": object()}),
            "metadata: not JSON-serialisable",
        ),
        (lambda db: db.create_material("x", "Si", metadata={"nan": float("nan")}), "metadata"),
        (lambda db: db.create_calculation("ghost", "SP"), "unknown material 'ghost'"),
        (lambda db: db.create_calculation("m", "SP", settings={"s": {1, 2}}), "settings"),
        (lambda db: db.create_calculation("m", ""), "calc_type"),
        (lambda db: db.store_material_property("ghost", "gap", 1.0), "unknown material"),
        (lambda db: db.store_material_property("m", "gap", 1.0, calc_id="calc_ghost"), "unknown calculation"),
        (lambda db: db.store_material_property("m", "gap", float("nan")), "NaN"),
        (lambda db: db.store_material_property("m", "gap", [1, 2]), "property_value"),
        (lambda db: db.store_material_property("m", "", 1), "property_name"),
    ],
)
def test_bad_input_is_input_error_and_leaves_no_row(db: MaterialDatabase, call, message: str) -> None:
    db.create_material("m", "Si")
    before = db.counts()
    with pytest.raises(InputError, match=message):
        call(db)
    assert db.counts() == before


def test_counts_close_and_context_manager(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    with MaterialDatabase(path) as db:
        assert db.counts() == dict.fromkeys(ALL_TABLES, 0)
        db.create_material("m", "Si")
    with pytest.raises(InputError, match="closed"):
        db.get_material("m")
    db.close()  # idempotent
    with MaterialDatabase(str(path)) as again:
        assert again.counts()["materials"] == 1


def test_schema_version_and_idempotent_schema(tmp_path: Path) -> None:
    path = tmp_path / "v.db"
    MaterialDatabase(path).close()
    conn = connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    ensure_schema(conn)  # no-op
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert set(ALL_TABLES) <= tables
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 60000
    assert conn.isolation_level is None
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(InputError, match="newer"):
        MaterialDatabase(path)


def test_journal_mode_wal_on_local_filesystem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MACE_SQLITE_JOURNAL", raising=False)
    monkeypatch.setattr(journal, "is_network_filesystem", lambda path: False)
    with MaterialDatabase(tmp_path / "w.db") as db:
        assert db.connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_journal_mode_delete_on_network_filesystem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MACE_SQLITE_JOURNAL", raising=False)
    monkeypatch.setattr(journal, "is_network_filesystem", lambda path: True)
    with MaterialDatabase(tmp_path / "n.db") as db:
        assert db.connection.execute("PRAGMA journal_mode").fetchone()[0] == "delete"


def test_journal_mode_forced_by_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal, "is_network_filesystem", lambda path: False)
    monkeypatch.setenv("MACE_SQLITE_JOURNAL", "delete")
    with MaterialDatabase(tmp_path / "f.db") as db:
        assert db.connection.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    # An existing WAL database opened under `delete` is switched over.
    monkeypatch.setenv("MACE_SQLITE_JOURNAL", "wal")
    MaterialDatabase(tmp_path / "g.db").close()
    monkeypatch.setenv("MACE_SQLITE_JOURNAL", "delete")
    with MaterialDatabase(tmp_path / "g.db") as db:
        assert db.connection.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    monkeypatch.setenv("MACE_SQLITE_JOURNAL", "bogus")
    with pytest.raises(InputError, match="MACE_SQLITE_JOURNAL"):
        connect(tmp_path / "h.db")


Part = namedtuple("Part", "device mountpoint fstype opts")


@pytest.mark.parametrize(
    "path, expected",
    [
        ("/home/alice/db.sqlite", True),  # /home is NFS
        ("/home/alice/local/x.db", False),  # a local mount nested inside the NFS one
        ("/scratch/job/x.db", True),  # lustre
        ("/gpfs/p/x.db", True),
        ("/mnt/smb/x.db", True),
        ("/mnt/sshfs/x.db", True),
        ("/tmp/x.db", False),
        ("/homework/x.db", False),  # a prefix of the name, not of the path
    ],
)
def test_is_network_filesystem_longest_mountpoint(
    monkeypatch: pytest.MonkeyPatch, path: str, expected: bool
) -> None:
    parts = [
        Part("/dev/vda", "/", "ext4", ""),
        Part("srv:/home", "/home", "nfs4", ""),
        Part("/dev/vdb", "/home/alice/local", "xfs", ""),
        Part("mds@tcp:/fs", "/scratch", "lustre", ""),
        Part("gpfs0", "/gpfs", "gpfs", ""),
        Part("//srv/share", "/mnt/smb", "smb3", ""),
        Part("u@h:/", "/mnt/sshfs", "fuse.sshfs", ""),
        Part("tmpfs", "/tmp", "tmpfs", ""),
    ]
    monkeypatch.setattr(journal, "_mount_table", lambda: [(p.mountpoint, p.fstype) for p in parts])
    monkeypatch.setattr(journal, "_existing_ancestor", lambda p: Path(p))
    monkeypatch.setattr(journal, "_NETWORK_BY_DEVICE", {})  # answers cached from the real mounts
    assert is_network_filesystem(path) is expected


def test_is_network_filesystem_real_tmp(tmp_path: Path) -> None:
    assert is_network_filesystem(tmp_path / "does" / "not" / "exist.db") is False  # local disk here


def test_write_transaction_rolls_back(tmp_path: Path) -> None:
    conn = connect(tmp_path / "t.db")
    conn.execute("CREATE TABLE t (x)")
    with pytest.raises(RuntimeError):
        with write_transaction(conn):
            conn.execute("INSERT INTO t VALUES (1)")
            raise RuntimeError("boom")
    assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 0 and not conn.in_transaction
    with write_transaction(conn):
        conn.execute("INSERT INTO t VALUES (2)")
    assert conn.execute("SELECT x FROM t").fetchall() == [(2,)]


def test_default_path_resolver_is_looked_up_at_construction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mace_hpc.database.materials import MaterialDatabase as ImportedEarly

    monkeypatch.setenv("MACE_SHARED_DATABASE", str(tmp_path / "shared.db"))
    monkeypatch.delenv("MACE_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    try:
        assert default_database_path() == tmp_path / "shared.db"
        set_default_path_resolver(lambda: tmp_path / "ctx" / "materials.db")
        with ImportedEarly() as db:
            assert db.db_path == tmp_path / "ctx" / "materials.db" and db.db_path.exists()
    finally:
        set_default_path_resolver(None)
    with materials.MaterialDatabase() as db:
        assert db.db_path == tmp_path / "shared.db"


def test_concurrent_writers_do_not_lock_out(tmp_path: Path) -> None:
    """Two connections writing alternately: BEGIN IMMEDIATE + busy timeout, no 'database is locked'."""
    path = tmp_path / "c.db"
    a, b = MaterialDatabase(path), MaterialDatabase(path)
    try:
        a.create_material("m", "Si")
        for i in range(20):
            (a if i % 2 else b).store_material_property("m", "p", i)
        values = [p["property_value"] for p in a.get_material_properties("m", "p")]
        assert sorted(values) == list(range(20))
    finally:
        a.close()
        b.close()


def test_json_columns_are_canonical(db: MaterialDatabase) -> None:
    db.create_material("m", "Si", metadata={"b": 1, "a": 2})
    raw = sqlite3.connect(db.db_path).execute("SELECT metadata_json FROM materials").fetchone()[0]
    assert raw == json.dumps({"a": 2, "b": 1}, separators=(",", ":"))


@pytest.fixture(scope="module")
def prop_db(tmp_path_factory: pytest.TempPathFactory):
    with MaterialDatabase(tmp_path_factory.mktemp("prop") / "p.db") as db:
        db.create_material("m", "Si")
        yield db


@settings(max_examples=60, deadline=None)
@given(
    value=st.one_of(
        st.none(),
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.floats(allow_nan=False),
        st.text(),
    )
)
def test_property_values_round_trip_exactly(prop_db: MaterialDatabase, value) -> None:
    db = prop_db
    uid = db.store_material_property("m", "p", value)
    (rec,) = [p for p in db.get_material_properties("m", "p") if p["uid"] == uid]
    assert rec["property_value"] == value and type(rec["property_value"]) is type(value)


def test_many_processes_opening_a_new_database_together_all_succeed(tmp_path: Path) -> None:
    """Switching a new file to WAL answers "database is locked" at once (no busy handler) when it
    meets another connection: 8 elements of a shared-mode plan opening the shared database
    together must all get it (seen in CI as an element FAILED with OperationalError)."""
    import subprocess
    import sys
    import time

    script = ("import sys, time\nfrom mace_hpc.database.materials import MaterialDatabase\n"
              "path, i, t0 = sys.argv[1], sys.argv[2], float(sys.argv[3])\n"
              "while time.time() < t0: pass\n"
              "MaterialDatabase(path).create_material(f'm{i}', 'Al')\n")
    for attempt in range(3):
        path = tmp_path / f"new{attempt}.db"
        t0 = time.time() + 1.5
        procs = [subprocess.Popen([sys.executable, "-c", script, str(path), str(i), str(t0)],
                                  stderr=subprocess.PIPE, text=True) for i in range(8)]
        errors = [p.communicate(timeout=120)[1] for p in procs]
        assert [p.returncode for p in procs] == [0] * 8, "\n".join(e for e in errors if e)
        db = materials.MaterialDatabase(path)
        assert sorted(m["material_id"] for m in db.get_all_materials()) == [f"m{i}" for i in range(8)]
