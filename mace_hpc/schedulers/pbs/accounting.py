"""What PBS accounted for each element (`qstat -x -f -F json`, one call per array) and a queue's
limits (`qstat -Q -f -F json`: resources_max.walltime / resources_max.mem).

PBS speaks exit statuses, not states: 0 done; 256 + N killed by signal N (271: qdel's SIGTERM);
negative JOB_EXEC_* codes from the mom: -29 walltime (KILL_WALLTIME), -27 memory (KILL_MEM), -26
virtual memory (KILL_VMEM), -20 the mother superior went away (RERUN_MS_FAIL). `pbs_state` maps
them onto SLURM's words so one classifier reads both schedulers.
"""

from __future__ import annotations

import json
import subprocess
import typing as tp
from collections.abc import Callable, Mapping

from ...errors import InputError, SchedulerError
from ...records.causes import Limits, Usage
from ..base import first_message, run_scheduler_command
from ..slurm.accounting import size_bytes
from .dialect import PBSPRO_WALLTIME_EXIT, TORQUE_WALLTIME_EXIT, parse_job_id
from .qstat import _seconds, _subjob_index, _variables, parse_qstat, qstat_argv

KILL_MEM, KILL_VMEM, RERUN_MS_FAIL = -27, -26, -20
SIGNAL_BASE = 256
Runner = Callable[[list[str]], subprocess.CompletedProcess[str]]


def pbs_state(attrs: Mapping[str, tp.Any], flavor: str = "pbspro") -> tuple[str, int | None, int | None]:
    """(SLURM-style state word, exit code, signal) of one finished subjob record."""
    raw = attrs.get("Exit_status", attrs.get("exit_status"))
    state = str(attrs.get("job_state", "")).strip().upper()[:1]
    if state not in ("F", "X", "C"):
        return ("RUNNING" if state in ("R", "E", "B", "S", "U") else "PENDING"), None, None
    try:
        code = int(str(raw).strip())
    except (TypeError, ValueError):
        return "CANCELLED", None, None
    if flavor == "pbspro" and not attrs.get("exec_host"):
        return "CANCELLED", code, None
    if code == 0:
        return "COMPLETED", 0, 0
    if code == (PBSPRO_WALLTIME_EXIT if flavor == "pbspro" else TORQUE_WALLTIME_EXIT):
        return "TIMEOUT", code, None
    if code in (KILL_MEM, KILL_VMEM):
        return "OUT_OF_MEMORY", code, None
    if code == RERUN_MS_FAIL:
        return "NODE_FAIL", code, None
    if code > SIGNAL_BASE:
        sig = code - SIGNAL_BASE
        return ("CANCELLED" if sig == 15 else "FAILED"), None, sig
    return "FAILED", code, 0


def usage_from_records(records: Mapping[str, Mapping[str, tp.Any]], flavor: str = "pbspro",
                       offsets: Mapping[str, int] | None = None) -> dict[str, dict[int, Usage]]:
    """qstat subjob records -> {array sequence number: {element index: Usage}}."""
    out: dict[str, dict[int, Usage]] = {}
    for job_id, attrs in records.items():
        try:
            jid = parse_job_id(job_id)
        except InputError:
            continue
        task = _subjob_index(job_id, dict(attrs)) if jid.index is not None else None
        if task is None:
            continue
        offset = (offsets or {}).get(jid.seq)
        if offset is None:
            offset = int(_variables(dict(attrs)).get("MACE_INDEX_OFFSET", "0") or 0)
        used = attrs.get("resources_used") or {}
        asked = attrs.get("Resource_List") or {}
        state, code, sig = pbs_state(attrs, flavor)
        cpus = asked.get("ncpus") or used.get("ncpus")
        ncpus = int(cpus) if str(cpus or "").isdigit() else None
        walltime = _seconds(used.get("walltime"))
        limit = _seconds(asked.get("walltime"))
        out.setdefault(jid.seq, {})[task + offset] = Usage(
            index=task + offset, job_id=jid.seq, state=state, exit_code=code, signal=sig,
            elapsed_s=walltime, time_limit_s=limit, req_mem_bytes=pbs_size(asked.get("mem")),
            max_rss_bytes=pbs_size(used.get("mem")), total_cpu_s=_seconds(used.get("cput")), alloc_cpus=ncpus,
            partition=str(attrs.get("queue") or "") or None, node=str(attrs.get("exec_host") or "").split("/")[0] or None,
        )
    return out


def pbs_size(value: object) -> int | None:
    """PBS sizes `28456kb`, `2gb`, `100mb`, `512b` -> bytes."""
    if value in (None, ""):
        return None
    text = str(value).strip().lower().removesuffix("b").removesuffix("w")
    return size_bytes(text.upper()) if text else None


class PbsAccounting:
    """Element usage from qstat (one call per array) and queue limits from `qstat -Q -f`."""

    name = "pbs"

    def __init__(self, flavor: str = "pbspro", run: Runner | None = None, timeout: float = 60.0) -> None:
        self.flavor = flavor
        self._run = run or (lambda argv: run_scheduler_command(argv, timeout=timeout, what="a PBS login node"))
        self.calls = 0

    def usage(self, job_ids: list[str], offsets: Mapping[str, int] | None = None) -> dict[str, dict[int, Usage]]:
        records: dict[str, dict[str, tp.Any]] = {}
        for raw in dict.fromkeys(job_ids):
            self.calls += 1
            proc = self._run(qstat_argv(self.flavor, [str(parse_job_id(raw))]))
            if proc.returncode != 0 and not proc.stdout.strip():
                continue  # purged from the history: the state files say what happened
            records.update(parse_qstat(self.flavor, proc.stdout))
        by_seq = usage_from_records(records, self.flavor, offsets)
        return {j: by_seq.get(parse_job_id(j).seq, {}) for j in job_ids}

    def limits(self, queue: str | None) -> Limits:
        argv = ["qstat", "-Q", "-f", "-F", "json"] + ([queue] if queue else [])
        proc = self._run(argv)
        if proc.returncode != 0:
            raise SchedulerError(f"qstat -Q {queue or ''}: {first_message(proc.stderr, proc.stdout)}")
        return parse_queue_limits(proc.stdout, queue)


def parse_queue_limits(text: str, queue: str | None) -> Limits:
    """`qstat -Q -f -F json` -> the queue's resources_max (walltime, mem) as Limits."""
    try:
        queues = json.loads(text).get("Queue") or {}
    except ValueError:
        return Limits(name=queue)
    name = queue if queue in queues else next(iter(queues), queue)
    top = (queues.get(name) or {}).get("resources_max") or {}
    wall = _seconds(top.get("walltime"))
    mem = pbs_size(top.get("mem"))
    return Limits(name=name, max_time_min=None if wall is None else wall // 60,
                  max_mem_mb_per_node=None if mem is None else mem >> 20)
