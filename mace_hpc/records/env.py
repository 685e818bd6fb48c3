"""The `MACE_*` variables that carry identity between mace-hpc processes, and who sets them.

`element_env` is the one function that says what an element's steps see from mace-hpc: the
runner exports it and `mace-submit --dry-run` shows it, so the two cannot disagree.
"""

from __future__ import annotations

from collections.abc import Mapping

# identity of the workflow context a process works in (set by WorkflowContext and the runner)
WORKFLOW_ID = "MACE_WORKFLOW_ID"
ISOLATION_MODE = "MACE_ISOLATION_MODE"
CONTEXT_DIR = "MACE_CONTEXT_DIR"
# what a job array exports to every element (set by mace-submit through the backend)
MANIFEST = "MACE_MANIFEST"
INDEX_OFFSET = "MACE_INDEX_OFFSET"  # element index = array task id + offset (chunked plans)
ARRAY_INDICES = "MACE_ARRAY_INDICES"  # a sparse list submitted as a covering range (PBS Pro)
REQUEUE = "MACE_REQUEUE"  # "1": requeue an element stopped by its time limit
JOB_ID = "MACE_JOB_ID"  # the local backend's job id
STAGE = "MACE_STAGE"  # multi-stage plans: the stage this array runs
PACK = "MACE_PACK"  # packed arrays: K elements per array task (records/pack.py)
PACK_INDICES = "MACE_PACK_INDICES"  # packed arrays: the array's element indices, array notation
PACK_TIME = "MACE_PACK_TIME"  # packed arrays: each element's own time budget in seconds
PACK_LANES = "MACE_PACK_LANES"  # packed arrays: how many elements of a task run at once (records/pack.py)
CPUS = "MACE_CPUS"  # a laned packed task: the cpus each element's steps may use (task cpus // lanes)
# what the backstop merge job gets
SCRATCH_ROOT = "MACE_SCRATCH_ROOT"
BACKSTOP = "MACE_BACKSTOP"

CONTEXT_KEYS = (WORKFLOW_ID, ISOLATION_MODE, CONTEXT_DIR)


def context_env(workflow_id: str, isolation_mode: str, context_dir: str) -> dict[str, str]:
    """The variables that make child processes resolve the same context and database."""
    return {WORKFLOW_ID: workflow_id, ISOLATION_MODE: isolation_mode, CONTEXT_DIR: str(context_dir)}


def element_env(
    workflow_id: str, isolation_mode: str, context_dir: str, plan_env: Mapping[str, str] | None = None
) -> dict[str, str]:
    """What one element's steps see from mace-hpc: its context identity plus the plan's env."""
    return {**context_env(workflow_id, isolation_mode, context_dir), **(plan_env or {})}
