"""Failures classified and retried with more resources, from the backstop job: no daemon.

The backstop job that runs after an attempt's arrays (`afterany`) calls `retry_pass` after its
merge. It asks the scheduler once for the submission's states and once (`sacct`, one call for all
arrays) for what each element used, classifies every element that ended badly
(`status/classify.py`), decides per element with the plan's `retry` policy, and queues the
retries as sparse arrays grouped by their new resources, each with its own backstop (the resubmit
machinery of `control.py`), which in turn runs this pass after them. Every decision (element,
attempt, cause, old -> new resources, job) goes into the submission record, so `mace status`
says why each element was retried or given up and a second backstop never decides twice.

Escalation: TIMEOUT multiplies `time` by `time_factor`, OUT_OF_MEMORY `mem` by `mem_factor`;
both are capped at the partition's MaxTime / MaxMemPerNode / MaxMemPerCPU (`scontrol show
partition`; PBS queue resources_max). When the cap stops the growth and `next_partition` is set,
the retry moves there (capped at its limits); when nothing can grow any more, the element is given
up with that reason rather than rerun identically. NODE_FAIL, PREEMPTED and retryable named
errors rerun with the same resources. Never retried: CANCELLED, non-retryable named errors,
causes the policy does not list, and anything past `max_attempts`.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..config import Config, load_config
from ..errors import SchedulerError
from ..plan.load import submitted_plan_fields
from ..plan.policy import FailurePolicy, RetryPolicy, failure_policy
from ..records import causes as c
from ..records.causes import Cause, Limits, Usage
from ..records.element_state import read_state
from ..records.layout import SubmissionPaths
from ..records.submission import (
    GIVE_UP,
    RETRY,
    JobEntry,
    RetryDecision,
    SubmissionRecord,
    read_record,
    write_record,
)
from ..schedulers import get_backend
from ..schedulers.base import element_usage, get_accounting
from ..status.classify import classify
from ..status.efficiency import mem_bytes
from ..status.reconcile import ACTIVE, BAD_FINAL, Report, collect
from ..util.nfslock import NfsLock
from .control import find_submission, resubmit
from .notify import EXHAUSTED, Milestones, milestones_after, send_milestones

_MB = 1 << 20


@dataclass
class RetryPass:
    """What one pass decided (and, unless a dry run, did)."""

    plan: str
    decisions: list[RetryDecision] = field(default_factory=list)
    job_ids: list[str] = field(default_factory=list)
    notified: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    scheduler_calls: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"plan": self.plan, "decisions": [d.to_dict() for d in self.decisions], "job_ids": self.job_ids,
                "notified": self.notified, "warnings": self.warnings}


def mem_mb(value: Any) -> int | None:
    """A scheduler.mem value in MiB, rounded up (None when absent or unreadable)."""
    size = mem_bytes(value)
    return None if size is None else math.ceil(size / _MB)


# ------------------------------------------------------------------ the decision
def escalate(cause: Cause, old: dict[str, Any], policy: RetryPolicy, usage: Usage | None,
             limits: Callable[[str | None], Limits]) -> tuple[dict[str, Any], str]:
    """The resources of the next attempt, and why nothing could grow ('' when it did or need not)."""
    new: dict[str, Any] = {k: old.get(k) for k in ("time", "mem", "partition") if old.get(k) is not None}
    partition = old.get("partition")
    cpus = int(old.get("cpus") or 1)
    if cause.kind == c.TIMEOUT:
        before = int(old.get("time") or 60)
        want = math.ceil(before * policy.time_factor)
        cap = limits(partition).max_time_min
        if cap is not None and want > cap and policy.next_partition and policy.next_partition != partition:
            partition, cap = policy.next_partition, limits(policy.next_partition).max_time_min
            new["partition"] = partition
        got = min(want, cap) if cap is not None else want
        new["time"] = got
        if got <= before and new.get("partition") == old.get("partition"):
            return new, f"time already at the partition's MaxTime ({cap} min)"
    elif cause.kind == c.OUT_OF_MEMORY:
        before = mem_mb(old.get("mem")) or (usage.req_mem_bytes // _MB if usage and usage.req_mem_bytes else None)
        if before is None:
            return new, "no memory request to grow (set resources.mem)"
        want = math.ceil(before * policy.mem_factor)
        cap = limits(partition).max_mem_mb(cpus)
        if cap is not None and want > cap and policy.next_partition and policy.next_partition != partition:
            partition, cap = policy.next_partition, limits(policy.next_partition).max_mem_mb(cpus)
            new["partition"] = partition
        got = min(want, cap) if cap is not None else want
        new["mem"] = f"{got}M"
        if got <= before and new.get("partition") == old.get("partition"):
            return new, f"mem already at the partition's limit ({cap} MB)"
    return new, ""


def is_retried(cause: Cause, policy: RetryPolicy) -> tuple[bool, str]:
    """May this cause be retried at all (attempts aside)? And if not, why."""
    if cause.kind == c.CANCELLED:
        return False, "cancelled: never retried"
    if cause.kind == c.COMPLETED:
        return False, "completed"
    if cause.kind == c.APP_ERROR:
        if cause.retryable is False:
            return False, f"named error {cause.name} is not retryable"
        return True, ""
    if cause.kind in policy.causes or str(cause) in policy.causes:
        return True, ""
    return False, f"{cause.kind} is not in retry.causes"


def decide(index: int, attempt: int, cause: Cause, old: dict[str, Any], policy: RetryPolicy,
           usage: Usage | None, limits: Callable[[str | None], Limits]) -> RetryDecision:
    """One element's decision after its attempt `attempt` ended with `cause`."""
    base = RetryDecision(index=index, attempt=attempt, cause=str(cause), action=GIVE_UP, at=time.time(),
                         old={k: old.get(k) for k in ("time", "mem", "partition") if old.get(k) is not None})
    ok, why = is_retried(cause, policy)
    if not ok:
        return replace(base, reason=why)
    if not policy.enabled:
        return replace(base, reason="the plan has no retry policy (add `retry` to it)")
    if attempt >= policy.max_attempts:
        return replace(base, reason=f"{EXHAUSTED} ({attempt} of {policy.max_attempts} attempts)")
    new, stuck = escalate(cause, old, policy, usage, limits)
    if stuck:
        return replace(base, reason=stuck, new=new)
    return replace(base, action=RETRY, new=new, reason=cause.detail[:200])


