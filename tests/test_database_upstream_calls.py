"""Upstream MACE's call patterns, replayed against our MaterialDatabase.

Each case is a call pattern copied (in shape: arguments, keys read, ordering relied on) from
upstream's own callers (DjokicMa/MACE: queue manager, workflow engine/executor, monitor,
recovery, file manager, database utilities, analysis); the docstring names the call site.
The assertions are upstream's contract, not our implementation: with `UPSTREAM_MACE_SRC` set to
a checkout of upstream (its `mace` package inside), every case also runs against upstream's own
class, which is how the contract was checked; cases marked `upstream_bug` fail there.
"""

from __future__ import annotations

import importlib
import json
import os
import sqlite3
import sys
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

CASES: list[tuple[str, Callable[..., None], str | None]] = []


def case(upstream_bug: str | None = None) -> Callable[[Callable[..., None]], Callable[..., None]]:
    def register(fn: Callable[..., None]) -> Callable[..., None]:
        CASES.append((fn.__name__, fn, upstream_bug))
        return fn

    return register


UPSTREAM_SRC = os.environ.get("UPSTREAM_MACE_SRC")  # read at import: the test env is reset per test


def _upstream_module(name: str) -> Any:
    if UPSTREAM_SRC not in sys.path:
        sys.path.insert(0, str(UPSTREAM_SRC))
    return importlib.import_module(f"mace.database.{name}")


IMPLS = ["mace_hpc"] + (["upstream"] if UPSTREAM_SRC else [])


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest) -> Any:
    if request.param == "upstream":
        return _upstream_module("materials")
    from mace_hpc.database import materials

    return materials


@pytest.fixture
def db(impl: Any, tmp_path: Path) -> Any:
    database = impl.MaterialDatabase(str(tmp_path / "materials.db"), str(tmp_path / "structures.db"))
    database.create_material(material_id="mat1", formula="Al2O3", space_group=167, source_type="cif",
                             source_file="mat1.cif")
    return database


