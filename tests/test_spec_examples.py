"""Every code block of the user's specification runs as written (only `mace.` -> `mace_hpc.`).

The blocks are read from docs/spec/ (a verbatim copy of the spec), so a block cannot silently
drift from what users were promised. Behavioural assertions follow in the named tests below.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

SPEC = Path(__file__).resolve().parent.parent / "docs" / "spec" / "workflow-isolation-migration-guide.md"
BLOCK_RE = re.compile(r"```(\w+)\n(.*?)```", re.S)


def spec_blocks(lang: str) -> list[str]:
    return [body for kind, body in BLOCK_RE.findall(SPEC.read_text()) if kind == lang]


def adapt(code: str) -> str:
    return re.sub(r"\bmace\.", "mace_hpc.", code)


def write_small_plan(path: Path, name: str = "spec_plan") -> Path:
    """A tiny real plan: two elements, each a python command writing results.json."""
    script = "import json,os; json.dump(dict(energy_eV=-1.5, wf=os.environ['MACE_WORKFLOW_ID']), open('results.json','w'))"
    plan = {
        "name": name,
        "max_parallel": 2,
        "elements": [
            {
                "id": f"m{i}",
                "materials": [{"material_id": f"mat{i}", "formula": "Al2O3", "space_group": 167}],
                "steps": [{"name": "sp", "calc_type": "SP", "command": [sys.executable, "-c", script]}],
            }
            for i in range(2)
        ],
    }
    path.write_text(json.dumps(plan))
    return path


PY_BLOCKS = spec_blocks("python")


def test_spec_has_the_blocks_we_expect():
    assert len(PY_BLOCKS) == 8
    assert len(spec_blocks("bash")) == 2
    assert len(spec_blocks("json")) == 1


@pytest.mark.parametrize("index", range(len(PY_BLOCKS)))
def test_python_block_runs_as_written(index, in_tmp, mace_env):
    """Each python block of the spec, executed in a fresh namespace in a fresh directory.

    Later snippets use names imported by earlier ones (a reader has run those), so the spec's own
    import lines are executed first.
    """
    write_small_plan(in_tmp / "workflow_plan.json")
    code = adapt(PY_BLOCKS[index])
    namespace: dict = {"__name__": "__spec_example__"}
    imports = [ln for b in PY_BLOCKS[:index] for ln in adapt(b).splitlines() if ln.startswith("from mace_hpc")]
    exec("\n".join(imports), namespace)
    exec(compile(code, f"spec-block-{index}", "exec"), namespace)


def test_bash_config_block_is_honoured(in_tmp, monkeypatch):
    """`export MACE_ISOLATION_MODE=isolated` etc., run by bash, reach a WorkflowContext."""
    block = spec_blocks("bash")[0]
    probe = (
        "from mace_hpc.workflow.context import WorkflowContext as W; c = W();"
        "print(c.workflow_id, c.isolation_mode, c.cleanup_on_exit)"
    )
    out = subprocess.run(
        ["bash", "-c", f"{block}\n{shlex.quote(sys.executable)} -c {shlex.quote(probe)}"],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    assert out == ["my_workflow_001", "isolated", "True"]


def test_cli_block_runs_as_written(in_tmp, mace_env):
    """`mace workflow --isolation-mode isolated|shared --execute plan.json` as in the spec."""
    write_small_plan(in_tmp / "plan.json")
    mace = str(Path(sys.executable).parent / "mace")
    for line in spec_blocks("bash")[1].splitlines():
        if line.startswith("mace "):
            argv = shlex.split(line)
            proc = subprocess.run([mace, *argv[1:]], capture_output=True, text=True)
            assert proc.returncode == 0, proc.stderr
            assert "2 elements" in proc.stdout
    # isolated run merged both materials into the shared DB; the shared run wrote it directly
    from mace_hpc.database.materials import MaterialDatabase

    db = MaterialDatabase(mace_env["shared_database"])
    assert sorted(m["material_id"] for m in db.get_all_materials()) == ["mat0", "mat1"]


def test_json_config_file_is_honoured(in_tmp, monkeypatch):
    monkeypatch.delenv("MACE_CONFIG")
    (in_tmp / ".mace_config.json").write_text(spec_blocks("json")[0])
    from mace_hpc.config import load_config

    cfg = load_config()
    assert cfg["isolation_mode"] == "isolated"
    assert cfg["auto_cleanup"] is False
    assert cfg["context_settings.cleanup_on_exit"] is True
    assert cfg["context_settings.archive_results"] is True
    assert cfg.sources["isolation_mode"].endswith(".mace_config.json")


# ---------------------------------------------------------------- behaviour behind the examples


def test_example_1_isolated_execution_merges_archives_and_cleans(in_tmp, mace_env):
    from mace_hpc.database.materials import MaterialDatabase
    from mace_hpc.workflow.executor_contextual import IsolatedWorkflowExecution

    write_small_plan(in_tmp / "workflow_plan.json")
    with IsolatedWorkflowExecution("my_workflow_001") as executor:
        result = executor.execute_workflow_plan("workflow_plan.json")
        ctx_dir = executor.context.directory
        assert ctx_dir.is_dir()
    assert result["succeeded"] and result["elements"] == 2
    assert result["states"] == {"MERGED": 2}
    assert not ctx_dir.exists()  # cleaned up on exit ...
    assert (mace_env["archive_dir"] / "my_workflow_001.tar.gz").is_file()  # ... after archiving
    props = MaterialDatabase(mace_env["shared_database"]).get_material_properties("mat1")
    assert {p["property_name"]: p["property_value"] for p in props}["wf"] == "spec_plan-m1"


def test_example_2_manual_context(in_tmp, mace_env):
    from mace_hpc.workflow.context import WorkflowContext

    with WorkflowContext("my_workflow", isolation_mode="isolated") as ctx:
        assert os.environ["MACE_WORKFLOW_ID"] == "my_workflow"
        assert os.environ["MACE_CONTEXT_DIR"] == str(ctx.directory)
        db = ctx.get_database()
        assert db.db_path == ctx.directory / "materials.db"
        assert db.create_material(material_id="test_material", formula="Al2O3", space_group=167) == "test_material"
        export_file = ctx.export_results()
    assert "MACE_WORKFLOW_ID" not in os.environ
    data = json.loads(Path(export_file).read_text())
    assert export_file.parent == ctx.directory / "exports"
    assert [m["material_id"] for m in data["materials"]] == ["test_material"]
    assert (ctx.directory.stat().st_mode & 0o777) == 0o700
    assert not mace_env["shared_database"].exists()  # isolation: the shared DB was never touched


def test_example_3_planner_saves_into_the_context(in_tmp, mace_env):
    from mace_hpc.workflow.planner_contextual import ContextualWorkflowPlanner

    planner = ContextualWorkflowPlanner(isolation_mode="isolated")
    plan = planner.plan_workflow()
    path = planner.save_workflow_plan(plan)
    assert path.parent == planner.context.config_dir
    assert json.loads(path.read_text())["isolation_mode"] == "isolated"
    planned = planner.plan_workflow(
        name="sweep1", elements=[{"id": "a", "steps": [{"name": "s", "command": ["true"]}]}]
    )
    assert planned["elements"][0]["id"] == "a"


def test_export_to_db_is_exactly_once(in_tmp, mace_env):
    from mace_hpc.database.materials import MaterialDatabase
    from mace_hpc.workflow.context import WorkflowContext

    with WorkflowContext("my_workflow", isolation_mode="isolated") as ctx:
        db = ctx.get_database()
        db.create_material(material_id="m1", formula="Si")
        calc = db.create_calculation("m1", "SP")
        db.store_material_property("m1", "band_gap", 1.1, calc_id=calc, property_unit="eV")
        ctx.export_results("shared_materials.db")
        ctx.export_results("shared_materials.db")
    shared = MaterialDatabase(in_tmp / "shared_materials.db")
    assert shared.counts()["materials"] == 1
    assert shared.counts()["calculations"] == 1
    assert [p["property_value"] for p in shared.get_material_properties("m1")] == [1.1]


def test_debugging_active_contexts_across_processes(in_tmp, mace_env):
    from mace_hpc.workflow.context import WorkflowContext

    code = (
        "import sys, time\nfrom mace_hpc.workflow.context import WorkflowContext\n"
        "with WorkflowContext('workflow_001', isolation_mode='shared', shared_database='other.db'):\n"
        "    print('ready', flush=True); sys.stdin.readline()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        active = WorkflowContext.list_active_contexts()
        assert [(a["workflow_id"], a["status"], a["pid"]) for a in active] == [("workflow_001", "active", proc.pid)]
        ctx = WorkflowContext.get_active_context("workflow_001")
        assert ctx is not None and ctx.get_status()["workflow_id"] == "workflow_001"
        assert ctx.get_status()["isolation_mode"] == "shared"
        assert ctx.database_path == in_tmp / "other.db"  # the other process's database, not ours
    finally:
        proc.stdin.write("\n")
        proc.stdin.close()
        proc.wait(30)
    assert WorkflowContext.list_active_contexts() == []
    assert WorkflowContext.get_active_context("workflow_001") is None


def test_killed_process_shows_as_stale(in_tmp, mace_env):
    from mace_hpc.workflow.context import WorkflowContext

    code = (
        "import os\nfrom mace_hpc.workflow.context import WorkflowContext\n"
        "ctx = WorkflowContext('doomed', isolation_mode='isolated').activate()\nos._exit(9)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=False)
    entries = WorkflowContext.list_active_contexts()
    assert [(e["workflow_id"], e["status"]) for e in entries] == [("doomed", "stale")]
    assert WorkflowContext.get_active_context("doomed") is None


def test_resume_keeps_directory_and_data(in_tmp, mace_env):
    from mace_hpc.workflow.context import WorkflowContext

    with WorkflowContext("failed_workflow_001", isolation_mode="isolated", cleanup_on_exit=False) as ctx:
        ctx.get_database().create_material(material_id="x", formula="NaCl")
        first_dir = ctx.directory
    ctx = WorkflowContext("failed_workflow_001", isolation_mode="isolated", cleanup_on_exit=False)
    assert ctx.directory == first_dir
    assert ctx.get_database().get_material("x")["formula"] == "NaCl"


def test_contextual_database_compat_layer(in_tmp, mace_env):
    from mace_hpc.database.materials import MaterialDatabase
    from mace_hpc.database.materials_contextual import enable_contextual_databases
    from mace_hpc.workflow.context import WorkflowContext

    assert MaterialDatabase().db_path == mace_env["shared_database"]  # legacy: shared by default
    enable_contextual_databases()
    with WorkflowContext("wf_iso", isolation_mode="isolated") as ctx:
        assert MaterialDatabase().db_path == ctx.directory / "materials.db"
    with WorkflowContext("wf_shared", isolation_mode="shared"):
        assert MaterialDatabase().db_path == mace_env["shared_database"]
    assert MaterialDatabase().db_path == mace_env["shared_database"]


def test_job_environment_resolves_the_context_database(in_tmp, mace_env, monkeypatch):
    from mace_hpc.database.materials_contextual import ContextualMaterialDatabase

    monkeypatch.setenv("MACE_ISOLATION_MODE", "isolated")
    monkeypatch.setenv("MACE_WORKFLOW_ID", "job_wf_7")
    db = ContextualMaterialDatabase()
    assert db.db_path == mace_env["scratch_root"] / "job_wf_7" / "materials.db"


def test_cleanup_on_exit_archives_first(in_tmp, mace_env):
    from mace_hpc.workflow.context import WorkflowContext

    with WorkflowContext("tmp_wf", isolation_mode="isolated", cleanup_on_exit=True) as ctx:
        ctx.get_database().create_material(material_id="y", formula="MgO")
    assert not ctx.directory.exists()
    import tarfile

    with tarfile.open(mace_env["archive_dir"] / "tmp_wf.tar.gz") as tar:
        names = tar.getnames()
    assert "tmp_wf/materials.db" in names and "tmp_wf/MANIFEST.sha256.json" in names


def test_json_export_decodes_metadata(in_tmp, mace_env):
    from mace_hpc.workflow.context import WorkflowContext

    with WorkflowContext("meta_wf", isolation_mode="isolated") as ctx:
        ctx.get_database().create_material(material_id="m", formula="Al", metadata={"source": "icsd", "n": 4})
        data = json.loads(ctx.export_results(in_tmp / "out.json").read_text())
    assert data["workflow_id"] == "meta_wf"
    assert data["materials"][0]["metadata"] == {"source": "icsd", "n": 4}


def test_reentering_the_same_context_restores_the_environment_once(in_tmp, mace_env):
    from mace_hpc.workflow.context import WorkflowContext

    ctx = WorkflowContext("twice", isolation_mode="isolated", cleanup_on_exit=True)
    with ctx:
        with ctx:
            pass
        assert os.environ["MACE_WORKFLOW_ID"] == "twice" and ctx.directory.is_dir()  # still active
        assert [e["workflow_id"] for e in WorkflowContext.list_active_contexts()] == ["twice"]
    assert "MACE_WORKFLOW_ID" not in os.environ
    assert not ctx.directory.exists()  # cleaned up once, at the outer exit
