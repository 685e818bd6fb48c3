"""Upstream MACE's workflow bookkeeping on `MaterialDatabase`: templates, instances and states.

Same methods, parameters and return shapes as upstream (`workflow_templates`,
`workflow_instances`, `workflow_states` tables). These rows stay in the database they were written
to; merging brings home materials, calculations, properties and files (docs/migration.md).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from .rows import encode_any_json, require_text, unused_id
from .schema import local_now


def _load_list(text: Any) -> list[Any]:
    try:
        value = json.loads(text) if text else []
    except ValueError:
        return []
    return value if isinstance(value, list) else []


class WorkflowRecordsMixin:
    """Needs `_tx`, `_query`, `_one` (MaterialDatabase)."""

    _tx: Any
    _query: Any
    _one: Any

    # ----------------------------------------------------------------- templates

    def create_workflow_template(
        self,
        template_id: str,
        template_name: str,
        workflow_steps: Sequence[Mapping[str, Any]],
        description: str | None = None,
    ) -> str:
        row = (
            require_text(template_id, "template_id"),
            require_text(template_name, "template_name"),
            description,
            encode_any_json(list(workflow_steps), "workflow_steps"),
            local_now(),
        )
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO workflow_templates (template_id, template_name, description, workflow_steps_json,"
                " created_at) VALUES (?, ?, ?, ?, ?)",
                row,
            )
        return template_id

    def get_workflow_template(self, template_id: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM workflow_templates WHERE template_id = ?", (template_id,))

    def get_all_workflow_templates(self) -> list[dict[str, Any]]:
        """All templates, newest first (callers take `[0]` as the most recent)."""
        return self._query("SELECT * FROM workflow_templates ORDER BY created_at DESC, rowid DESC")

    # ----------------------------------------------------------------- instances

    def create_workflow_instance(
        self,
        material_id: str,
        template_id: str | None = None,
        workflow_config: Mapping[str, Any] | None = None,
        workflow_scripts: Mapping[str, Any] | None = None,
    ) -> str:
        """A running instance of a workflow for a material; id `{material}_workflow_{stamp}`
        (made unique with a suffix if two start in the same second)."""
        now = local_now()
        base = f"{material_id}_workflow_{datetime.fromisoformat(now):%Y%m%d_%H%M%S}"
        config = encode_any_json(dict(workflow_config), "workflow_config") if workflow_config else None
        scripts = encode_any_json(dict(workflow_scripts), "workflow_scripts") if workflow_scripts else None
        with self._tx() as conn:
            instance_id = unused_id(conn, "workflow_instances", "instance_id", base)
            conn.execute(
                "INSERT INTO workflow_instances (instance_id, material_id, template_id, status, current_step,"
                " started_at, workflow_config_json, workflow_scripts_json) VALUES (?, ?, ?, 'active', 0, ?, ?, ?)",
                (instance_id, material_id, template_id, now, config, scripts),
            )
        return instance_id

    def update_workflow_instance_status(
        self,
        instance_id: str,
        status: str,
        current_step: int | None = None,
        completed_at: str | None = None,
        workflow_config: Mapping[str, Any] | None = None,
        workflow_scripts: Mapping[str, Any] | None = None,
    ) -> None:
        sets: dict[str, Any] = {"status": require_text(status, "status")}
        if current_step is not None:
            sets["current_step"] = int(current_step)
        if completed_at:
            sets["completed_at"] = completed_at
        if workflow_config:
            sets["workflow_config_json"] = encode_any_json(dict(workflow_config), "workflow_config")
        if workflow_scripts:
            sets["workflow_scripts_json"] = encode_any_json(dict(workflow_scripts), "workflow_scripts")
        with self._tx() as conn:
            conn.execute(
                f"UPDATE workflow_instances SET {', '.join(f'{c} = ?' for c in sets)} WHERE instance_id = ?",
                (*sets.values(), instance_id),
            )

    def get_workflow_instance(self, instance_id: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM workflow_instances WHERE instance_id = ?", (instance_id,))

    def get_workflow_instances_by_material(self, material_id: str) -> list[dict[str, Any]]:
        return self._query(
            "SELECT * FROM workflow_instances WHERE material_id = ? ORDER BY started_at DESC, rowid DESC",
            (material_id,),
        )

    def get_active_workflow_instances(self) -> list[dict[str, Any]]:
        return self._query("SELECT * FROM workflow_instances WHERE status = 'active' ORDER BY started_at, rowid")

    def get_all_workflow_instances(self) -> list[dict[str, Any]]:
        return self._query("SELECT * FROM workflow_instances ORDER BY started_at DESC, rowid DESC")

    # ----------------------------------------------------------------- states

    def create_workflow_state(self, workflow_id: str, material_id: str, planned_sequence: Sequence[str]) -> str:
        now = local_now()
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO workflow_states (workflow_id, material_id, planned_sequence, completed_steps,"
                " current_step, status, last_updated, created_at) VALUES (?, ?, ?, '[]', 0, 'active', ?, ?)",
                (require_text(workflow_id, "workflow_id"), material_id, json.dumps(list(planned_sequence)), now, now),
            )
        return workflow_id

    def update_workflow_state(
        self,
        workflow_id: str,
        completed_step: str | None = None,
        failed_step: str | None = None,
        status: str | None = None,
    ) -> None:
        """Record a completed or failed step; without `status`, it follows from the steps
        (all planned done: completed; any failed: failed; else active). Unknown id: no-op."""
        with self._tx() as conn:
            row = conn.execute(
                "SELECT completed_steps, failed_steps, planned_sequence, current_step FROM workflow_states"
                " WHERE workflow_id = ?",
                (workflow_id,),
            ).fetchone()
            if row is None:
                return
            completed, failed, planned = (_load_list(row[0]), _load_list(row[1]), _load_list(row[2]))
            current = row[3]
            if completed_step and completed_step not in completed:
                completed.append(completed_step)
                if completed_step in planned:
                    current = planned.index(completed_step) + 1
            if failed_step and failed_step not in failed:
                failed.append(failed_step)
            if not status:
                status = "completed" if len(completed) == len(planned) else "failed" if failed else "active"
            conn.execute(
                "UPDATE workflow_states SET completed_steps = ?, failed_steps = ?, current_step = ?, status = ?,"
                " last_updated = ?, error_count = error_count + ? WHERE workflow_id = ?",
                (json.dumps(completed), json.dumps(failed), current, status, local_now(), int(bool(failed_step)),
                 workflow_id),
            )

    def get_workflow_state(self, workflow_id: str) -> dict[str, Any] | None:
        state = self._one("SELECT * FROM workflow_states WHERE workflow_id = ?", (workflow_id,))
        if state is not None:
            for key in ("planned_sequence", "completed_steps", "failed_steps"):
                state[key] = _load_list(state[key])
        return state
