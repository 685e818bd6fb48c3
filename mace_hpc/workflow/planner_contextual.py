"""Workflow planning with isolation support.

`plan_workflow(**spec)` builds a plan dict from the given fields and the configuration; it asks
questions only when stdin is a terminal and the spec says nothing about elements, so it is safe
in scripts and jobs. Isolated planners save plans into their context's `config/` directory.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from ..config import Config, load_config
from ..context.workflow_context import WorkflowContext, generate_workflow_id
from ..plan import load_plan_data
from ..util.atomic import atomic_write_json


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

    def plan_workflow(self, **spec: Any) -> dict[str, Any]:
        """A plan dict; validated now when it has elements (a PlanError names the bad field)."""
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
