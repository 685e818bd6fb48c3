"""Builders for the epilogue/archive/cleanup tests: submissions whose contexts look finished.

Contexts are made directly (manifest, record, context.json, state.json, a small materials.db and a
step output file) instead of running elements, so each test controls exactly what it starts from.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from mace_hpc import records as st
from mace_hpc.database.materials import MaterialDatabase
from mace_hpc.records import Manifest
from mace_hpc.util.atomic import atomic_write_json


def make_context(
    context_dir: Path, workflow_id: str, *, run_state: str = st.COMPLETED, isolation: str = "isolated",
    materials: int = 1, finished_at: float | None = None, plan: str | None = None, index: int | None = None,
) -> Path:
    """A finished context with `materials` materials, one calculation, two properties and a file each."""
    context_dir.mkdir(parents=True, mode=0o700)
    for sub in ("calculations/s", "logs", "config", "exports"):
        (context_dir / sub).mkdir(parents=True, mode=0o700, exist_ok=True)
    atomic_write_json(context_dir / "context.json", {"workflow_id": workflow_id, "isolation_mode": isolation,
                                                      "created_at": time.time()})
    if plan is not None:
        atomic_write_json(context_dir / "element.json", {"plan": plan, "index": index})
    out = context_dir / "calculations" / "s" / "stdout.txt"
    out.write_text(f"output of {workflow_id}\n")
    if isolation == "isolated":
        db = MaterialDatabase(context_dir / "materials.db")
        for m in range(materials):
            mid = f"{workflow_id}-m{m}"
            db.create_material(mid, "Al", 225)
            calc = db.create_calculation(mid, "SP", status="completed", workflow_id=workflow_id)
            db.store_material_property(mid, "energy", -3.5 - m, calc_id=calc)
            db.store_material_property(mid, "volume", 16.0 + m, calc_id=calc)
            db.add_file_record(calc, "stdout", str(out), file_size=out.stat().st_size)
        db.close()
    finished = time.time() if finished_at is None else finished_at
    st.write_state(context_dir, state=run_state, run_state=run_state, attempts=1, finished_at=finished,
                   host="elsewhere", pid=1, workflow_id=workflow_id, index=index)
    return context_dir


def make_submission(
    scratch_root: Path, plan: str, n: int, *, shared_database: Path, archive_dir: Path,
    on_complete: str = "merge", on_failure: str = "keep", isolation: str = "isolated",
    run_states: dict[int, str] | None = None, backend: str = "local", jobs: list[dict[str, Any]] | None = None,
    finished_at: float | None = None,
) -> dict[str, Any]:
    """A submission record + manifest + n finished contexts; returns the manifest (as the runner reads it)."""
    sub = scratch_root / ".submissions" / plan
    (sub / "logs").mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(n):
        wid = f"{plan}-e{i}"
        ctx = scratch_root / wid
        make_context(ctx, wid, run_state=(run_states or {}).get(i, st.COMPLETED), isolation=isolation,
                     plan=plan, index=i, finished_at=finished_at)
        entries.append({"index": i, "workflow_id": wid, "context_dir": str(ctx)})
    manifest = {
        "version": 1, "plan": plan, "isolation_mode": isolation, "scratch_root": str(scratch_root),
        "shared_database": str(shared_database), "archive_dir": str(archive_dir),
        "on_complete": on_complete, "on_failure": on_failure, "plan_dir": str(scratch_root), "elements": entries,
    }
    atomic_write_json(sub / "manifest.json", manifest)
    atomic_write_json(sub / "elements.json", [{"index": i, "steps": []} for i in range(n)])
    atomic_write_json(sub / "record.json", {"plan": plan, "backend": backend, "jobs": jobs or [],
                                            "manifest": str(sub / "manifest.json")})
    return Manifest.from_dict(manifest)


def shared_rows(shared_db: Path) -> dict[str, int]:
    """Row counts of the data tables in the shared database (0s when it does not exist)."""
    tables = ("materials", "calculations", "properties", "files")
    if not shared_db.exists():
        return dict.fromkeys(tables, 0)
    conn = sqlite3.connect(shared_db)
    try:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}
    finally:
        conn.close()


def material_ids(shared_db: Path) -> list[str]:
    conn = sqlite3.connect(shared_db)
    try:
        return [r[0] for r in conn.execute("SELECT material_id FROM materials ORDER BY material_id")]
    finally:
        conn.close()


def state_of(context_dir: Path) -> dict[str, Any]:
    return json.loads((Path(context_dir) / "state.json").read_text())


def tree(path: Path) -> list[str]:
    """Every file under path, relative (to compare 'nothing left behind')."""
    return sorted(str(Path(d, f).relative_to(path)) for d, _, fs in os.walk(path) for f in fs)
