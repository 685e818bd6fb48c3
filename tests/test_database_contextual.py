"""ContextualMaterialDatabase: upstream's constructor, from_context, context info, copying."""

from __future__ import annotations

from pathlib import Path

import pytest

from mace_hpc.database.materials_contextual import ContextualMaterialDatabase, get_contextual_database
from mace_hpc.database.merge import merge_database
from mace_hpc.errors import InputError
from mace_hpc.workflow.context import WorkflowContext


def test_upstream_constructor_arguments(tmp_path: Path, mace_env: dict[str, Path]) -> None:
    ctx = WorkflowContext("wf-ctor", isolation_mode="isolated")
    db = ContextualMaterialDatabase(workflow_context=ctx)
    assert db.db_path == ctx.database_path and db.ase_db_path == ctx.directory / "structures.db"
    assert db.is_isolated() and db.get_context_info() == {
        "has_context": True,
        "workflow_id": "wf-ctor",
        "isolation_mode": "isolated",
        "db_path": str(ctx.database_path),
        "ase_db_path": str(ctx.directory / "structures.db"),
        "context_dir": str(ctx.directory),
        "is_active": False,
    }
    explicit = ContextualMaterialDatabase(db_path=str(tmp_path / "x.db"), ase_db_path=str(tmp_path / "s.db"),
                                          workflow_context=ctx, auto_detect_context=False)
    assert explicit.db_path == tmp_path / "x.db" and explicit.ase_db_path == tmp_path / "s.db"
    shared = ContextualMaterialDatabase(auto_detect_context=False)
    assert shared.db_path == mace_env["shared_database"] and not shared.is_isolated()
    assert not shared.db_path.exists()  # as upstream: the default database is created on first use
    assert shared.get_all_materials() == [] and shared.db_path.exists()
    assert shared.get_context_info()["isolation_mode"] == "shared" and not shared.get_context_info()["has_context"]
    assert get_contextual_database(str(tmp_path / "y.db")).db_path == tmp_path / "y.db"


def test_from_context_follows_the_active_context(mace_env: dict[str, Path]) -> None:
    with pytest.raises(InputError, match="no active workflow context"):
        ContextualMaterialDatabase.from_context(require=True)
    assert ContextualMaterialDatabase.from_context().db_path == mace_env["shared_database"]
    with WorkflowContext("wf-active", isolation_mode="isolated") as ctx:
        db = ContextualMaterialDatabase.from_context(require=True)
        assert db.db_path == ctx.database_path and db.get_context_info()["is_active"] is True
        assert ContextualMaterialDatabase().is_isolated()


def test_workflow_materials_and_calculations(mace_env: dict[str, Path]) -> None:
    with WorkflowContext("wf-q", isolation_mode="isolated") as ctx:
        db = ContextualMaterialDatabase()
        db.create_material("a", "Si")
        db.create_material("b", "Ge")
        mine = db.create_calculation("a", "SP", workflow_id="wf-q")
        upstream_style = db.create_calculation("b", "OPT", settings={"workflow_id": "wf-q"})
        db.create_calculation("b", "SP", workflow_id="other")
        db.update_calculation_status(mine, "running")
        assert [m["material_id"] for m in db.get_workflow_materials()] == ["b", "a"]
        assert [c["calc_id"] for c in db.get_workflow_calculations()] == [mine, upstream_style]
        assert len(db.get_workflow_calculations("other")) == 1
        assert ctx.workflow_id == "wf-q"


def test_copy_to_context_keeps_identity_so_merging_back_adds_nothing(mace_env: dict[str, Path]) -> None:
    shared = mace_env["shared_database"]
    source = ContextualMaterialDatabase(auto_detect_context=False)
    source.create_material("m", "Si", 227)
    source.create_material("n", "C")
    calc = source.create_calculation("m", "SP")
    source.update_calculation_status(calc, "completed", exit_code=0)
    source.store_material_property("m", "energy", -10.0, calc_id=calc)
    target = WorkflowContext("wf-copy", isolation_mode="isolated")
    copied = source.copy_to_context(target, material_ids=["m"])
    assert copied == {"materials": 1, "calculations": 1, "properties": 1}
    assert source.copy_to_context(target, material_ids=["m"]) == {"materials": 0, "calculations": 0, "properties": 0}
    with ContextualMaterialDatabase(workflow_context=target) as db:
        assert db.get_calculation(calc)["status"] == "completed"
        assert [p["property_value"] for p in db.get_material_properties("m")] == [-10.0]
        assert db.get_material("n") is None
    source.close()
    report = merge_database(shared, target.database_path, "wf-copy")
    assert report.status == "merged" and report.counts["calculations"] == report.counts["properties"] == 0


def test_isolated_context_database_has_no_query_indexes_shared_has_all(mace_env: dict[str, Path]) -> None:
    """An element's own database is created from the context template (tables and triggers, no
    query indexes or merge tables: cheaper to create and to merge); the shared database, also
    when a shared-mode context opens it, has upstream's full schema. Both open as usual."""
    import sqlite3

    from mace_hpc.database.schema import INDEXES, MERGE_TABLES, SCHEMA_VERSION, TRIGGER_SQL

    def objects(db: Path) -> set[str]:
        conn = sqlite3.connect(db)
        try:
            assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
            return {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        finally:
            conn.close()

    with WorkflowContext("wf-light", isolation_mode="isolated") as ctx:
        db = ctx.get_database()
        db.create_material("a", "Si")
        calc = db.create_calculation("a", "SP", workflow_id="wf-light")
        db.update_calculation_status(calc, "completed")
        have = objects(ctx.database_path)
        assert not have & {*INDEXES, *MERGE_TABLES}
        assert {"materials", "calculations", "properties", "files", "workflow_states"} <= have
        assert len([n for n in have if n.endswith("_touch")]) == len(TRIGGER_SQL)
        assert (ctx.database_path.stat().st_mode & 0o777) == 0o600
        ctx.close()
    with WorkflowContext("wf-shared", isolation_mode="shared") as ctx:
        ctx.get_database().create_material("b", "Ge")
        ctx.close()
    assert {*INDEXES, *MERGE_TABLES} <= objects(mace_env["shared_database"])


def test_database_resolved_to_the_active_context_is_created_light(mace_env: dict[str, Path]) -> None:
    """`ContextualMaterialDatabase()` inside an isolated context (what upstream-style user code
    does) creates the context's database with the context schema; an explicit path keeps the full one."""
    import sqlite3

    from mace_hpc.database.schema import INDEXES

    with WorkflowContext("wf-resolved", isolation_mode="isolated") as ctx:
        db = ContextualMaterialDatabase()
        db.create_material("a", "Si")
        db.close()
        names = {r[0] for r in sqlite3.connect(ctx.database_path).execute("SELECT name FROM sqlite_master")}
        assert "materials" in names and not names & set(INDEXES)
        mine = ContextualMaterialDatabase(ctx.directory / "mine.db")
        mine.create_material("b", "Ge")
        mine.close()
        names = {r[0] for r in sqlite3.connect(ctx.directory / "mine.db").execute("SELECT name FROM sqlite_master")}
        assert set(INDEXES) <= names