# ------------------------------------------------------------------ the pass
def _limits_cache(accounting: Any) -> Callable[[str | None], Limits]:
    seen: dict[str | None, Limits] = {}

    def get(partition: str | None) -> Limits:
        if partition not in seen:
            try:
                seen[partition] = accounting.limits(partition)
            except SchedulerError:
                seen[partition] = Limits(name=partition)  # unknown limits: the scheduler refuses too much itself
        return seen[partition]

    return get


def ended_candidates(report: Report, record: SubmissionRecord, only_jobs: Sequence[str] | None,
                     undecided: bool = True) -> list[dict[str, Any]]:
    """Rows that ended badly, are not queued again, ran in one of `only_jobs` (a backstop's own
    arrays), and (`undecided`) whose latest attempt has no decision yet."""
    decided = {(int(d["index"]), int(d.get("attempt") or 1)) for d in record.retries} if undecided else set()
    attempts = attempt_counts(record)
    only = set(only_jobs) if only_jobs else None
    out = []
    for r in report.rows:
        if r["run_state"] not in BAD_FINAL or r["state"] in ACTIVE or r["scheduler_state"] in ACTIVE:
            continue
        if only is not None and r["job_id"] not in only:
            continue
        if (r["index"], attempts.get(r["index"], 1)) in decided:
            continue
        out.append(r)
    return out


def attempt_counts(record: SubmissionRecord) -> dict[int, int]:
    """Element index -> how many times it was submitted: the distinct attempts of the arrays that
    cover it (a multi-stage plan submits one array per stage in each attempt)."""
    seen: dict[int, set[int]] = {}
    for job in record.array_jobs():
        for i in job.indices:
            seen.setdefault(i, set()).add(job.attempt)
    return {i: len(attempts) for i, attempts in seen.items()}


def classify_rows(rows: list[dict[str, Any]], record: SubmissionRecord, policy: FailurePolicy,
                  accounting: Any) -> tuple[dict[int, Cause], dict[int, Usage]]:
    """Cause and usage per candidate row, with ONE accounting call for their arrays."""
    wanted = {r["job_id"] for r in rows if r["job_id"]}
    jobs = sorted((j for j in record.array_jobs() if j.job_id in wanted), key=lambda j: j.job_id)
    usage: dict[str, dict[int, Usage]] = {}
    if jobs:
        try:
            usage = element_usage(accounting, jobs)
        except SchedulerError:
            usage = {}  # accounting down: the state files alone still classify most causes
        usage = _settled_usage(usage, rows, jobs, accounting)
    causes: dict[int, Cause] = {}
    used: dict[int, Usage] = {}
    for r in rows:
        u = usage.get(r["job_id"] or "", {}).get(r["index"])
        if u is not None:
            used[r["index"]] = u
        causes[r["index"]] = classify(u, read_state(r["context_dir"]), policy.app_errors, r["context_dir"])
    return causes, used


SETTLE_TRIES, SETTLE_WAIT_S = 5, 2.0


def _settled_usage(usage: dict[str, dict[int, Usage]], rows: list[dict[str, Any]], jobs: list[JobEntry],
                   accounting: Any) -> dict[str, dict[int, Usage]]:
    """sacct lags the controller by seconds after jobs end: ask again (a few times, one call each)
    while an ended element has no record yet or its record is not final."""
    for _ in range(SETTLE_TRIES if getattr(accounting, "name", "") == "slurm" else 0):
        missing = [r for r in rows if (u := usage.get(r["job_id"] or "", {}).get(r["index"])) is None
                   or u.state in ("", "PENDING", "RUNNING", "COMPLETING", "REQUEUED")]
        if not missing:
            break
        time.sleep(SETTLE_WAIT_S)
        try:
            usage = element_usage(accounting, jobs)
        except SchedulerError:
            break
    return usage


