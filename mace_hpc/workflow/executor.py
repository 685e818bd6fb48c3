"""Legacy executor: shared mode, exactly as scripts written before isolation expect."""

from __future__ import annotations

from typing import Any

from .executor_contextual import ContextualWorkflowExecutor


class WorkflowExecutor(ContextualWorkflowExecutor):
    """Runs plans against the shared database (isolation_mode='shared')."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.pop("isolation_mode", None)
        super().__init__("shared", **kwargs)
