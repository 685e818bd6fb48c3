"""mace_hpc.workflow: the spec's planner and executor API over the submission pipeline.

Planners build plan dicts (asking questions only when told to or on a terminal) and save them
into their context; executors run a plan locally and summarise it; IsolatedWorkflowExecution is a
whole workflow in one context that is merged, archived and removed on exit. The legacy classes
are the same in shared mode. (tests/test_spec_examples.py runs the spec's own examples.)
"""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest
from epilogue_helpers import shared_rows
from submit_fakes import PY

from mace_hpc.config import load_config
from mace_hpc.errors import PlanError
from mace_hpc.records import read_state
from mace_hpc.records.identity import read_identity
from mace_hpc.workflow.executor import WorkflowExecutor
from mace_hpc.workflow.executor_contextual import ContextualWorkflowExecutor, IsolatedWorkflowExecution
from mace_hpc.workflow.planner import WorkflowPlanner
from mace_hpc.workflow.planner_contextual import ContextualWorkflowPlanner

ELEMENT = {"id": "a", "materials": [{"material_id": "ma", "formula": "Al"}],
           "steps": [{"name": "s", "command": ["true"]}]}


def _energy_plan(name: str, n: int, failing: tuple[int, ...] = (), isolation: str = "isolated") -> dict[str, Any]:
    """n elements, each one material `<name>-m<i>` and a step writing energy=-i; `failing` ones exit 3."""
    def step(i: int) -> list[str]:
        code = f"import json, sys; json.dump({{'energy': -{i}}}, open('results.json', 'w')); sys.exit({3 if i in failing else 0})"
        return [PY, "-c", code]

    return {"name": name, "isolation_mode": isolation, "elements": [
        {"id": f"e{i}", "materials": [{"material_id": f"{name}-m{i}", "formula": "Al"}],
         "steps": [{"name": "s", "command": step(i)}]} for i in range(n)]}


# ---------------------------------------------------------------------------- planners
def test_contextual_planner_plans_from_the_config_and_saves_into_its_context(in_tmp, mace_env, monkeypatch) -> None:
    monkeypatch.setenv("MACE_ON_COMPLETE", "merge+archive")
    monkeypatch.setenv("MACE_MAX_PARALLEL", "3")
    planner = ContextualWorkflowPlanner("isolated", "wf-plan", interactive=False)
    plan = planner.plan_workflow(name="p1", elements=[ELEMENT], env={"A": "b"})
    assert plan == {"name": "p1", "isolation_mode": "isolated", "on_complete": "merge+archive", "max_parallel": 3,
                    "elements": [ELEMENT], "env": {"A": "b"}}
    ctx = mace_env["scratch_root"] / "wf-plan"
    assert planner.context.directory == ctx and (ctx.stat().st_mode & 0o777) == 0o700
    assert read_identity(ctx).isolation_mode == "isolated"
    path = planner.save_workflow_plan(plan)
    assert path == ctx / "config" / "p1.json"
    assert json.loads(path.read_text()) == plan
    explicit = planner.save_workflow_plan(plan, in_tmp / "out" / "mine.json")
    assert json.loads(explicit.read_text()) == plan
    assert sorted(os.listdir(in_tmp)) == ["out", "scratch"]  # nothing written to the cwd (scratch: mace_env's)


def test_planner_without_elements_does_not_ask_when_not_interactive(in_tmp, mace_env) -> None:
    planner = ContextualWorkflowPlanner("isolated", "quiet", interactive=False)
    plan = planner.plan_workflow()
    assert plan["name"] == "quiet" and plan["elements"] == []  # named after its workflow, not validated
    with pytest.raises(PlanError, match=r"^elements\[0\]\.steps\[0\]: needs exactly one of command"):
        planner.plan_workflow(elements=[{"id": "a", "steps": [{"name": "s"}]}])


def test_interactive_planner_builds_one_element_per_material(in_tmp, mace_env, monkeypatch, capsys) -> None:
    answers = iter(["mat1", "Al2O3", "echo hi", "mat2", "", "", ""])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(answers))
    plan = ContextualWorkflowPlanner("isolated", "asked", interactive=True).plan_workflow(name="asked")
    assert plan["elements"] == [
        {"id": "mat1", "materials": [{"material_id": "mat1", "formula": "Al2O3"}],
         "steps": [{"name": "run", "command": ["echo", "hi"]}]},
        {"id": "mat2", "materials": [{"material_id": "mat2", "formula": "mat2"}],
         "steps": [{"name": "run", "command": ["true"]}]},
    ]
    assert "empty material id to finish" in capsys.readouterr().out


def test_legacy_planner_is_shared_mode_and_saves_in_the_cwd(in_tmp, mace_env) -> None:
    planner = WorkflowPlanner(isolation_mode="isolated")  # the legacy class ignores the mode
    plan = planner.plan_workflow(name="legacy", elements=[ELEMENT])
    assert planner.isolation_mode == plan["isolation_mode"] == "shared"
    assert planner.save_workflow_plan(plan) == in_tmp / "legacy.plan.json"
    assert planner.context is None and not mace_env["scratch_root"].exists()  # no context in shared mode