def retry_pass(name_or_job: str, cfg: Config | None = None, *, dry_run: bool = False,
               only_jobs: Sequence[str] | None = None, accounting: Any = None) -> RetryPass:
    """Classify, decide, and (unless `dry_run`) queue the retries and record every decision."""
    cfg = cfg or load_config()
    directory, record, manifest = find_submission(name_or_job, cfg)
    paths = SubmissionPaths(Path(directory))
    policy = failure_policy(submitted_plan_fields(paths.plan))
    result = RetryPass(record.plan)
    if not dry_run and not policy.retry.enabled and policy.notify is None:
        return result  # nothing to decide or tell: no scheduler call at all
    lock = None if dry_run else NfsLock(Path(directory).parent / f".{record.plan}.retry.lock", lifetime=600,
                                        timeout=300).acquire()
    try:
        record = read_record(paths.record) or record  # another backstop may have decided meanwhile
        be = get_backend(record.backend)
        accounting = accounting or get_accounting(record.backend, record.scheduler)
        report = collect(record, manifest, be)
        rows = ended_candidates(report, record, only_jobs, undecided=not dry_run)
        causes, usage = classify_rows(rows, record, policy, accounting)
        limits = _limits_cache(accounting)
        attempts = attempt_counts(record)
        current = record.current_jobs()
        staged = record.stage_jobs()
        stage_resources = {st_.name: st_.resources for st_ in manifest.stages}
        for r in rows:
            i = r["index"]
            stage = r.get("stage")  # multi-stage: the stage that failed (its resources grow)
            job = staged.get((i, stage)) if stage else current.get(i)
            old = {**record.scheduler, **stage_resources.get(stage or "", {}), **(job.resources if job else {})}
            result.decisions.append(decide(i, attempts.get(i, 1), causes[i], old, policy.retry, usage.get(i), limits))
        if dry_run:
            return result
        if not policy.retry.enabled:
            result.decisions = []  # only the milestones below: decisions nobody asked for are noise
        result.decisions = _submit_groups(record.plan, result, cfg)
        record = read_record(paths.record) or record
        record = record.replace(retries=(*record.retries, *(d.to_dict() for d in result.decisions)))
        due: Milestones = milestones_after(record, collect(record, manifest, None, query=False), result.decisions,
                                           policy.notify)
        record = record.replace(notified={**record.notified, **{m: time.time() for m in due.names}})
        write_record(directory, record)  # recorded before sending: each milestone goes out at most once
        result.notified = send_milestones(due, policy.notify, record.plan, Path(directory) / "logs")
        return result
    finally:
        if lock is not None:
            lock.release()


def _submit_groups(plan: str, result: RetryPass, cfg: Config) -> list[RetryDecision]:
    """One sparse array per distinct new resource set (resubmit: with its own backstop)."""
    groups: dict[tuple[tuple[str, str], ...], list[RetryDecision]] = {}
    for d in result.decisions:
        if d.action == RETRY:
            groups.setdefault(tuple(sorted((k, str(v)) for k, v in d.new.items())), []).append(d)
    done: dict[int, RetryDecision] = {}
    for _, decisions in sorted(groups.items()):
        indices = sorted(d.index for d in decisions)
        resources = dict(decisions[0].new)
        try:
            out = resubmit(plan, elements=indices, cfg=cfg, resources=resources)
        except Exception as exc:  # noqa: BLE001 - one group's refusal must not lose the others' decisions
            result.warnings.append(f"retry of elements {indices} not queued: {exc}")
            for d in decisions:
                done[d.index] = replace(d, action=GIVE_UP, reason=f"retry not queued: {exc}"[:300])
            continue
        result.job_ids += out.job_ids
        result.warnings += out.warnings
        for d in decisions:
            done[d.index] = replace(d, job_id=",".join(out.job_ids))
    return [done.get(d.index, d) for d in result.decisions]


def backstop_retry(plan: str, cfg: Config | None = None) -> RetryPass | None:
    """What the backstop job runs after its merge: a pass over the arrays this backstop waited for
    (its own job id names them in the record), or over every array when it cannot tell."""
    cfg = cfg or load_config()
    _, record, _ = find_submission(plan, cfg)
    own = os.environ.get("SLURM_JOB_ID") or os.environ.get("PBS_JOBID") or ""
    mine = next((j for j in record.jobs if own and j.kind == "backstop" and j.matches(own)), None)
    return retry_pass(plan, cfg, only_jobs=list(mine.depends_on) if mine else None)


def local_retries(plan: str, cfg: Config | None = None) -> list[RetryPass]:
    """The local backend has no backstop job: its elements have all ended when `submit` returns, so
    the passes run here, one after another, until the policy retries nothing more."""
    passes: list[RetryPass] = []
    while True:
        result = retry_pass(plan, cfg)
        passes.append(result)
        if not any(d.action == RETRY and d.job_id for d in result.decisions):
            return passes
