"""The spec's planner and executor with a stage sequence (issue 9, item 6).

`ContextualWorkflowPlanner.plan_workflow(stages=...)` builds an upstream-MACE OPT -> SP -> BAND ->
DOSS plan with resources per stage; the saved file is a valid plan (`load_plan`); the executor runs
it on the local backend, each stage handing on a CRYSTAL-style wavefunction file (`fort.9` of OPT
becomes SP's `fort.20`, SP's `fort.9` feeds BAND and DOSS) and reports per-stage results; every
element is merged once, when its chain ends. Bad stage arguments: one PlanError naming the field,
nothing created.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from submit_fakes import PY

from mace_hpc.cli.main import run
from mace_hpc.errors import PlanError
from mace_hpc.plan import load_plan
from mace_hpc.records import read_state
from mace_hpc.workflow.executor import WorkflowExecutor
from mace_hpc.workflow.executor_contextual import ContextualWorkflowExecutor
from mace_hpc.workflow.planner import WorkflowPlanner
from mace_hpc.workflow.planner_contextual import ContextualWorkflowPlanner

# a stand-in for a CRYSTAL run: reads its input wavefunction (or none), writes its output one with
# the chain so far plus its own label, so the last file shows every stage ran, in order, in one context
HAND_OFF = (
    "import json, os, sys; ctx, src, dst, label = sys.argv[1:5]; "
    "text = open(os.path.join(ctx, src)).read() if src != '-' else ''; "
    "os.makedirs(os.path.dirname(os.path.join(ctx, dst)), exist_ok=True); "
    "open(os.path.join(ctx, dst), 'w').write(text + label + '\\n'); "
    "json.dump({'energy_eV': -float(len(text))}, open('results.json', 'w'))"
)


def step(name: str, src: str, dst: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "command": [PY, "-c", HAND_OFF, "{context_dir}", src, dst, name.upper()], **extra}


STAGES = [
    {"name": "OPT", "resources": {"cpus": 16, "time": "7-00:00:00"}, "outputs": ["opt/fort.9"],
     "steps": [step("opt", "-", "opt/fort.9")]},
    {"name": "SP", "inputs": ["opt/fort.9"], "outputs": ["sp/fort.9"],
     "steps": [step("sp-in", "opt/fort.9", "sp/fort.20"), step("sp", "sp/fort.20", "sp/fort.9")]},
    {"name": "BAND", "needs": ["SP"], "resources": {"cpus": 28, "time": "2:00:00", "mem": "64G"},
     "inputs": ["sp/fort.9"], "outputs": ["band/fort.25"], "steps": [step("band", "sp/fort.9", "band/fort.25")]},
    {"name": "DOSS", "needs": ["SP"], "optional": True, "inputs": ["sp/fort.9"], "outputs": ["doss/fort.25"],
     "steps": [step("doss", "sp/fort.9", "doss/fort.25")]},
]
MATERIALS = ["mgo", "zno", "tio2"]


def elements(names: list[str] = MATERIALS) -> list[dict[str, Any]]:
    return [{"id": m, "materials": [{"material_id": m, "formula": m.upper()}]} for m in names]


def calc_rows(db: Path) -> dict[tuple[str, str], int]:
    """(workflow id, calc_type) -> calculations in the shared database (a second merge doubles them)."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT workflow_id, calc_type, COUNT(*) FROM calculations GROUP BY 1, 2").fetchall()
    return {(w, c): n for w, c, n in rows}


