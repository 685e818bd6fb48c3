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

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import SchedulerError
from ..records import states as st
from ..records.element_state import ElementState, read_state
from ..records.manifest import Manifest
from ..records.stages import Stage, current_stage, deciding_stage, stage_state
from ..records.states import ACTIVE, BAD_FINAL, SETTLED, SUCCESS, State
from ..records.submission import JobEntry, SubmissionRecord
from ..schedulers import Backend

__all__ = ["ACTIVE", "BAD_FINAL", "SETTLED", "SUCCESS", "Report", "collect", "query_per_job", "reconcile_one"]

# what each row also carries from the state file, for `mace report`'s timeline and histograms
TIMING_FIELDS = ("host", "queued_at", "started_at", "finished_at", "peak_rss_bytes", "cpu_seconds")

# job-id tag for the single query: job k of the submission comes back as k * _STRIDE + task id
_STRIDE = 1 << 32


def query_per_job(backend: Backend, jobs: list[JobEntry]) -> dict[str, dict[int, State]]:
    """One `backend.query` for every array -> job id -> {element index: state}.

    A resubmitted element is in two arrays (the failed first run, the new one) and the scheduler
    knows both; folding them into one index could report the old FAILED for an element queued
    again. So each job's tasks are tagged with its position through `offsets` and the one answer
    is split back per job; the record's own offsets then map task ids to element indices.
    """
    ids = [j.job_id for j in jobs]
    if not ids:
        return {}
    out: dict[str, dict[int, State]] = {jid: {} for jid in ids}
    tags: dict[str, int] = {}
    for k, jid in enumerate(ids):
        tags[jid] = k * _STRIDE
        seq = re.match(r"\d+", jid)  # PBS keys offsets by the sequence number of `123[].server`
        if seq:
            tags.setdefault(seq.group(0), k * _STRIDE)
    raw = backend.query(ids, offsets=tags)
    covered = [set(j.indices) for j in jobs]
    for key, state in raw.items():
        k, task = divmod(int(key), _STRIDE)
        for index in jobs[k].elements_of(task) if 0 <= k < len(jobs) else ():
            if index in covered[k]:  # a packed task: the state of each element it runs
                out[ids[k]][index] = state
    return out


def reconcile_one(file_state: ElementState, sched: str | None) -> tuple[str, str]:
    """(shown state, note) from an element's state file and its current job's scheduler state."""
    state = file_state.state
    if file_state.runner_dead_here():
        return st.FAILED, f"the element runner (pid {file_state.pid}) died without recording its end"
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
    jobs: list[JobEntry]
    scheduler_queries: int = 0
    scheduler_error: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    stage_counts: dict[str, dict[str, int]] = field(default_factory=dict)  # stage -> state -> elements

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
        order = list(st.ORDER)
        parts = [f"{self.counts[s]} {s}" for s in order if self.counts.get(s)]
        parts += [f"{n} {s}" for s, n in sorted(self.counts.items()) if s not in order]
        ids = " ".join(j.job_id for j in self.jobs) or "none"
        note = f"; scheduler not asked: {self.scheduler_error}" if self.scheduler_error else ""
        conflicts = sum(r.get("conflicts", 0) for r in self.rows)
        if conflicts:
            note += f"; {conflicts} merge conflict(s): those materials kept the shared database's version"
        return f"{self.plan}: {self.total} elements: {', '.join(parts)} (backend {self.backend}, jobs {ids}){note}"

    def stage_lines(self) -> list[str]:
        """One line per stage of a multi-stage plan: how many elements are where in it."""
        return [f"  stage {name}: " + ", ".join(f"{counts[s]} {s}" for s in st.ORDER if counts.get(s))
                for name, counts in self.stage_counts.items()]

    def to_json(self) -> dict[str, Any]:
        return {
            "plan": self.plan,
            "backend": self.backend,
            "summary": self.counts,
            "total": self.total,
            "settled": self.settled(),
            "succeeded": self.succeeded(),
            "jobs": [j.to_dict() for j in self.jobs],
            "scheduler_queries": self.scheduler_queries,
            "scheduler_error": self.scheduler_error,
            **({"stages": self.stage_counts} if self.stage_counts else {}),
            "elements": self.rows,
        }