def raw(db: Any, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
    with db._get_connection() as conn:
        return conn.execute(sql, params).fetchall()


def submitted(db: Any, calc_type: str = "OPT", job: str | None = "1001", material_id: str = "mat1") -> str:
    calc_id = db.create_calculation(material_id=material_id, calc_type=calc_type, input_file=f"{calc_type}.d12",
                                    work_dir=f"/w/{calc_type}")
    if job:
        db.update_calculation_status(calc_id, "submitted", slurm_job_id=job)
    return calc_id


# --------------------------------------------------------------------------- construction


@case()
def construct_with_auto_initialize(impl: Any, tmp_path: Path) -> None:
    """workflow/executor.py:71 `MaterialDatabase(self.db_path, auto_initialize=True)`."""
    path = tmp_path / "x" / "materials.db"
    path.parent.mkdir()
    impl.MaterialDatabase(str(path), auto_initialize=True)
    tables = {r[0] for r in sqlite3.connect(path).execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"materials", "calculations", "properties", "files", "workflow_templates"} <= tables


@case()
def construct_deferred(impl: Any, tmp_path: Path) -> None:
    """database/materials_contextual.py:91 `super().__init__(db_path=, ase_db_path=, auto_initialize=False)`:
    nothing is created until the database is used."""
    path = tmp_path / "materials.db"
    db = impl.MaterialDatabase(db_path=str(path), ase_db_path=str(tmp_path / "s.db"), auto_initialize=False)
    assert not path.exists()
    assert db.get_all_materials() == [] and path.exists()


# --------------------------------------------------------------------------- materials


@case()
def create_material_keywords_and_read_status(db: Any) -> None:
    """queue/manager.py:584 `create_material(material_id=, formula=, source_type='d12', source_file=,
    metadata=)`; monitor and reports read `status` and `notes`."""
    db.create_material(material_id="m2", formula="SiO2", source_type="d12", source_file="/in/m2.d12",
                       metadata={"origin": "queue"})
    rec = db.get_material("m2")
    assert rec["metadata"] == {"origin": "queue"} and json.loads(rec["metadata_json"]) == {"origin": "queue"}
    assert rec["status"] == "active" and "notes" in rec and rec["notes"] is None
    assert db.get_material("nope") is None


@case()
def get_materials_by_status_active(db: Any) -> None:
    """queue/monitor.py:572, recovery/detector.py:832, utils/file_manager.py:638
    `get_materials_by_status('active')`, newest first."""
    db.create_material(material_id="m2", formula="SiO2")
    assert [m["material_id"] for m in db.get_materials_by_status("active")] == ["m2", "mat1"]
    assert [m["material_id"] for m in db.get_all_materials()] == ["m2", "mat1"]


# --------------------------------------------------------------------------- calculations


@case()
def create_calculation_keywords_id_shape(db: Any) -> None:
    """queue/manager.py:609 `create_calculation(material_id=, calc_type=, input_file=, work_dir=,
    prerequisite_calc_id=)`; ids are `{material}_{type}_{timestamp}` (upstream's test asserts the prefix)."""
    first = db.create_calculation(material_id="mat1", calc_type="OPT")
    calc_id = db.create_calculation(material_id="mat1", calc_type="SP", input_file="/w/sp.d12", work_dir="/w",
                                    prerequisite_calc_id=first)
    assert calc_id.startswith("mat1_SP_") and first.startswith("mat1_OPT_")
    calc = db.get_calculation(calc_id)
    assert (calc["prerequisite_calc_id"], calc["status"], calc["work_dir"]) == (first, "pending", "/w")
    assert calc["priority"] == 0 and calc["recovery_attempts"] == 0 and calc["completion_type"] == "first_try"


@case()
def create_calculation_third_positional_is_subtype(db: Any) -> None:
    """database/materials.py signature: `create_calculation(material_id, calc_type, calc_subtype, ...)`."""
    calc_id = db.create_calculation("mat1", "SP", "PBE0")
    assert calc_id.endswith("_PBE0") and db.get_calculation(calc_id)["calc_subtype"] == "PBE0"
    assert db.get_calculation(calc_id)["input_file"] is None


@case()
def create_calculation_with_settings_then_submitted_with_output(db: Any) -> None:
    """workflow/executor.py:669-707 `create_calculation(..., calc_subtype=None, settings={workflow_id...})`
    then `update_calculation_status(calc_id, 'submitted', slurm_job_id=job_id, output_file=...)`."""
    calc_id = db.create_calculation(material_id="mat1", calc_type="OPT", calc_subtype=None, input_file="/w/a.d12",
                                    work_dir="/w", settings={"workflow_id": "wf_1", "workflow_step": 1})
    db.update_calculation_status(calc_id, "submitted", slurm_job_id="77", output_file="/w/mat1.out")
    calc = db.get_calculation(calc_id)
    assert json.loads(calc["settings_json"]) == {"workflow_id": "wf_1", "workflow_step": 1}
    assert (calc["status"], calc["slurm_job_id"], calc["output_file"]) == ("submitted", "77", "/w/mat1.out")
    assert calc["submitted_at"] is not None


@case()
def unsubmitted_slurm_job_id_reads_none(db: Any) -> None:
    """queue/manager.py:802-808 `get_calculations_by_status('submitted') + get_calculations_by_status('running')`,
    then `calc['slurm_job_id']` / `calc['slurm_state']` of a calculation never given a job id."""
    db.create_calculation(material_id="mat1", calc_type="OPT")
    db.update_calculation_status(db.get_calculations_by_status()[0]["calc_id"], "submitted")
    calcs = db.get_calculations_by_status("submitted") + db.get_calculations_by_status("running")
    assert len(calcs) == 1 and calcs[0]["slurm_job_id"] is None and calcs[0]["slurm_state"] is None


@case()
def status_with_slurm_state_and_started_at_arithmetic(db: Any) -> None:
    """queue/manager.py:829 `update_calculation_status(calc_id, status, slurm_state=)` and :845-856
    `datetime.fromisoformat(calc['started_at'])` compared with naive `datetime.now() - timedelta(...)`."""
    calc_id = submitted(db)
    db.update_calculation_status(calc_id, "running", slurm_state="RUNNING")
    (calc,) = db.get_calculations_by_status("running")
    started = datetime.fromisoformat(calc["started_at"])
    cutoff = datetime.now() - timedelta(seconds=60)
    assert started > cutoff and calc["slurm_state"] == "RUNNING"


@case()
def cancelled_with_error_type(db: Any) -> None:
    """queue/manager.py:930 `update_calculation_status(calc_id, 'cancelled', error_type=, error_message=)`;
    recovery/detector.py:857 the same with 'failed'."""
    calc_id = submitted(db)
    db.update_calculation_status(calc_id, "cancelled", error_type="early_failure", error_message="cancelled early")
    calc = db.get_calculation(calc_id)
    assert (calc["status"], calc["error_type"], calc["error_message"]) == ("cancelled", "early_failure",
                                                                          "cancelled early")
    assert calc["completed_at"] is not None and calc["slurm_job_id"] == "1001"


@case()
def get_calculation_by_slurm_id(db: Any) -> None:
    """queue/manager.py:946 `get_calculation_by_slurm_id(job) or next(... get_calculations_by_status('completed'))`."""
    calc_id = submitted(db, job="4242")
    assert db.get_calculation_by_slurm_id("4242")["calc_id"] == calc_id
    assert db.get_calculation_by_slurm_id("9999") is None


@case()
def slurm_job_id_is_kept_once_set(db: Any) -> None:
    """queue/manager.py:1355 resubmission `update_calculation_status(calc_id, 'submitted', slurm_job_id=new)`:
    upstream records a job id only while none is set."""
    calc_id = submitted(db, job="1")
    db.update_calculation_status(calc_id, "submitted", slurm_job_id="2")
    assert db.get_calculation(calc_id)["slurm_job_id"] == "1"


@case()
def by_status_three_positionals(db: Any) -> None:
    """database/utils/populate_completed_jobs.py:194
    `get_calculations_by_status('completed', calc['calc_type'], calc['material_id'])`."""
    opt = submitted(db, "OPT", job=None)
    sp = submitted(db, "SP", job=None)
    for calc_id in (opt, sp):
        db.update_calculation_status(calc_id, "completed")
    assert [c["calc_id"] for c in db.get_calculations_by_status("completed", "SP", "mat1")] == [sp]
    assert db.get_calculations_by_status("completed", "SP", "other") == []


@case()
def by_material_keyword_newest_first(db: Any) -> None:
    """workflow/engine.py:1688 (and 14 more sites) `get_calculations_by_status(material_id=material_id)`,
    relying on newest first."""
    ids = [db.create_calculation(material_id="mat1", calc_type=t) for t in ("OPT", "SP", "BAND")]
    assert [c["calc_id"] for c in db.get_calculations_by_status(material_id="mat1")] == ids[::-1]
    assert [c["calc_id"] for c in db.get_calculations_by_material("mat1")] == ids[::-1]


@case()
def by_material_and_type_most_recent_first(db: Any) -> None:
    """utils/file_manager.py:176 `get_calculations_by_status(material_id=, calc_type=...)`, `calcs[0]`
    is 'the most recent'."""
    db.create_calculation(material_id="mat1", calc_type="OPT")
    newer = db.create_calculation(material_id="mat1", calc_type="OPT")
    db.create_calculation(material_id="mat1", calc_type="SP")
    calcs = db.get_calculations_by_status(material_id="mat1", calc_type="OPT")
    assert len(calcs) == 2 and calcs[0]["calc_id"] == newer


@case()
def by_status_without_arguments(db: Any) -> None:
    """recovery/recovery.py:625 `get_calculations_by_status()`: every calculation."""
    ids = {db.create_calculation(material_id="mat1", calc_type=t) for t in ("OPT", "SP")}
    assert {c["calc_id"] for c in db.get_calculations_by_status()} == ids


@case()
def all_recent_and_material_calculations(db: Any) -> None:
    """queue/manager.py:1345 `get_all_calculations()`, workflow/monitor_workflow.py:36
    `get_recent_calculations(limit=5)`, analysis/missing_data.py:111 `get_material_calculations(mat_id)`."""
    ids = [db.create_calculation(material_id="mat1", calc_type=t, settings={"k": i})
           for i, t in enumerate(("OPT", "SP", "BAND"))]
    assert [c["calc_id"] for c in db.get_all_calculations()] == ids[::-1]
    assert [c["calc_id"] for c in db.get_recent_calculations(limit=2)] == ids[:0:-1]
    mine = db.get_material_calculations("mat1")
    assert [c["calc_id"] for c in mine] == ids[::-1] and mine[0]["settings"] == {"k": 2}


@case()
def update_settings_replace_and_merge(db: Any) -> None:
    """workflow/engine.py:221, :3516 `update_calculation_settings(calc_id, settings)`;
    workflow/executor.py:1487; `merge=True` keeps the other keys."""
    calc_id = db.create_calculation(material_id="mat1", calc_type="OPT", settings={"a": 1})
    db.update_calculation_settings(calc_id, {"workflow_id": "wf"})
    assert json.loads(db.get_calculation(calc_id)["settings_json"]) == {"workflow_id": "wf"}
    db.update_calculation_settings(calc_id, {"step": 2}, merge=True)
    assert json.loads(db.get_calculation(calc_id)["settings_json"]) == {"workflow_id": "wf", "step": 2}


@case()
def next_calculation_in_workflow(db: Any) -> None:
    """queue/manager.py:1364 `get_next_calculation_in_workflow(material_id)`."""
    assert db.get_next_calculation_in_workflow("mat1") == "OPT"
    db.update_calculation_status(db.create_calculation("mat1", "OPT"), "completed")
    assert db.get_next_calculation_in_workflow("mat1") == "SP"


@case()
def update_of_unknown_calculation_is_a_noop(db: Any) -> None:
    """queue/manager.py:989 passes whatever id it was handed; upstream's UPDATE matches no row."""
    db.update_calculation_status("no_such_calc", "failed", error_type="x", error_message="y")
    assert db.get_calculation("no_such_calc") is None


@case(upstream_bug="create_calculation() has no settings_json parameter (TypeError)")
def recovery_passes_settings_json(db: Any) -> None:
    """recovery/recovery.py:573 `create_calculation(material_id=, calc_type=, input_file=, priority=,
    settings_json=json.dumps({...}))`."""
    calc_id = db.create_calculation(material_id="mat1", calc_type="OPT", input_file="/w/fixed.d12", priority=1,
                                    settings_json=json.dumps({"is_recovery_attempt": True}))
    calc = db.get_calculation(calc_id)
    assert calc["priority"] == 1 and json.loads(calc["settings_json"]) == {"is_recovery_attempt": True}


# --------------------------------------------------------------------------- files


@case()
def add_file_record_keywords(db: Any, tmp_path: Path) -> None:
    """queue/manager.py:1266, utils/file_manager.py:181, :667
    `add_file_record(calc_id=, file_type=, file_name=, file_path=)`; the size is read from disk."""
    out = tmp_path / "mat1.out"
    out.write_text("CRYSTAL ENDS\n")
    calc_id = submitted(db)
    db.add_file_record(calc_id=calc_id, file_type="output", file_name=out.name, file_path=str(out))
    (row,) = raw(db, "SELECT file_id, file_type, file_name, file_path, file_size, checksum FROM files")
    assert tuple(row)[1:] == ("output", "mat1.out", str(out), out.stat().st_size, None)
    assert isinstance(row["file_id"], int)


@case()
def add_file_record_positional_with_checksum(db: Any) -> None:
    """database/materials.py signature `add_file_record(calc_id, file_type, file_name, file_path, checksum)`
    called positionally: the path must not land in the checksum column."""
    calc_id = submitted(db)
    db.add_file_record(calc_id, "log", "job.log", "/w/job.log", "sha256:ab")
    (row,) = raw(db, "SELECT file_name, file_path, checksum FROM files WHERE calc_id = ?", (calc_id,))
    assert tuple(row) == ("job.log", "/w/job.log", "sha256:ab")


# --------------------------------------------------------------------------- properties


def _extractor_save(db: Any, calc_id: str, name: str, numeric: float | None, text: str | None) -> None:
    """utils/property_extractor.py:1058-1083: select by (material, name, calc), update or insert."""
    with db._get_connection() as conn:
        existing = conn.execute(
            "SELECT property_id FROM properties WHERE material_id = ? AND property_name = ? AND calc_id = ?",
            ("mat1", name, calc_id),
        ).fetchone()
        if existing:
            conn.execute(
                "UPDATE properties SET property_value = ?, property_value_text = ?, property_unit = ?,"
                " extracted_at = ?, extractor_script = ? WHERE property_id = ?",
                (numeric, text, "eV", datetime.now().isoformat(), "crystal_property_extractor.py", existing[0]),
            )
        else:
            conn.execute(
                "INSERT INTO properties (material_id, calc_id, property_category, property_name, property_value,"
                " property_value_text, property_unit, extracted_at, extractor_script) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                ("mat1", calc_id, "electronic", name, numeric, text, "eV", datetime.now().isoformat(),
                 "crystal_property_extractor.py"),
            )


