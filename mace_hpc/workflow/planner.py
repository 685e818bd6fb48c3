"""Legacy planner: shared mode, for scripts written before isolation."""

from __future__ import annotations

from typing import Any

from .planner_contextual import ContextualWorkflowPlanner


class WorkflowPlanner(ContextualWorkflowPlanner):
    def __init__(self, **kwargs: Any) -> None:
        kwargs.pop("isolation_mode", None)
        super().__init__("shared", **kwargs)