def _message(state: str, note: str, file_state: ElementState) -> str:
    """Why an element is where it is: the reconciliation note, else why its merge is pending or
    it was quarantined (and where it went), else the runner's own message."""
    if note:
        return note
    if state in (st.PENDING_MERGE, st.QUARANTINED) and file_state.pending_reason:
        return str(file_state.pending_reason)
    return str(file_state.message or "")


def _conflicts(file_state: ElementState) -> int:
    merge = file_state.epilogue.get("merge") or {}
    return int(merge.get("conflicts", 0) or 0) if isinstance(merge, dict) else 0


def collect(record: SubmissionRecord, manifest: Manifest, backend: Backend | None, *, query: bool = True) -> Report:
    """Ask the scheduler once (all arrays), then read every state file, then reconcile."""
    jobs = record.array_jobs()
    per_job: dict[str, dict[int, State]] = {}
    error = None
    asked = 0
    if query and backend is not None and jobs:
        try:
            asked = 1
            per_job = query_per_job(backend, jobs)
        except SchedulerError as exc:
            error = str(exc)
    current = record.current_jobs()
    staged = record.stage_jobs() if manifest.stages else {}
    notes = record.retry_notes()
    rows = []
    for entry in manifest.elements:
        index = entry.index
        file_state = read_state(entry.context_dir)
        stage = None
        if manifest.stages:  # the element's current stage decides which array's state counts
            stage = (file_state.stage or current_stage(manifest.stages, file_state.stages)
                     or deciding_stage(manifest.stages, file_state.stages))
            job = staged.get((index, stage)) if stage else None
        else:
            job = current.get(index)
        job_id = job.job_id if job else None
        sched = per_job.get(job_id, {}).get(index) if job_id else None
        state, note = reconcile_one(file_state, sched)
        run_state = file_state.last_run
        if state != file_state.state or state in ACTIVE:
            run_state = state  # reconciled, or queued again (requeue, resubmit): the last run is history
        rows.append(
            {
                "index": index,
                "workflow_id": entry.workflow_id,
                "state": state,
                "run_state": run_state,
                "file_state": file_state.state,
                "scheduler_state": sched,
                "attempts": file_state.attempts,
                "job_id": job_id,
                "message": _message(state, note, file_state),
                "conflicts": _conflicts(file_state),
                "retries": notes.get(index, []),
                "context_dir": entry.context_dir,
                "settled": state in SETTLED and (sched is None or sched not in ACTIVE),
                **{k: getattr(file_state, k) for k in TIMING_FIELDS},
                **({"stage": stage, "stages": stage_states(manifest.stages, file_state.stages)}
                   if manifest.stages else {}),
            }
        )
    report = Report(
        plan=record.plan or manifest.plan,
        backend=record.backend,
        rows=rows,
        jobs=jobs,
        scheduler_queries=asked,
        scheduler_error=error,
    )
    report.counts = dict(Counter(r["state"] for r in rows))
    if manifest.stages:
        report.stage_counts = {s.name: dict(Counter(r["stages"][s.name] for r in rows)) for s in manifest.stages}
    return report


def stage_states(stages: Sequence[Stage], done: Mapping[str, Any]) -> dict[str, str]:
    """Stage name -> its state for one element, in plan order (PENDING until it ran)."""
    return {s.name: str(stage_state(done, s.name)) for s in stages}


def state_counts_from_files(manifest: Manifest) -> dict[str, int]:
    """States from the files alone (no scheduler): the cheap listing of `mace status`."""
    return dict(Counter(read_state(e.context_dir).state for e in manifest.elements))
