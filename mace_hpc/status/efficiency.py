"""`mace report PLAN --efficiency`: what each element used against what it asked for.

Per element: elapsed vs requested time, MaxRSS vs requested memory, CPU efficiency (TotalCPU /
(Elapsed x AllocCPUS)), core-hours used and wasted (the idle share of a completed run; all of a
failed one, and of every earlier attempt of a retried element). Per plan: p50/p95 of elapsed,
MaxRSS and CPU efficiency over the completed elements, the recommended `time` and `mem` (p95 plus
a margin) that `mace-submit --rightsize` applies, and for an unpacked plan of short elements a
`pack` to put in the plan (docs/plan-format.md, "When to pack").

The scheduler's accounting is read once for all arrays (`sacct`: one call; PBS: one qstat per
array); a figure it lacks (MaxRSS of a job shorter than the sampling interval, every figure on
the local backend) comes from what the element runner recorded in its state file, and each row
says where its figures came from.

A packed array task is one record for its K elements (`Usage.shared_by`): its figures are the
task's, so an element's own come from its state file (source `runner (packed)`), with the task's
cpus shared by its lanes (records/pack.py) and its `mem` too; an earlier attempt's core-hours,
for which no state is left, are the task's split evenly. The recommended `mem` is the task's:
an element's p95 times the lanes that ran at once.
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import SchedulerError
from ..records.causes import Usage
from ..records.element_state import ElementState, read_state
from ..records.manifest import Manifest
from ..records.pack import lane_cpus
from ..records.pack import lanes as pack_lanes
from ..records.states import COMPLETED
from ..records.submission import SubmissionRecord
from ..schedulers.base import element_usage

MB = 1 << 20
_ABSENT = ElementState(state="")  # "not read": the scheduler's record had every figure
MARGIN = 0.25  # recommended = p95 * (1 + MARGIN)
# elements shorter than this (median) are worth packing: unpacked, each pays a runner start (~0.15 s
# of CPU: benchmarks/README.md) and a scheduler task; the recommended `pack` aims at tasks of PACK_TASK_S
PACK_BELOW_S = 30.0
PACK_TASK_S = 60.0
COLUMNS = ("index", "workflow_id", "job_id", "state", "source", "elapsed_s", "time_limit_s", "time_used",
           "max_rss_bytes", "req_mem_bytes", "mem_used", "alloc_cpus", "total_cpu_s", "cpu_efficiency",
           "core_hours", "core_hours_wasted", "attempts")


def read_usage(record: SubmissionRecord, accounting: Any) -> tuple[dict[str, dict[int, Usage]], str | None]:
    """{array job id: {element index: Usage}} for every array of the submission, in one accounting
    call (sacct), and the error when the scheduler could not say (then: {} and the state files)."""
    jobs = record.array_jobs()
    if accounting is None or not jobs:
        return {}, None
    try:
        return element_usage(accounting, jobs), None
    except SchedulerError as exc:
        return {}, str(exc)


def mem_bytes(value: Any) -> int | None:
    """A scheduler.mem value (`2G`, `500M`, `1024` = MB) in bytes."""
    if value in (None, ""):
        return None
    text = str(value).strip().upper().removesuffix("B")
    scale = {"K": 1 << 10, "M": MB, "G": 1 << 30, "T": 1 << 40}.get(text[-1:])
    try:
        return int(float(text[:-1] if scale else text) * (scale or MB))
    except ValueError:
        return None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 4) if a is not None and b else None


def element_rows(record: SubmissionRecord, manifest: Manifest,
                 usage: dict[str, dict[int, Usage]]) -> list[dict[str, Any]]:
    """One row per element (its latest attempt), earlier attempts' core-hours counted as wasted."""
    current = record.current_jobs()
    older: dict[int, float] = {}
    attempts: dict[int, int] = {}
    for job in record.array_jobs():
        for i in job.indices:
            attempts[i] = attempts.get(i, 0) + 1
            u = usage.get(job.job_id, {}).get(i)
            if u is not None and current.get(i) is not job and u.elapsed_s:
                older[i] = older.get(i, 0.0) + u.elapsed_s * (u.alloc_cpus or 1) / 3600 / max(1, u.shared_by)
    rows = []
    for entry in manifest.elements:
        i = entry.index
        job = current.get(i)
        u = usage.get(job.job_id, {}).get(i) if job else None
        packed = u if u is not None and u.shared_by > 1 else None
        if packed is not None:
            u = None  # the whole task's record: this element's own figures are the runner's
        # the state file only where the scheduler's record lacks a figure (10,000 reads otherwise)
        st = _ABSENT if u is not None and u.max_rss_bytes and u.total_cpu_s is not None and u.elapsed_s is not None \
            and u.state else read_state(entry.context_dir)
        sched = {**record.scheduler, **(job.resources if job else {})}
        own = st.finished_at - st.started_at if st.finished_at and st.started_at else None
        elapsed = u.elapsed_s if u and u.elapsed_s is not None else own
        limit = (u.time_limit_s if u else None) or (int(sched["time"]) * 60 if sched.get("time") else None)
        rss = u.max_rss_bytes if u and u.max_rss_bytes else st.peak_rss_bytes
        acct = u or packed
        req_mem = (acct.req_mem_bytes if acct else None) or mem_bytes(sched.get("mem"))
        cpus = (acct.alloc_cpus if acct else None) or int(sched.get("cpus") or 1)
        lanes = 1
        if packed is not None and job is not None:  # the task's cpus and mem, shared by its lanes
            lanes, cpus = pack_lanes(job.pack, cpus), lane_cpus(job.pack, cpus)
            req_mem = req_mem // lanes if req_mem else req_mem
        cpu = u.total_cpu_s if u and u.total_cpu_s is not None else st.cpu_seconds
        eff = _ratio(cpu, elapsed * cpus if elapsed else None)
        core_h = elapsed * cpus / 3600 if elapsed is not None else None
        done = (u.state == "COMPLETED") if st is _ABSENT else (
            st.last_run == COMPLETED and (u is None or u.state in ("COMPLETED", "")))
        wasted = None if core_h is None else (core_h * (1 - min(eff or 0.0, 1.0)) if done else core_h)
        source = "sacct" if u and u.elapsed_s is not None else "runner (packed)" if packed else "runner"
        if u and not u.max_rss_bytes and st.peak_rss_bytes:
            source += "+runner rss"
        rows.append({
            "index": i, "workflow_id": entry.workflow_id, "job_id": job.job_id if job else None,
            "state": u.state if u and u.state else st.last_run, "source": source, "elapsed_s": elapsed,
            "time_limit_s": limit, "time_used": _ratio(elapsed, limit), "max_rss_bytes": rss,
            "req_mem_bytes": req_mem, "mem_used": _ratio(rss, req_mem), "alloc_cpus": cpus, "total_cpu_s": cpu,
            "cpu_efficiency": eff, "core_hours": None if core_h is None else round(core_h, 6),
            "core_hours_wasted": None if wasted is None else round(wasted + older.get(i, 0.0), 6),
            "attempts": attempts.get(i, 0), "completed": done, "lanes": lanes,
        })
    return rows


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of the values; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def recommended_pack(p50_elapsed: float | None, elements: int, pack: int, max_parallel: int) -> int | None:
    """`pack: K` for an unpacked plan of short elements: tasks of about PACK_TASK_S, but never so
    few tasks that the throttle (`max_parallel`) could not keep them all busy; None otherwise."""
    if pack > 1 or p50_elapsed is None or p50_elapsed >= PACK_BELOW_S:
        return None
    k = min(math.ceil(PACK_TASK_S / max(p50_elapsed, 0.5)), elements // max(1, max_parallel))
    return k if k >= 2 else None


def summarize(rows: list[dict[str, Any]], margin: float = MARGIN, *, pack: int = 1,
              max_parallel: int = 1) -> dict[str, Any]:
    """p50/p95 over the completed elements, totals, and the recommended time (min), mem and pack."""
    ok = [r for r in rows if r["completed"]]
    stats: dict[str, Any] = {}
    for key in ("elapsed_s", "max_rss_bytes", "cpu_efficiency", "time_used", "mem_used"):
        values = [float(r[key]) for r in ok if r[key] is not None]
        stats[key] = {"p50": percentile(values, 50), "p95": percentile(values, 95), "n": len(values)}
    p95_t, p95_m = stats["elapsed_s"]["p95"], stats["max_rss_bytes"]["p95"]
    p95_m = p95_m * max([int(r.get("lanes") or 1) for r in ok] or [1]) if p95_m else p95_m  # the task's
    recommended = {
        "time": max(1, math.ceil(p95_t * (1 + margin) / 60)) if p95_t is not None else None,
        "mem": f"{max(1, math.ceil(p95_m * (1 + margin) / MB))}M" if p95_m else None,
        "margin": margin,
        "pack": recommended_pack(stats["elapsed_s"]["p50"], len(rows), pack, max_parallel),
    }
    used = sum(r["core_hours"] or 0.0 for r in rows)
    wasted = sum(r["core_hours_wasted"] or 0.0 for r in rows)
    return {"elements": len(rows), "completed": len(ok), "percentiles": stats, "recommended": recommended,
            "core_hours": round(used, 4), "core_hours_wasted": round(wasted, 4)}


def efficiency_report(record: SubmissionRecord, manifest: Manifest, accounting: Any) -> dict[str, Any]:
    """The whole report as JSON-able data (`--json` prints it)."""
    usage, error = read_usage(record, accounting)
    rows = element_rows(record, manifest, usage)
    return {"plan": record.plan, "backend": record.backend, "requested": {k: record.scheduler.get(k) for k in
                                                                          ("time", "mem", "cpus", "partition")},
            "scheduler_calls": getattr(accounting, "calls", 0), "scheduler_error": error,
            "summary": summarize(rows, pack=record.pack, max_parallel=record.max_parallel),
            "columns": list(COLUMNS), "elements": rows}
