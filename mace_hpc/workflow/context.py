"""The spec's `mace.workflow.context` (as `mace_hpc.workflow.context`): WorkflowContext lives in
`mace_hpc.context`, below the element runner and the epilogue that use it."""

from ..context.workflow_context import WorkflowContext, generate_workflow_id

__all__ = ["WorkflowContext", "generate_workflow_id"]
