"""Executors that run a plan's elements on this machine, each in its own context when isolated.

They are the local backend of `mace-submit` seen through the spec's API: the same contexts,
element runner, state files and epilogue as a cluster run, so what works here works in a job.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config import Config, load_config
from ..context.workflow_context import WorkflowContext
from ..records.stages import Stage, stage_results
from ..status.collect import element_states, summarize
from ..submission.submit import submit_plan


class ContextualWorkflowExecutor:
    """Run a workflow plan locally, up to `max_parallel` elements at once."""

    def __init__(
        self,
        isolation_mode: str | None = None,
        *,
        max_parallel: int | None = None,
        scratch_root: str | os.PathLike[str] | None = None,
        shared_database: str | os.PathLike[str] | None = None,
        config: Config | None = None,
        progress: Any = None,
    ) -> None:
        overrides = {"isolation_mode": isolation_mode, "scratch_root": scratch_root and str(scratch_root),
                     "shared_database": shared_database and str(shared_database)}
        self.config = config or load_config(cli=overrides)
        for key, value in overrides.items():
            if value is not None and config is not None:
                self.config.set(key, value, "executor argument")
        self.isolation_mode = isolation_mode  # None: the plan's mode, then the configuration's
        self.max_parallel = max_parallel
        self.progress = progress
        self.last_result: Any = None

    def execute_workflow_plan(self, plan: str | os.PathLike[str] | dict[str, Any] | Any) -> dict[str, Any]:
        """Run every element; returns a summary (counts per state, per-element rows, where results are).

        A multi-stage plan runs each element's stages in order on this machine (a stage starts when
        its own element's upstream stages are done); the summary then has `stages` (per stage: needs,
        optional, resources, elements per state) and each result its `stages` (per stage: state,
        message, times, attempts, outputs with size and SHA-256)."""
        result = submit_plan(
            plan, config=self.config, backend="local", isolation_mode=self.isolation_mode,
            max_parallel=self.max_parallel, progress=self.progress,
        )
        self.last_result = result
        manifest = result.submission.manifest()
        rows = element_states(manifest)
        counts = summarize(rows)
        summary = {
            "plan": result.submission.name,
            "isolation_mode": result.submission.isolation_mode,
            "elements": len(rows),
            "states": counts,
            "succeeded": all(r.get("run_state") == "COMPLETED" for r in rows),
            "shared_database": str(result.submission.shared_database),
            "manifest": str(result.submission.manifest_path),
            "job_id": result.job_ids[0] if result.job_ids else None,
            "seconds": round(result.seconds, 3),
            "results": [
                {k: r.get(k) for k in ("index", "workflow_id", "state", "run_state", "context_dir", "message")}
                for r in rows
            ],
        }
        if manifest.stages:
            _add_stage_results(summary, manifest.stages, rows)
        return summary


def _add_stage_results(summary: dict[str, Any], stages: Sequence[Stage], rows: list[dict[str, Any]]) -> None:
    """A multi-stage plan's summary also says, per stage, how many elements ended in each state
    (and the stage's needs, optional flag and resources), and per element what each stage did."""
    for result, row in zip(summary["results"], rows, strict=True):
        result["stages"] = stage_results(stages, row.get("stages") or {})
    summary["stages"] = {
        s.name: {"needs": list(s.needs), "optional": s.optional, "resources": dict(s.resources),
                 "states": dict(Counter(r["stages"][s.name]["state"] for r in summary["results"]))}
        for s in stages
    }


class IsolatedWorkflowExecution:
    """`with IsolatedWorkflowExecution("id") as executor:` a whole workflow in one isolated context.

    Its elements' contexts live inside the workflow's context; on exit their results have been
    merged into the shared database (by the epilogue) and the context is archived, then removed.
    """

    def __init__(
        self,
        workflow_id: str | None = None,
        *,
        cleanup_on_exit: bool = True,
        archive_results: bool | None = None,
        max_parallel: int | None = None,
        config: Config | None = None,
    ) -> None:
        self.config = config or load_config()
        self.context = WorkflowContext(
            workflow_id, "isolated", cleanup_on_exit=cleanup_on_exit, archive_results=archive_results,
            config=self.config,
        )
        self.workflow_id = self.context.workflow_id
        self.max_parallel = max_parallel
        self.executor: ContextualWorkflowExecutor | None = None

    def __enter__(self) -> IsolatedWorkflowExecution:
        self.context.activate()
        self.executor = ContextualWorkflowExecutor(
            "isolated", max_parallel=self.max_parallel,
            scratch_root=self.context.directory / "elements",
            shared_database=self.config.path("shared_database").absolute(),
        )
        return self

    def execute_workflow_plan(self, plan: str | os.PathLike[str] | dict[str, Any] | Any) -> dict[str, Any]:
        if self.executor is None:
            raise RuntimeError("use IsolatedWorkflowExecution as a context manager: `with ... as executor:`")
        if isinstance(plan, (str, os.PathLike)):
            plan = Path(plan).absolute()
        return self.executor.execute_workflow_plan(plan)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.context.deactivate(failed=exc_type is not None)