@case()
def raw_property_upsert_then_read(db: Any) -> None:
    """utils/property_extractor.py raw SQL through `_get_connection()`, then analysis reads
    `get_all_properties()` / `get_material_properties()` (text falls back into property_value)."""
    calc_id = submitted(db)
    _extractor_save(db, calc_id, "band_gap", 3.1, None)
    _extractor_save(db, calc_id, "band_gap", 3.4, None)
    _extractor_save(db, calc_id, "gap_type", None, "direct")
    props = db.get_material_properties("mat1")
    assert [(p["property_name"], p["property_value"], p["property_unit"]) for p in props] == [
        ("band_gap", 3.4, "eV"),
        ("gap_type", "direct", "eV"),
    ]
    assert [p["property_name"] for p in db.get_all_properties()] == ["band_gap", "gap_type"]
    assert {"property_id", "calc_id", "property_category", "confidence", "extractor_script", "extracted_at"} <= set(
        props[0]
    )


@case(upstream_bug="inserts str(uuid4()) into the INTEGER PRIMARY KEY property_id: 'datatype mismatch'")
def store_material_property_upstream_order(db: Any) -> None:
    """database/materials.py signature `store_material_property(material_id, property_name, property_value,
    property_category='General', calc_id=None, property_unit=None, confidence=None, extractor_script=None)`."""
    calc_id = submitted(db)
    db.store_material_property("mat1", "band_gap", 3.2, "electronic", calc_id, "eV", 0.9, "extractor.py")
    db.store_material_property("mat1", "space_group_symbol", "R-3c")
    props = {p["property_name"]: p for p in db.get_material_properties("mat1")}
    gap = props["band_gap"]
    assert (gap["property_category"], gap["calc_id"], gap["property_unit"], gap["confidence"]) == (
        "electronic", calc_id, "eV", 0.9)
    assert props["space_group_symbol"]["property_value"] == "R-3c"
    assert props["space_group_symbol"]["property_category"] == "General"