# ---------------------------------------------------------------------------- planning
def test_planner_builds_a_four_stage_plan_that_saves_and_loads(in_tmp, mace_env) -> None:
    planner = ContextualWorkflowPlanner("isolated", "crystal-chain", interactive=False)
    plan = planner.plan_workflow(name="chain", elements=elements(), stages=STAGES)
    assert plan["stages"] == [{k: v for k, v in s.items() if k != "steps"} for s in STAGES]
    steps = plan["elements"][0]["steps"]
    assert [(s["name"], s["stage"], s["calc_type"]) for s in steps] == [
        ("opt", "OPT", "OPT"), ("sp-in", "SP", "SP"), ("sp", "SP", "SP"), ("band", "BAND", "BAND"),
        ("doss", "DOSS", "DOSS")]
    assert all(e["steps"] == steps for e in plan["elements"])
    assert "stage" not in STAGES[0]["steps"][0]  # the caller's stage list is not changed

    path = planner.save_workflow_plan(plan)
    assert path == mace_env["scratch_root"] / "crystal-chain" / "config" / "chain.json"
    loaded = load_plan(path)
    assert [(s.name, s.needs, s.optional) for s in loaded.stages] == [
        ("OPT", (), False), ("SP", ("OPT",), False), ("BAND", ("SP",), False), ("DOSS", ("SP",), True)]
    assert [s.resources for s in loaded.stages] == [{"cpus": 16, "time": 7 * 24 * 60}, {},
                                                    {"cpus": 28, "time": 120, "mem": "64G"}, {}]
    assert [s.inputs for s in loaded.stages] == [(), ("opt/fort.9",), ("sp/fort.9",), ("sp/fort.9",)]
    assert [[st.stage for st in e.steps] for e in loaded.elements] == [["OPT", "SP", "SP", "BAND", "DOSS"]] * 3


def test_compact_stage_names_with_stage_resources_take_steps_by_calc_type(in_tmp, mace_env) -> None:
    """Upstream MACE's vocabulary: a sequence of calculation types; steps go to their calc_type's stage."""
    element = {"id": "mgo", "materials": [{"material_id": "mgo", "formula": "MgO"}], "steps": [
        {"name": "opt", "calc_type": "OPT", "command": ["true"]},
        {"name": "sp", "command": ["true"]},  # no calc_type: its name is the stage's, ignoring case
        {"name": "band", "calc_type": "BAND", "command": ["true"]},
        {"name": "dos", "calc_type": "DOSS", "command": ["true"]},
        {"name": "extra", "stage": "SP", "command": ["true"]}]}  # an explicit stage is kept
    plan = WorkflowPlanner().plan_workflow(
        name="compact", elements=[element], stages=["OPT", "SP", "BAND", "DOSS"],
        stage_resources={"OPT": {"cpus": 16, "time": "7-00:00:00"}, "BAND": {"cpus": 28, "mem": "64G"}})
    assert plan["isolation_mode"] == "shared"
    assert plan["stages"] == [{"name": "OPT", "resources": {"cpus": 16, "time": "7-00:00:00"}}, {"name": "SP"},
                              {"name": "BAND", "resources": {"cpus": 28, "mem": "64G"}}, {"name": "DOSS"}]
    assert [s["stage"] for s in plan["elements"][0]["steps"]] == ["OPT", "SP", "BAND", "DOSS", "SP"]
    assert "stage" not in element["steps"][0]
    loaded = load_plan(WorkflowPlanner().save_workflow_plan(plan))
    assert [s.needs for s in loaded.stages] == [(), ("OPT",), ("SP",), ("BAND",)]  # default: the previous one


def test_stage_steps_go_into_the_sweep_template(in_tmp, mace_env) -> None:
    plan = WorkflowPlanner().plan_workflow(
        name="swept", sweep={"parameters": {"m": ["a", "b"]}, "id": "{m}", "template": {"materials": []}},
        stages=STAGES[:2])
    assert [s["name"] for s in plan["sweep"]["template"]["steps"]] == ["opt", "sp-in", "sp"]
    assert [e.workflow_id for e in load_plan(WorkflowPlanner().save_workflow_plan(plan)).elements] == [
        "swept-a", "swept-b"]


