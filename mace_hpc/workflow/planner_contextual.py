"""Workflow planning with isolation support.

`plan_workflow(**spec)` builds a plan dict from the given fields and the configuration; it asks
questions only when stdin is a terminal and the spec says nothing about elements, so it is safe
in scripts and jobs. Isolated planners save plans into their context's `config/` directory.
`stages=` builds a multi-stage plan from a MACE calculation sequence (OPT -> SP -> BAND -> DOSS,
resources per stage); see `plan_workflow` and `stage_spec`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..config import Config, load_config
from ..context.workflow_context import WorkflowContext, generate_workflow_id
from ..plan import load_plan_data
from ..plan.validate import fail
from ..util.atomic import atomic_write_json
from .stage_spec import apply_stages, stage_spec


class ContextualWorkflowPlanner:
    def __init__(
        self,
        isolation_mode: str | None = None,
        workflow_id: str | None = None,
        *,
        config: Config | None = None,
        interactive: bool | None = None,
    ) -> None:
        self.config = config or load_config(cli={"isolation_mode": isolation_mode})
        self.isolation_mode = isolation_mode or self.config["isolation_mode"]
        self.workflow_id = workflow_id
        self.interactive = interactive
        self.context: WorkflowContext | None = None

    def _ensure_context(self) -> WorkflowContext:
        if self.context is None:
            self.context = WorkflowContext(
                self.workflow_id, self.isolation_mode, cleanup_on_exit=False, config=self.config
            )
            self.context.ensure_directory()
            self.workflow_id = self.context.workflow_id
        return self.context

    def plan_workflow(self, *, stages: Sequence[str | Mapping[str, Any]] | None = None,
                      stage_resources: Mapping[str, Mapping[str, Any]] | None = None, **spec: Any) -> dict[str, Any]:
        """A plan dict; validated now when it has elements (a PlanError names the bad field).

        `spec` holds plan fields (`name`, `elements`, `sweep`, `resources`, `env`, ...). `stages`
        makes it a multi-stage plan (docs/plan-format.md, "Stages"): an upstream-MACE calculation
        sequence, each stage its own array task per element with its own resources, e.g.

            planner.plan_workflow(elements=[...], stages=[
                {"name": "OPT", "resources": {"cpus": 16, "time": "7-00:00:00"}, "outputs": ["fort.9"],
                 "steps": [{"name": "opt", "command": [...]}]},
                {"name": "SP", "inputs": ["fort.9"], "steps": [...]},
                {"name": "BAND", "needs": ["SP"], "resources": {"cpus": 28, "time": "2:00:00", "mem": "64G"}, ...},
                {"name": "DOSS", "needs": ["SP"], "optional": True, ...}])

        or compactly `stages=["OPT", "SP", "BAND", "DOSS"]` with `stage_resources={"OPT": {...}}`.
        Each stage is a name or a mapping with the plan format's stage fields (`needs` defaults to
        the previous stage) plus `steps`, which every element (and the sweep template) runs in that
        stage; their `calc_type` defaults to the stage's name. A step of an element that names no
        stage goes to the stage its `calc_type` (else its `name`) names, ignoring case. The stage
        arguments are checked before anything is created.
        """
        if stage_resources is not None and stages is None:
            fail("stage_resources", "needs stages=[...]: resources per stage of a multi-stage plan")
        staged = stage_spec(stages, stage_resources) if stages is not None else None
        if self.isolation_mode == "isolated":
            self._ensure_context()
        name = spec.pop("name", None) or self.workflow_id or generate_workflow_id("plan")
        plan: dict[str, Any] = {
            "name": name,
            "isolation_mode": self.isolation_mode,
            "on_complete": self.config["on_complete"],
            "max_parallel": self.config["max_parallel"],
        }
        plan.update(spec)
        has_work = bool(plan.get("elements") or plan.get("sweep"))
        if not has_work and self._is_interactive():
            plan["elements"] = self._ask_elements()
            has_work = True
        plan.setdefault("elements", [])
        if staged is not None:
            apply_stages(plan, staged)
        if has_work:
            load_plan_data(plan, plan_dir=Path.cwd())
        return plan

    def _is_interactive(self) -> bool:
        return self.interactive if self.interactive is not None else sys.stdin.isatty()

    def _ask_elements(self) -> list[dict[str, Any]]:
        """Minimal terminal dialogue: one element per material, one command step each."""
        elements = []
        print("Plan a workflow (empty material id to finish).")
        while True:
            material_id = input("material id: ").strip()
            if not material_id:
                break
            formula = input("  formula: ").strip() or material_id
            command = input("  command to run (words separated by spaces): ").split()
            elements.append(
                {"id": material_id, "materials": [{"material_id": material_id, "formula": formula}],
                 "steps": [{"name": "run", "command": command or ["true"]}]}
            )
        return elements

    def save_workflow_plan(self, plan: Any, path: str | os.PathLike[str] | None = None) -> Path:
        """Write the plan atomically; default: the context's config dir (isolated) or the cwd."""
        data = plan.to_dict() if hasattr(plan, "to_dict") else dict(plan)
        if path is None:
            name = data.get("name") or "workflow"
            if self.isolation_mode == "isolated":
                path = self._ensure_context().config_dir / f"{name}.json"
            else:
                path = Path.cwd() / f"{name}.plan.json"
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write_json(path, data, mode=0o644)