@case()
def properties_by_name(db: Any) -> None:
    """`get_properties_by_name(name)`: materials with their formula, by value."""
    calc_id = submitted(db)
    db.create_material(material_id="m2", formula="SiO2")
    _extractor_save(db, calc_id, "band_gap", 5.0, None)
    with db._get_connection() as conn:
        conn.execute("INSERT INTO properties (material_id, property_category, property_name, property_value,"
                     " extracted_at) VALUES ('m2', 'electronic', 'band_gap', 2.0, ?)", (datetime.now().isoformat(),))
    rows = db.get_properties_by_name("band_gap")
    assert [(r["material_id"], r["formula"], r["property_value"]) for r in rows] == [("m2", "SiO2", 2.0),
                                                                                    ("mat1", "Al2O3", 5.0)]


# --------------------------------------------------------------------------- raw SQL on upstream columns


@case()
def raw_sql_recovery_and_settings_columns(db: Any) -> None:
    """queue/manager.py:1126-1170 and utils/settings_extractor.py: `recovery_attempts`,
    `completion_type`, `input_settings_json` read and written with raw SQL."""
    calc_id = submitted(db)
    (row,) = raw(db, "SELECT recovery_attempts FROM calculations WHERE calc_id = ?", (calc_id,))
    assert row["recovery_attempts"] == 0
    with db._get_connection() as conn:
        conn.execute("UPDATE calculations SET recovery_attempts = ? WHERE calc_id = ?", (1, calc_id))
        conn.execute("UPDATE calculations SET completion_type = 'recovery_attempt' WHERE calc_id = ?", (calc_id,))
        conn.execute("UPDATE calculations SET input_settings_json = ? WHERE calc_id = ?", ('{"k": 1}', calc_id))
        conn.commit()  # upstream scripts commit themselves too
    calc = db.get_calculation(calc_id)
    assert (calc["recovery_attempts"], calc["completion_type"], calc["input_settings_json"]) == (
        1, "recovery_attempt", '{"k": 1}')


