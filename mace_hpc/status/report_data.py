"""The data of `mace report`: every element's state, times and resources, the merged results with
their units, the sweep parameters and the plan's own analysis, as one JSON-able dict.

The HTML report embeds exactly this dict and `mace report --json` prints it, so the page and other
tools never disagree. Built from the state files, `elements.json`, the saved plan and the shared
database; the scheduler is asked only when a backend is passed (`--refresh`).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from ..element.steps import load_callable
from ..plan.load import submitted_plan_fields
from ..records.layout import SubmissionPaths
from ..records.manifest import Manifest, read_element_specs
from ..records.states import ORDER
from ..records.submission import SubmissionRecord
from ..schedulers import Backend
from ..schedulers.base import get_accounting
from .efficiency import read_usage
from .reconcile import collect
from .results import read_merged, split_unit, unit_from_name

REPORT_FORMAT = 1
ELEMENT_COLUMNS = ("index", "workflow_id", "state", "run_state", "attempts", "job_id", "scheduler_state",
                   "message", "conflicts", "context_dir", "host", "queued_at", "started_at", "finished_at",
                   "peak_rss_bytes", "cpu_seconds", "params", "sacct_elapsed_s", "sacct_max_rss_bytes", "retries", "stage", "stages")


def build_report_data(paths: SubmissionPaths, record: SubmissionRecord, manifest: Manifest,
                      backend: Backend | None = None) -> dict[str, Any]:
    """Everything the report shows; only when `backend` is given (`--refresh`): one scheduler query
    for the states and one accounting call (sacct) for elapsed time and MaxRSS per element."""
    t0 = time.perf_counter()
    status = collect(record, manifest, backend, query=backend is not None)
    usage, usage_error = read_usage(record, get_accounting(record.backend, record.scheduler)) if backend is not None else ({}, None)
    specs = read_element_specs(paths.elements)
    params, param_names = sweep_parameters(specs)
    owner = material_owners(specs)
    for row in status.rows:
        row["params"] = params.get(row["index"], {})
        used = usage.get(row["job_id"] or "", {}).get(row["index"])
        if used is not None and used.shared_by > 1:
            used = None  # a packed task's record, not this element's: the histograms take the runner's
        row["sacct_elapsed_s"] = used.elapsed_s if used else None
        row["sacct_max_rss_bytes"] = used.max_rss_bytes if used else None
        row["queued_at"] = row["queued_at"] or record.submitted_at  # a first submission writes no state file
    merged = read_merged(Path(manifest.shared_database), list(owner))
    by_index = {r["index"]: r for r in status.rows}
    columns = ["material_id", "formula", "workflow_id", *param_names, *merged.names]
    rows = []
    for mid, formula in merged.formulas.items():
        element = by_index.get(owner.get(mid, -1), {})
        values = merged.values.get(mid, {})
        rows.append([mid, formula, element.get("workflow_id"), *(element.get("params", {}).get(p) for p in param_names),
                     *(_finite(values.get(n)) for n in merged.names)])
    units = {**{p: unit_from_name(p) for p in param_names}, **merged.units}
    labels = {c: f"{split_unit(c)[0].replace('_', ' ')} ({units[c]})" if units.get(c) else c for c in units}
    fields = submitted_plan_fields(paths.plan)
    records = [dict(zip(columns, r, strict=True)) for r in rows]
    return {
        "format": REPORT_FORMAT,
        "plan": status.plan,
        "description": fields.get("description") or "",
        "backend": status.backend,
        "generated_at": time.time(),
        "shared_database": manifest.shared_database,
        "scratch_root": manifest.scratch_root,
        "jobs": [j.to_dict() for j in status.jobs],
        "scheduler_queries": status.scheduler_queries,
        "scheduler_error": status.scheduler_error or usage_error,
        "resource_source": "sacct" if usage and any(usage.values()) else "state files",
        "state_order": [str(s) for s in ORDER],
        "summary": status.counts,
        "stages": status.stage_counts,  # multi-stage plans: stage -> state -> elements (plan order)
        "total": status.total,
        "settled": status.settled(),
        "elements": {"columns": list(ELEMENT_COLUMNS), "rows": [[r.get(c) for c in ELEMENT_COLUMNS] for r in status.rows]},
        "parameters": param_names,
        "results": {"columns": columns, "units": units, "labels": labels, "properties": merged.names, "rows": rows},
        "analysis": run_analysis(fields.get("analysis"), manifest.plan_dir, records),
        "build_seconds": round(time.perf_counter() - t0, 3),
    }


def sweep_parameters(specs: list[dict[str, Any]]) -> tuple[dict[int, dict[str, Any]], list[str]]:
    """Per element index, the sweep values that made it (`params` in elements.json), and the
    names of those that vary across the plan, in the sweep's order."""
    seen: dict[int, dict[str, Any]] = {}
    names: dict[str, set[str]] = {}
    for i, spec in enumerate(specs):
        params = spec.get("params") if isinstance(spec.get("params"), dict) else {}
        seen[int(spec.get("index", i))] = params
        for k, v in params.items():
            names.setdefault(str(k), set()).add(repr(v))
    varying = [k for k, vs in names.items() if len(vs) > 1]
    return {i: {k: _finite(v[k]) for k in varying if k in v} for i, v in seen.items()}, varying


def material_owners(specs: list[dict[str, Any]]) -> dict[str, int]:
    """Material id -> index of the element that creates it (an element without materials records
    its results against a placeholder material named after its workflow id)."""
    owner: dict[str, int] = {}
    for i, spec in enumerate(specs):
        index = int(spec.get("index", i))
        materials = [m.get("material_id") for m in spec.get("materials") or [] if isinstance(m, dict)]
        for mid in materials or [spec.get("workflow_id")]:
            if isinstance(mid, str):
                owner.setdefault(mid, index)
    return owner


def run_analysis(spec: str | None, plan_dir: str, records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The plan's `analysis` callable over the merged results; its failure is shown, not raised
    (a report of a half-failed plan must still be written)."""
    if not spec:
        return None
    if not records:
        return {"function": spec, "error": "no merged results yet"}
    try:
        out = load_callable(spec, [plan_dir] if plan_dir else [])(records)
    except Exception as exc:  # noqa: BLE001 - the user's code: any failure is reported in the page
        return {"function": spec, "error": f"{type(exc).__name__}: {exc}"}
    if not isinstance(out, dict):
        return {"function": spec, "error": f"returned {type(out).__name__}, not a dict"}
    summary = {str(k): _finite(v) for k, v in (out.get("summary") or {}).items()}
    plots = [p for p in out.get("plots") or [] if isinstance(p, dict)]
    return {"function": spec, "summary": summary, "units": dict(out.get("units") or {}), "plots": plots}


def analysis_lines(analysis: dict[str, Any] | None) -> list[str]:
    """The analysis summary as the terminal prints it: `a0 = 4.0396 Å`."""
    if not analysis:
        return []
    if analysis.get("error"):
        return [f"analysis {analysis['function']}: {analysis['error']}"]
    units = analysis.get("units", {})
    return [f"{k} = {v:.6g} {units.get(k, '')}".rstrip() if isinstance(v, float) else f"{k} = {v}"
            for k, v in analysis["summary"].items()]


def _finite(v: Any) -> Any:
    """NaN and infinities become null: the page parses the data as strict JSON."""
    return None if isinstance(v, float) and not math.isfinite(v) else v
