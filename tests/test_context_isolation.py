"""Isolation under concurrency: separate processes, separate worlds, one shared result."""

from __future__ import annotations

import multiprocessing as mp
import os
import sqlite3
from pathlib import Path


def _workflow(args: tuple[str, int, str, str]) -> list[str]:
    """A workflow in its own process: stores n materials, then lists what it can see."""
    workflow_id, n, scratch, barrier_dir = args
    os.environ["MACE_SCRATCH_ROOT"] = scratch
    from mace_hpc.workflow.context import WorkflowContext

    with WorkflowContext(workflow_id, isolation_mode="isolated") as ctx:
        db = ctx.get_database()
        for i in range(n):
            db.create_material(material_id=f"{workflow_id}-m{i}", formula="Al")
        # wait until the other workflow has written too, then look
        Path(barrier_dir, workflow_id).touch()
        while len(os.listdir(barrier_dir)) < 2:
            pass
        return sorted(m["material_id"] for m in db.get_all_materials())


def test_two_concurrent_workflows_never_see_each_other(tmp_path, mace_env):
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    scratch = str(mace_env["scratch_root"])
    with mp.get_context("spawn").Pool(2) as pool:
        seen_a, seen_b = pool.map(_workflow, [("wfA", 5, scratch, str(barrier)), ("wfB", 7, scratch, str(barrier))])
    assert seen_a == sorted(f"wfA-m{i}" for i in range(5))
    assert seen_b == sorted(f"wfB-m{i}" for i in range(7))


def test_legacy_shared_mode_unaffected(tmp_path, mace_env):
    """A script that never opts in writes the shared database, as before isolation existed."""
    from mace_hpc.database.materials import MaterialDatabase
    from mace_hpc.workflow.context import WorkflowContext

    legacy = MaterialDatabase()
    legacy.create_material(material_id="legacy1", formula="Fe")
    with WorkflowContext("iso", isolation_mode="isolated") as ctx:
        ctx.get_database().create_material(material_id="private", formula="Cu")
        assert [m["material_id"] for m in MaterialDatabase().get_all_materials()] == ["legacy1"]
    assert legacy.db_path == mace_env["shared_database"]
    assert [m["material_id"] for m in legacy.get_all_materials()] == ["legacy1"]


def _work_and_export(args: tuple[int, str, str]) -> str:
    index, scratch, shared = args
    os.environ["MACE_SCRATCH_ROOT"] = scratch
    from mace_hpc.workflow.context import WorkflowContext

    with WorkflowContext(f"proc{index}", isolation_mode="isolated") as ctx:
        db = ctx.get_database()
        for m in range(10):
            mid = f"p{index}-m{m}"
            db.create_material(material_id=mid, formula="SiO2", space_group=154)
            calc = db.create_calculation(mid, "SP")
            db.update_calculation_status(calc, "completed", exit_code=0)
            db.store_material_property(mid, "energy", -float(index * 100 + m), calc_id=calc, property_unit="eV")
        ctx.export_results(shared)
        ctx.export_results(shared)  # a second export adds nothing
    return ctx.workflow_id


def test_eight_processes_export_into_one_shared_database(tmp_path, mace_env):
    shared = tmp_path / "shared_all.db"
    scratch = str(mace_env["scratch_root"])
    with mp.get_context("spawn").Pool(8) as pool:
        done = pool.map(_work_and_export, [(i, scratch, str(shared)) for i in range(8)])
    assert sorted(done) == [f"proc{i}" for i in range(8)]
    conn = sqlite3.connect(shared)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    materials = {r[0] for r in conn.execute("SELECT material_id FROM materials")}
    assert materials == {f"p{i}-m{m}" for i in range(8) for m in range(10)}
    assert conn.execute("SELECT COUNT(*) FROM calculations").fetchone()[0] == 80
    energies = sorted(r[0] for r in conn.execute("SELECT property_value FROM properties WHERE property_name='energy'"))
    assert energies == sorted(-float(i * 100 + m) for i in range(8) for m in range(10))


def test_context_database_commits_unsynced_until_close_shared_stays_synced(tmp_path, mace_env, monkeypatch):
    """An isolated context's database skips the per-commit fsync (WAL, synchronous NORMAL) and is
    checkpointed into its file when the context closes, before the runner reports the element;
    the shared database keeps every commit synced (FULL)."""
    from mace_hpc.database.materials import MaterialDatabase
    from mace_hpc.workflow.context import WorkflowContext

    monkeypatch.setenv("MACE_SQLITE_JOURNAL", "wal")
    with WorkflowContext("syncwf", isolation_mode="isolated", cleanup_on_exit=False) as ctx:
        db = ctx.get_database()
        assert db.connection.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        db.create_material(material_id="kept", formula="Cu")
        path = ctx.database_path
    assert not Path(f"{path}-wal").exists()  # checkpointed into the file and removed at close
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    assert conn.execute("SELECT material_id FROM materials").fetchall() == [("kept",)]
    conn.close()
    shared = MaterialDatabase()
    assert shared.connection.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    with WorkflowContext("sharedwf", isolation_mode="shared") as ctx:
        assert ctx.get_database().connection.execute("PRAGMA synchronous").fetchone()[0] == 2


def test_rollback_journal_context_database_keeps_full_sync(tmp_path, mace_env, monkeypatch):
    """On a network filesystem (rollback journal) nothing is relaxed."""
    from mace_hpc.workflow.context import WorkflowContext

    monkeypatch.setenv("MACE_SQLITE_JOURNAL", "delete")
    with WorkflowContext("nfswf", isolation_mode="isolated") as ctx:
        assert ctx.get_database().connection.execute("PRAGMA synchronous").fetchone()[0] == 2


def test_leaving_a_context_without_cleaning_it_up_does_not_wait_for_its_holders_lock(tmp_path, mace_env):
    """Only a holder that may clean the context up decides anything when it leaves (invariant 8:
    the last one out cleans up); one that keeps the context (every element runner) just removes
    its registry entry, even while another holder's clean-up holds the lock for a long time."""
    import threading

    from mace_hpc.context import registry
    from mace_hpc.workflow.context import WorkflowContext

    ctx = WorkflowContext("keepwf", isolation_mode="isolated", cleanup_on_exit=False)
    ctx.activate()
    entries = lambda: [e["workflow_id"] for e in registry.list_entries(ctx.scratch_root)]  # noqa: E731
    assert entries() == ["keepwf"]
    with registry.holders_lock(ctx.scratch_root, "keepwf"):
        leaving = threading.Thread(target=ctx.deactivate)
        leaving.start()
        leaving.join(10)
        assert not leaving.is_alive()
    assert entries() == [] and ctx.directory.is_dir()