@case()
def raw_sql_report_queries(db: Any) -> None:
    """database/utils/database_status_report.py and query/queries.py aggregate queries."""
    db.update_calculation_status(submitted(db), "completed")
    assert [tuple(r) for r in raw(db, "SELECT calc_type, status, COUNT(*) as count FROM calculations"
                                      " GROUP BY calc_type, status")] == [("OPT", "completed", 1)]
    assert tuple(raw(db, "SELECT formula, space_group FROM materials WHERE material_id = ?", ("mat1",))[0]) == (
        "Al2O3", 167)
    assert raw(db, "SELECT COUNT(*) FROM files")[0][0] == 0


# --------------------------------------------------------------------------- stats, analysis, filters


@case()
def database_stats(db: Any) -> None:
    """9 call sites (run_mace.py, status reports, upstream's own test) read `get_database_stats()`."""
    db.update_calculation_status(submitted(db), "completed")
    submitted(db, "SP", job=None)
    stats = db.get_database_stats()
    assert stats["total_materials"] == 1
    assert stats["calculations_by_status"] == {"completed": 1, "pending": 1}
    assert stats["calculations_by_type"] == {"OPT": 1, "SP": 1}
    assert stats["db_size_mb"] > 0


@case()
def material_calculation_summary(db: Any) -> None:
    """workflow/status.py `get_material_calculation_summary(material_id)`."""
    db.update_calculation_status(submitted(db), "completed")
    submitted(db, "SP", job=None)
    summary = db.get_material_calculation_summary("mat1")
    assert summary["calculation_types"] == {"OPT": {"completed": 1}, "SP": {"pending": 1}}
    assert summary["completed_types"] == ["OPT"] and summary["total_calculations"] == 2
    assert set(db.get_material_calculation_summary()) == {"mat1"}