# ---------------------------------------------------------------------------- executors
def test_executor_summary_counts_states_and_brings_successes_home(in_tmp, mace_env) -> None:
    executor = ContextualWorkflowExecutor(max_parallel=2)
    summary = executor.execute_workflow_plan(_energy_plan("ex", 3, failing=(1,)))
    scratch = mace_env["scratch_root"]
    assert {k: summary[k] for k in ("plan", "isolation_mode", "elements", "states", "succeeded")} == {
        "plan": "ex", "isolation_mode": "isolated", "elements": 3, "states": {"MERGED": 2, "KEPT": 1},
        "succeeded": False}
    assert summary["shared_database"] == str(mace_env["shared_database"])
    assert summary["manifest"] == str(scratch / ".submissions" / "ex" / "manifest.json")
    assert summary["job_id"].startswith("local-") and summary["seconds"] > 0
    assert [(r["index"], r["workflow_id"], r["state"], r["run_state"], r["context_dir"]) for r in summary["results"]] == [
        (0, "ex-e0", "MERGED", "COMPLETED", str(scratch / "ex-e0")),
        (1, "ex-e1", "KEPT", "FAILED", str(scratch / "ex-e1")),
        (2, "ex-e2", "MERGED", "COMPLETED", str(scratch / "ex-e2")),
    ]
    assert summary["results"][1]["message"] == "step s: exit code 3"
    assert shared_rows(mace_env["shared_database"]) == {"materials": 2, "calculations": 2, "properties": 2,
                                                        "files": 6}
    assert executor.last_result.record.max_parallel == 2
    assert json.dumps(summary)  # printable as JSON by the CLI


def test_executor_arguments_override_a_given_config(tmp_path: Path, mace_env) -> None:
    cfg = load_config()
    executor = ContextualWorkflowExecutor("isolated", scratch_root=tmp_path / "alt", shared_database=tmp_path / "alt.db",
                                          config=cfg)
    assert cfg.sources["scratch_root"] == cfg.sources["shared_database"] == "executor argument"
    summary = executor.execute_workflow_plan(_energy_plan("alt", 1, isolation="shared"))
    assert summary["isolation_mode"] == "isolated" and summary["succeeded"]  # the executor's mode wins
    assert read_state(tmp_path / "alt" / "alt-e0").state == "MERGED"
    assert shared_rows(tmp_path / "alt.db")["properties"] == 1
    assert not mace_env["scratch_root"].exists() and not mace_env["shared_database"].exists()


def test_legacy_executor_runs_in_shared_mode(in_tmp, mace_env) -> None:
    summary = WorkflowExecutor(isolation_mode="isolated").execute_workflow_plan(_energy_plan("leg", 2))
    assert summary["isolation_mode"] == "shared" and summary["states"] == {"MERGED": 2} and summary["succeeded"]
    ctx = mace_env["scratch_root"] / "leg-e0"
    assert read_state(ctx).epilogue["merge"] == {"status": "shared-mode"}  # written there directly
    assert not (ctx / "materials.db").exists()
    assert shared_rows(mace_env["shared_database"])["properties"] == 2


# ---------------------------------------------------------------------------- one isolated workflow
def test_isolated_execution_keeps_its_elements_inside_and_archives_then_removes_it(in_tmp, mace_env) -> None:
    (in_tmp / "plan.json").write_text(json.dumps(_energy_plan("inner", 2)))
    with IsolatedWorkflowExecution("iso-1") as execution:
        assert os.environ["MACE_WORKFLOW_ID"] == "iso-1"
        summary = execution.execute_workflow_plan("plan.json")
        ctx = execution.context.directory
        assert ctx == mace_env["scratch_root"] / "iso-1"
        assert [r["context_dir"] for r in summary["results"]] == [str(ctx / "elements" / f"inner-e{i}") for i in (0, 1)]
    assert summary["states"] == {"MERGED": 2}
    assert not ctx.exists() and "MACE_WORKFLOW_ID" not in os.environ
    with tarfile.open(mace_env["archive_dir"] / "iso-1.tar.gz") as tar:
        names = tar.getnames()
    assert "iso-1/elements/inner-e1/state.json" in names and "iso-1/elements/inner-e0/materials.db" in names
    assert shared_rows(mace_env["shared_database"])["materials"] == 2


def test_isolated_execution_that_fails_is_still_archived(in_tmp, mace_env) -> None:
    with pytest.raises(RuntimeError, match="use IsolatedWorkflowExecution as a context manager"):
        IsolatedWorkflowExecution("unused").execute_workflow_plan({})
    with pytest.raises(ValueError, match="the user's code failed"):
        with IsolatedWorkflowExecution("iso-2") as execution:
            execution.execute_workflow_plan(_energy_plan("boom", 1))
            raise ValueError("the user's code failed")
    assert not execution.context.directory.exists()
    assert (mace_env["archive_dir"] / "iso-2.tar.gz").is_file()
    assert shared_rows(mace_env["shared_database"])["materials"] == 1  # merged before the error