# ---------------------------------------------------------------------------- executing
def test_executor_runs_every_stage_and_merges_each_element_once(in_tmp, mace_env) -> None:
    planner = ContextualWorkflowPlanner("isolated", "run-chain", interactive=False)
    path = planner.save_workflow_plan(planner.plan_workflow(name="chain", elements=elements(), stages=STAGES,
                                                            max_parallel=2))
    summary = ContextualWorkflowExecutor().execute_workflow_plan(path)
    assert summary["succeeded"] and summary["states"] == {"MERGED": 3}
    assert summary["stages"] == {
        "OPT": {"needs": [], "optional": False, "resources": {"cpus": 16, "time": 10080}, "states": {"COMPLETED": 3}},
        "SP": {"needs": ["OPT"], "optional": False, "resources": {}, "states": {"COMPLETED": 3}},
        "BAND": {"needs": ["SP"], "optional": False, "resources": {"cpus": 28, "time": 120, "mem": "64G"},
                 "states": {"COMPLETED": 3}},
        "DOSS": {"needs": ["SP"], "optional": True, "resources": {}, "states": {"COMPLETED": 3}},
    }
    for result in summary["results"]:
        ctx = Path(result["context_dir"])
        stages = result["stages"]
        assert list(stages) == ["OPT", "SP", "BAND", "DOSS"]
        assert {s["state"] for s in stages.values()} == {"COMPLETED"}
        assert all(s["attempts"] == 1 and s["finished_at"] >= s["started_at"] for s in stages.values())
        # the hand-off files: each stage read what the one before wrote, in the element's one context
        assert (ctx / "band" / "fort.25").read_text() == "OPT\nSP-IN\nSP\nBAND\n"
        assert (ctx / "doss" / "fort.25").read_text() == "OPT\nSP-IN\nSP\nDOSS\n"
        sp9 = (ctx / "sp" / "fort.9").read_bytes()
        assert stages["SP"]["outputs"] == {"sp/fort.9": {"size": len(sp9), "sha256": hashlib.sha256(sp9).hexdigest()}}
        assert stages["SP"]["started_at"] >= stages["OPT"]["finished_at"]
        assert min(stages["BAND"]["started_at"], stages["DOSS"]["started_at"]) >= stages["SP"]["finished_at"]
        # merged once, when the chain ended
        state = read_state(ctx)
        assert [h[0] for h in state.history].count("MERGED") == 1 and state.state == "MERGED"
    assert calc_rows(mace_env["shared_database"]) == {
        (f"chain-{m}", calc): n for m in MATERIALS for calc, n in (("OPT", 1), ("SP", 2), ("BAND", 1), ("DOSS", 1))}
    assert json.dumps(summary)  # printable as JSON by the CLI


def test_a_failed_optional_stage_is_reported_and_the_element_still_completes(in_tmp, mace_env) -> None:
    broken = [*STAGES[:3], {**STAGES[3], "steps": [{"name": "doss", "command": ["false"]}]}]
    plan = WorkflowPlanner().plan_workflow(name="opt-fail", elements=elements(["mgo"]), stages=broken)
    summary = WorkflowExecutor().execute_workflow_plan(plan)
    assert summary["succeeded"] and summary["states"] == {"MERGED": 1}
    stages = summary["results"][0]["stages"]
    assert {k: v["state"] for k, v in stages.items()} == {"OPT": "COMPLETED", "SP": "COMPLETED",
                                                          "BAND": "COMPLETED", "DOSS": "FAILED"}
    assert stages["DOSS"]["message"] == "step doss: exit code 1"
    assert summary["stages"]["DOSS"]["states"] == {"FAILED": 1}


def test_single_stage_plans_have_no_stage_results(in_tmp, mace_env) -> None:
    plan = {"name": "flat", "elements": [{"id": "a", "steps": [{"name": "s", "command": ["true"]}]}]}
    summary = ContextualWorkflowExecutor().execute_workflow_plan(plan)
    assert "stages" not in summary and "stages" not in summary["results"][0]