@case()
def filters_used_by_export(db: Any) -> None:
    """database/export/formats.py:413, :421 `filter_materials_advanced(expr)` and
    `filter_materials_by_properties(filters, logic)`."""
    calc_id = submitted(db)
    db.create_material(material_id="m2", formula="C", space_group=227)
    _extractor_save(db, calc_id, "band_gap", 8.8, None)
    assert [m["material_id"] for m in db.filter_materials_by_properties(["band_gap > 3.0"], "AND")] == ["mat1"]
    # simple filters look at properties only: a material without any never matches
    assert db.filter_materials_by_properties(["band_gap > 9", "space_group = 227"], "OR") == []
    assert [m["material_id"] for m in db.filter_materials_by_properties(["band_gap > 9", "band_gap < 9"],
                                                                        "OR")] == ["mat1"]
    expr = "(band_gap > 3 AND space_group = 167) OR formula LIKE 'C%'"
    assert [m["material_id"] for m in db.filter_materials_advanced(expr)] == ["m2", "mat1"]
    assert [m["material_id"] for m in db.filter_materials_advanced("band_gap IS NULL")] == ["m2"]
    assert [m["material_id"] for m in db.filter_materials_advanced("space_group IN (225, 227)")] == ["m2"]


@case()
def analyze_missing_data_shape(db: Any) -> None:
    """database/materials.py `analyze_missing_data(material_ids, target_properties)` (interactive explorer)."""
    calc_id = submitted(db, "SP")
    db.update_calculation_status(calc_id, "completed")
    _extractor_save(db, calc_id, "band_gap", 3.0, None)
    result = db.analyze_missing_data(["mat1"], ["band_gap", "fermi_energy"])
    mine = result["missing_by_material"]["mat1"]
    assert mine["missing_properties"] == ["fermi_energy"] and mine["completed_calculations"] == ["SP"]
    assert result["completeness_scores"]["mat1"] == 0.5 and result["missing_by_property"] == {
        "fermi_energy": ["mat1"]}
    assert db.analyze_missing_data(["ghost"]) == {"error": "No materials found to analyze"}


