"""Element states: the elements' own state files reconciled with one scheduler query.

The state file is the truth for an element that finished (the scheduler forgets old jobs and
`sacct` lags `squeue` by seconds), the scheduler is the truth for an element that never got to
write one (still queued, or killed hard: out of memory, node failure, cancelled while pending).
So the scheduler is asked first and the state files are read after: an element that ended
before the answer came has already written its final state, and a scheduler-side FAILED /
TIMEOUT / CANCELLED only wins over a state file that still says PENDING or RUNNING.

One `backend.query` per submission, for all of its arrays (chunks and resubmissions) at once.
"""

from __future__ import annotations

import inspect
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..element import state as st

ACTIVE = frozenset({st.PENDING, st.RUNNING})
BAD_FINAL = frozenset({st.FAILED, st.TIMEOUT, st.CANCELLED})
SETTLED = frozenset(st.FINAL_RUN_STATES) | frozenset(st.EPILOGUE_STATES)
SUCCESS = frozenset({st.COMPLETED, st.MERGED, st.ARCHIVED, st.KEPT})
# job-id tag for the single query: job k of the submission comes back as k * _STRIDE + task id
_STRIDE = 1 << 32


def array_jobs(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The record's element arrays (first submission chunks, then resubmissions), not the backstop."""
    return [j for j in record.get("jobs", []) if j.get("kind", "array") != "backstop"]


def current_job(jobs: Sequence[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Element index -> the latest array that covers it (a resubmission supersedes the first run)."""
    out: dict[int, dict[str, Any]] = {}
    for job in jobs:
        for i in job.get("indices", []):
            out[i] = job
    return out


def query_per_job(backend: Any, jobs: Sequence[dict[str, Any]]) -> dict[str, dict[int, str]]:
    """One `backend.query` for every array -> job id -> {element index: normalized state}.

    A resubmitted element is in two arrays (the failed first run, the new one) and the scheduler
    knows both; a plain `query` folds them into one index and could report the old FAILED for an
    element queued again. When the backend takes `offsets` (index = task id + offsets[job]), each
    job's tasks are tagged with its position so the one answer is split back per job; the
    record's own offsets then map task ids to element indices.
    """
    ids = [str(j["job_id"]) for j in jobs]
    if not ids:
        return {}
    try:
        takes_offsets = "offsets" in inspect.signature(backend.query).parameters
    except (TypeError, ValueError):
        takes_offsets = False
    out: dict[str, dict[int, str]] = {jid: {} for jid in ids}
    if takes_offsets:
        tags: dict[str, int] = {}
        for k, jid in enumerate(ids):
            tags[jid] = k * _STRIDE
            seq = re.match(r"\d+", jid)  # PBS keys offsets by the sequence number of `123[].server`
            if seq:
                tags.setdefault(seq.group(0), k * _STRIDE)
        raw = backend.query(ids, offsets=tags)
        covered = [set(j.get("indices", [])) for j in jobs]
        for key, state in raw.items():
            k, task = divmod(int(key), _STRIDE)
            index = task + int(jobs[k].get("offset", 0)) if 0 <= k < len(jobs) else -1
            if index in covered[k]:
                out[ids[k]][index] = state
        return out
    raw = backend.query(ids)  # already element indices; attribute them to the arrays that cover them
    for job in jobs:
        mine = out[str(job["job_id"])]
        for i in job.get("indices", []):
            if i in raw:
                mine[i] = raw[i]
    return out


def reconcile_one(file_state: dict[str, Any], sched: str | None) -> tuple[str, str]:
    """(shown state, note) from an element's state file and its current job's scheduler state."""
    state = file_state.get("state", st.PENDING)
    if state not in ACTIVE or sched is None:
        return state, ""  # finished (the file is the truth), or the scheduler has nothing to add
    if sched in BAD_FINAL:
        how = "cancelled" if sched == st.CANCELLED else "ended"
        return sched, f"{how} by the scheduler ({sched}) before the element recorded a result"
    if sched == st.COMPLETED:
        return st.FAILED, "job ended without the element recording a result"
    if sched == st.RUNNING and state == st.PENDING:
        return st.RUNNING, ""  # started; the runner has not written its first state yet
    return state, ""


@dataclass
class Report:
    """The reconciled states of one submission."""

    plan: str
    backend: str
    rows: list[dict[str, Any]]
    jobs: list[dict[str, Any]]
    scheduler_queries: int = 0
    scheduler_error: str | None = None
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return len(self.rows)

    def settled(self) -> int:
        return sum(1 for r in self.rows if r["settled"])

    def all_settled(self) -> bool:
        return all(r["settled"] for r in self.rows)

    def succeeded(self) -> bool:
        return all(r["state"] in SUCCESS and r.get("run_state", r["state"]) in SUCCESS for r in self.rows)

    def summary_line(self) -> str:
        order = [*st.RUN_STATES, *st.EPILOGUE_STATES]
        parts = [f"{self.counts[s]} {s}" for s in order if self.counts.get(s)]
        parts += [f"{n} {s}" for s, n in sorted(self.counts.items()) if s not in order]
        ids = " ".join(str(j["job_id"]) for j in self.jobs) or "none"
        note = f"; scheduler not asked: {self.scheduler_error}" if self.scheduler_error else ""
        conflicts = sum(r.get("conflicts", 0) for r in self.rows)
        if conflicts:
            note += f"; {conflicts} merge conflict(s): those materials kept the shared database's version"
        return f"{self.plan}: {self.total} elements: {', '.join(parts)} (backend {self.backend}, jobs {ids}){note}"

    def to_json(self) -> dict[str, Any]:
        return {
            "plan": self.plan,
            "backend": self.backend,
            "summary": self.counts,
            "total": self.total,
            "settled": self.settled(),
            "succeeded": self.succeeded(),
            "jobs": self.jobs,
            "scheduler_queries": self.scheduler_queries,
            "scheduler_error": self.scheduler_error,
            "elements": self.rows,
        }


def _message(state: str, note: str, file_state: dict[str, Any]) -> str:
    """Why an element is where it is: the reconciliation note, else why its merge is pending or
    it was quarantined (and where it went), else the runner's own message."""
    if note:
        return note
    if state in (st.PENDING_MERGE, "QUARANTINED") and file_state.get("pending_reason"):
        return str(file_state["pending_reason"])
    return str(file_state.get("message", "") or "")


def _conflicts(file_state: dict[str, Any]) -> int:
    merge = (file_state.get("epilogue") or {}).get("merge") or {}
    return int(merge.get("conflicts", 0) or 0) if isinstance(merge, dict) else 0


def collect(
    record: dict[str, Any], manifest: dict[str, Any], backend: Any | None, *, query: bool = True
) -> Report:
    """Ask the scheduler once (all arrays), then read every state file, then reconcile."""
    jobs = array_jobs(record)
    per_job: dict[str, dict[int, str]] = {}
    error = None
    asked = 0
    if query and backend is not None and jobs:
        from ..errors import SchedulerError

        try:
            asked = 1
            per_job = query_per_job(backend, jobs)
        except SchedulerError as exc:
            error = str(exc)
    current = current_job(jobs)
    rows = []
    for entry in manifest["elements"]:
        index = entry["index"]
        file_state = st.read_state(entry["context_dir"])
        job = current.get(index)
        job_id = str(job["job_id"]) if job else None
        sched = per_job.get(job_id, {}).get(index) if job_id else None
        state, note = reconcile_one(file_state, sched)
        run_state = file_state.get("run_state", file_state.get("state", st.PENDING))
        if state != file_state.get("state") or state in ACTIVE:
            run_state = state  # reconciled, or queued again (requeue, resubmit): the last run is history
        rows.append(
            {
                "index": index,
                "workflow_id": entry["workflow_id"],
                "state": state,
                "run_state": run_state,
                "file_state": file_state.get("state", st.PENDING),
                "scheduler_state": sched,
                "attempts": int(file_state.get("attempts", 0) or 0),
                "job_id": job_id,
                "message": _message(state, note, file_state),
                "conflicts": _conflicts(file_state),
                "context_dir": entry["context_dir"],
                "settled": state in SETTLED and (sched is None or sched not in ACTIVE),
            }
        )
    report = Report(
        plan=record.get("plan", manifest.get("plan", "?")),
        backend=record.get("backend", "?"),
        rows=rows,
        jobs=jobs,
        scheduler_queries=asked,
        scheduler_error=error,
    )
    report.counts = dict(Counter(r["state"] for r in rows))
    return report


def state_counts_from_files(manifest: dict[str, Any]) -> dict[str, int]:
    """States from the files alone (no scheduler): the cheap listing of `mace status`."""
    return dict(Counter(st.read_state(e["context_dir"]).get("state", st.PENDING) for e in manifest["elements"]))


def context_exists(entry: dict[str, Any]) -> bool:
    return Path(entry["context_dir"]).is_dir()