# ---------------------------------------------------------------------------- bad stage arguments
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"stages": "OPT,SP"}, r"^stages: must be a non-empty list of stage names or stage mappings, e\.g\. "),
        ({"stages": []}, r"^stages: must be a non-empty list .* not an empty list$"),
        ({"stages": ["OPT", 3]}, r"^stages\[1\]: must be a mapping, not a number$"),
        ({"stages": ["OPT", {"name": "SP", "needs": ["OTP"]}]},
         r"^stages\[1\]\.needs\[0\]: 'OTP' is not a stage of this plan; did you mean 'OPT'\?$"),
        ({"stages": [{"name": "OPT", "needs": ["SP"]}, "SP"]},
         r"^stages\[\d\]\.needs: the stages form a cycle: (OPT -> SP -> OPT|SP -> OPT -> SP)$"),
        ({"stages": ["OPT", "opt"]}, r"^stages\[1\]\.name: 'opt' is already a stage"),
        ({"stages": [{"name": "OPT", "resource": {}}]}, r"^stages\[0\]\.resource: unknown key; did you mean 'resources'\?$"),
        ({"stages": [{"name": "OPT", "steps": []}]}, r"^stages\[0\]\.steps: must be a non-empty list of steps"),
        ({"stages": [{"name": "OPT", "steps": [{"name": "x", "stage": "SP", "command": ["true"]}]}, "SP"]},
         r"^stages\[0\]\.steps\[0\]\.stage: names stage 'SP' but the step is listed under stage 'OPT'"),
        ({"stages": [{"name": "OPT", "outputs": ["../fort.9"]}]}, r"^stages\[0\]\.outputs\[0\]: '\.\./fort\.9' escapes"),
        ({"stages": ["OPT"], "stage_resources": {"BNAD": {"cpus": 2}}},
         r"^stage_resources\.BNAD: 'BNAD' is not a stage of this plan; allowed: OPT$"),
        ({"stages": [{"name": "OPT", "resources": {"cpus": 2}}], "stage_resources": {"OPT": {"cpus": 4}}},
         r"^stage_resources\.OPT: stages\[0\] \('OPT'\) has resources already; give them in one place$"),
        ({"stages": ["OPT"], "stage_resources": {"OPT": {"cpus": 0}}}, r"^stages\[0\]\.resources\.cpus: "),
        ({"stage_resources": {"OPT": {"cpus": 4}}}, r"^stage_resources: needs stages="),
    ],
)
def test_bad_stage_arguments_are_one_error_naming_the_field(in_tmp, mace_env, kwargs, message) -> None:
    planner = ContextualWorkflowPlanner("isolated", "bad", interactive=False)
    with pytest.raises(PlanError, match=message) as info:
        planner.plan_workflow(name="bad", elements=elements(["mgo"]), **kwargs)
    assert "\n" not in str(info.value)
    assert not mace_env["scratch_root"].exists() and planner.context is None  # nothing created


def test_a_step_in_no_stage_is_refused_by_the_plan_validation(in_tmp, mace_env) -> None:
    element = {"id": "a", "steps": [{"name": "relax", "command": ["true"]}]}
    with pytest.raises(PlanError, match=r"^elements\[0\]\.steps\[0\]\.stage: is required when the plan declares "
                                        r"stages; one of OPT, SP$"):
        WorkflowPlanner().plan_workflow(name="lost", elements=[element], stages=["OPT", "SP"])


def test_the_documented_planner_example_runs_as_written(in_tmp, mace_env) -> None:
    """docs/plan-format.md's planner example builds, saves and loads the plan it shows."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "plan-format.md").read_text(encoding="utf-8")
    section = doc.split("### From Python: the planner's `stages`", 1)[1]
    block = re.search(r"```python\n(.*?)\n```", section, re.S)
    assert block is not None
    namespace: dict[str, Any] = {}
    exec(compile(block.group(1), "plan-format-planner-example", "exec"), namespace)
    assert namespace["path"].parent.parent.parent == mace_env["scratch_root"]
    assert load_plan(namespace["path"]).stages[2].resources == {"cpus": 28, "time": 120, "mem": "64G"}


def test_mace_workflow_prints_a_line_per_stage(in_tmp, mace_env, capsys) -> None:
    broken = [*STAGES[:3], {**STAGES[3], "steps": [{"name": "doss", "command": ["false"]}]}]
    planner = WorkflowPlanner()
    path = planner.save_workflow_plan(planner.plan_workflow(name="cli", elements=elements(["mgo", "zno"]),
                                                            stages=broken))
    assert run(["workflow", "--execute", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-4:] == ["  stage OPT: 2 COMPLETED", "  stage SP: 2 COMPLETED", "  stage BAND: 2 COMPLETED",
                        "  stage DOSS: 2 FAILED"]