# --------------------------------------------------------------------------- workflow records


@case()
def workflow_templates_and_instances(db: Any) -> None:
    """queue/manager.py:1621 `create_workflow_template(template_id=, template_name=, workflow_steps=,
    description=)`, :1643 `get_all_workflow_templates()[0]['template_id']` (the most recent), :1650
    `create_workflow_instance(material_id, template_id)`."""
    db.create_workflow_template(template_id="t_old", template_name="old", workflow_steps=[{"calc_type": "OPT"}])
    db.create_workflow_template(template_id="t_new", template_name="new",
                                workflow_steps=[{"step_number": 1, "calc_type": "OPT"}], description="d")
    templates = db.get_all_workflow_templates()
    assert templates[0]["template_id"] == "t_new" and templates[0]["workflow_steps"][0]["calc_type"] == "OPT"
    instance_id = db.create_workflow_instance("mat1", "t_new")
    assert instance_id.startswith("mat1_workflow_")
    assert db.get_workflow_instance(instance_id)["status"] == "active"
    assert [i["instance_id"] for i in db.get_active_workflow_instances()] == [instance_id]


@case()
def workflow_state_steps(db: Any) -> None:
    """workflow/engine.py:2184 `update_workflow_state(workflow_id, completed_step=calc_type)`."""
    db.create_workflow_state("wf_1", "mat1", ["OPT", "SP"])
    db.update_workflow_state("wf_1", completed_step="OPT")
    state = db.get_workflow_state("wf_1")
    assert (state["completed_steps"], state["current_step"], state["status"]) == (["OPT"], 1, "active")
    db.update_workflow_state("wf_1", completed_step="SP")
    assert db.get_workflow_state("wf_1")["status"] == "completed"
    db.update_workflow_state("unknown", completed_step="OPT")  # no-op, as upstream


# --------------------------------------------------------------------------- maintenance


@case(upstream_bug="cutoff computed with replace(day=day - 30): ValueError on most days of the month")
def cleanup_old_records(db: Any) -> None:
    """`cleanup_old_records(days_old=30)` removes old failed/cancelled calculations and their files."""
    calc_id = submitted(db)
    db.update_calculation_status(calc_id, "failed")
    with db._get_connection() as conn:
        conn.execute("UPDATE calculations SET created_at = '2000-01-01T00:00:00' WHERE calc_id = ?", (calc_id,))
    recent = submitted(db, "SP", job="2")
    db.update_calculation_status(recent, "failed")
    db.cleanup_old_records(days_old=30)
    assert db.get_calculation(calc_id) is None and db.get_calculation(recent) is not None


@case()
def backup_database(db: Any, tmp_path: Path) -> None:
    """`backup_database(backup_dir)` returns the path of a copy that opens with the same rows."""
    submitted(db)
    path = db.backup_database(str(tmp_path / "backups"))
    copy = sqlite3.connect(path)
    assert copy.execute("SELECT material_id FROM materials").fetchall() == [("mat1",)]
    assert copy.execute("SELECT count(*) FROM calculations").fetchone()[0] == 1


# --------------------------------------------------------------------------- module functions


@case()
def module_function_material_ids(impl: Any) -> None:
    """queue/manager.py, workflow/engine.py, utils/file_manager.py, workflow/planner.py import
    `create_material_id_from_file` from the materials module."""
    f = impl.create_material_id_from_file
    assert f("test1_opt_BULK_OPTGEOM_symm_CRYSTAL_OPT_symm_PBE-D3_POB-TZVP-REV2.d12") == "test1"
    assert f("test3-RCSR-ums_BULK_OPTGEOM_TZ_symm_CRYSTAL_OPT_symm_PBE-D3_POB-TZVP-REV2.d12") == "test3-RCSR-ums"
    assert f("/some/dir/test_material_opt.d12") == "test_material"
    assert f("Al2O3_sp2_B3LYP.out") == "Al2O3" and f("mp-149_SCAN.d12") == "mp-149"
    assert f(Path("ZnO_wurtzite_SLAB_x.d12")) == "ZnO_wurtzite"


@case()
def module_function_similarity(impl: Any, db: Any) -> None:
    """queue/manager.py, workflow/engine.py `find_material_by_similarity(db, material_id)`."""
    db.create_material(material_id="ZnO_symm", formula="ZnO")
    assert impl.find_material_by_similarity(db, "mat1") == "mat1"
    assert impl.find_material_by_similarity(db, "ZnO") == "ZnO_symm"
    assert impl.find_material_by_similarity(db, "CdTe") is None


@case(upstream_bug="returns only the counts, e.g. '23' for Al2O3, and counts basis-set lines as atoms")
def module_function_formula(impl: Any, tmp_path: Path) -> None:
    """utils/file_manager.py, queue/manager.py `extract_formula_from_d12(path)` feeds `create_material(formula=)`."""
    d12 = tmp_path / "al2o3.d12"
    d12.write_text("Al2O3\nCRYSTAL\n0 0 0\n167\n4.76 12.99\n2\n13 0.0 0.0 0.352\n8 0.306 0.0 0.25\nEND\n"
                   "13 4\n0 0 6 2.0 1.0\n 1.0 1.0\n99 0\nEND\n")
    assert impl.extract_formula_from_d12(str(d12)) == "AlO"
    d12.write_text("x\nCRYSTAL\n0 0 0\n225\n4.2\n3\n12 0 0 0\n208 0.5 0.5 0.5\n8 0.25 0.25 0.25\nEND\n")
    assert impl.extract_formula_from_d12(str(d12)) == "MgO2"
    assert impl.extract_formula_from_d12(str(tmp_path / "missing.d12")) == "Unknown"


# --------------------------------------------------------------------------- the runner


@pytest.mark.parametrize("name, fn, upstream_bug", CASES, ids=[c[0] for c in CASES])
def test_upstream_call_pattern(name: str, fn: Callable[..., None], upstream_bug: str | None,
                               impl: Any, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    if upstream_bug and "mace_hpc" not in impl.__name__:
        request.node.add_marker(pytest.mark.xfail(reason=f"upstream bug: {upstream_bug}", strict=True))
    wanted = fn.__code__.co_varnames[: fn.__code__.co_argcount]
    available = {"impl": impl, "tmp_path": tmp_path}
    if "db" in wanted:
        available["db"] = request.getfixturevalue("db")
    fn(**{k: available[k] for k in wanted})


def test_there_are_at_least_thirty_upstream_patterns() -> None:
    assert len(CASES) >= 30
