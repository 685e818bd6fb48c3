"""What SLURM accounted for each element: ONE `sacct --parsable2` call for any number of arrays,
and a partition's limits from `scontrol show partition`.

sacct prints one row for the allocation (`123_4`) and one per step (`123_4.batch`,
`123_4.extern`, `123_4.0`); they are folded into their element so a report has no duplicate rows:
the allocation row gives State, ExitCode, Elapsed, Timelimit, ReqMem and AllocCPUS; the steps give
MaxRSS (the largest) and an OUT_OF_MEMORY state that the allocation row may not show. A job
shorter than JobAcctGatherFrequency has an empty MaxRSS (seen on 22.05 here): None, and the
report falls back to the runner's own figure.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Mapping
from typing import Any

from ...errors import SchedulerError
from ...records.causes import Limits, Usage
from ..base import first_message, run_scheduler_command

FIELDS = ("JobID", "JobName", "State", "ExitCode", "DerivedExitCode", "ElapsedRaw", "TimelimitRaw", "ReqMem",
          "MaxRSS", "TotalCPU", "AllocCPUS", "Partition", "NodeList")
OFFSET_SEP = "@"  # as backend.job_name: `<plan>@<offset>` for a chunk with an index offset
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
_SIZE = re.compile(r"^([0-9.]+)([KMGTP]?)([nc]?)$", re.IGNORECASE)
_DURATION = re.compile(r"^(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+(?:\.\d+)?)$")
Runner = Callable[[list[str]], subprocess.CompletedProcess[str]]


def sacct_argv(job_ids: list[str]) -> list[str]:
    """The one sacct call: every given array with all its tasks and steps, pipe-separated."""
    return ["sacct", "--noheader", "--parsable2", "-j", ",".join(job_ids), "-o", ",".join(FIELDS)]


def size_bytes(text: str, cpus: int | None = None) -> int | None:
    """`4000M`, `2G`, `123456K`, `100Mn`, `500Mc` (per CPU: times `cpus`) -> bytes; '' -> None."""
    m = _SIZE.fullmatch(text.strip())
    if not m:
        return None
    value = float(m.group(1)) * _UNITS[m.group(2).upper() or ("M" if m.group(3) else "")]
    if m.group(3).lower() == "c" and cpus:
        value *= cpus
    return int(value)


def duration_s(text: str) -> float | None:
    """sacct durations: `1-02:03:04`, `02:03:04`, `03:04.567` (TotalCPU), `00:00:00` -> seconds."""
    m = _DURATION.fullmatch(text.strip())
    if not m:
        return None
    days, hours, minutes, seconds = m.groups()
    if hours is None and days is None:  # MM:SS.mmm
        return int(minutes) * 60 + float(seconds)
    return ((int(days or 0) * 24 + int(hours or 0)) * 60 + int(minutes)) * 60 + float(seconds)


def _exit(text: str) -> tuple[int | None, int | None]:
    code, _, sig = text.partition(":")
    try:
        return int(code), int(sig or 0)
    except ValueError:
        return None, None


def _int(text: str) -> int | None:
    return int(text) if text.strip().isdigit() else None


def parse_sacct(text: str, offsets: Mapping[str, int] | None = None,
                names: bool = False) -> dict[tuple[str, int], Any]:
    """sacct --parsable2 rows (FIELDS order) -> {(array job id, task id): Usage} (`names`: (Usage, job name)).

    Steps are folded into their task; rows of tasks still pending (`123_[5-9]`) and plain jobs
    (the backstop) are left out. `Usage.index` is task id + the array's offset: `offsets[job]`
    when given, else the chunk's job-name offset (`<plan>@<offset>`). Each Usage is built once
    (10,000 elements x 3 rows: the fold works on plain lists).
    """
    tasks: dict[tuple[str, int], list[str]] = {}
    extra: dict[tuple[str, int], list[Any]] = {}  # [max step rss, step cpu, step OOM]
    for line in text.splitlines():
        cols = line.split("|")
        if len(cols) < len(FIELDS):
            continue
        head, _, step = cols[0].partition(".")
        job, sep, task = head.partition("_")
        if not sep or not task.isdigit() or not job.isdigit():
            continue
        key = (job, int(task))
        if not step:
            tasks[key] = cols
            continue
        acc = extra.setdefault(key, [None, None, False])
        rss = size_bytes(cols[8]) if cols[8] else None
        if rss is not None and (acc[0] is None or rss > acc[0]):
            acc[0] = rss
        if acc[1] is None and cols[9]:
            acc[1] = duration_s(cols[9])
        acc[2] = acc[2] or cols[2].startswith("OUT_OF_MEMORY")
    out: dict[tuple[str, int], Any] = {}
    for key, cols in tasks.items():
        job, task = key
        rss_step, cpu_step, oom = extra.get(key, (None, None, False))
        cpus = _int(cols[10])
        code, sig = _exit(cols[3])
        rss = size_bytes(cols[8]) if cols[8] else None
        cpu = duration_s(cols[9]) if cols[9] else None
        offset = offsets[job] if offsets and job in offsets else _offset_from_name(cols[1])
        req_mem = size_bytes(cols[7], cpus) if cols[7] else None
        max_rss = max((v for v in (rss, rss_step) if v is not None), default=None)
        # without cgroups, JobAcctGatherParams=OverMemoryKill kills the step with SIGKILL and the
        # record says FAILED 0:9 (verified on 22.05 here); a peak at or above the request says why
        oom = oom or (sig == 9 and req_mem is not None and max_rss is not None and max_rss >= req_mem)
        u = Usage(
            index=task + offset, job_id=job,
            # the batch step was killed for memory; the allocation row may only say FAILED
            state="OUT_OF_MEMORY" if oom else cols[2].split(" ", 1)[0].rstrip("+"), exit_code=code, signal=sig,
            elapsed_s=_int(cols[5]), time_limit_s=(_int(cols[6]) or 0) * 60 or None,
            req_mem_bytes=req_mem, max_rss_bytes=max_rss,
            total_cpu_s=cpu if cpu is not None else cpu_step, alloc_cpus=cpus, partition=cols[11] or None,
            node=cols[12] or None,
        )
        out[key] = (u, cols[1]) if names else u
    return out


def _offset_from_name(name: str) -> int:
    head, sep, tail = name.rpartition(OFFSET_SEP)
    return int(tail) if sep and head and tail.isdigit() else 0


class SlurmAccounting:
    """Element usage from sacct (one call), partition limits from scontrol (one call each)."""

    name = "slurm"

    def __init__(self, run: Runner | None = None, timeout: float = 60.0) -> None:
        self._run = run or (lambda argv: run_scheduler_command(
            argv, timeout=timeout, what="a SLURM login node", env={"SLURM_TIME_FORMAT": "standard"}))
        self.calls = 0

    def usage(self, job_ids: list[str], offsets: Mapping[str, int] | None = None) -> dict[str, dict[int, Usage]]:
        """{array job id: {element index: Usage}} for every given array, from ONE sacct call.

        The index is task id + `offsets[job_id]` when given, else the chunk's job-name offset.
        SchedulerError when sacct refuses (accounting disabled): the caller reports it.
        """
        ids = [j for j in dict.fromkeys(str(j).strip() for j in job_ids) if j.isdigit()]
        out: dict[str, dict[int, Usage]] = {j: {} for j in ids}
        if not ids:
            return out
        self.calls += 1
        proc = self._run(sacct_argv(ids))
        if proc.returncode != 0:
            raise SchedulerError(f"sacct failed: {first_message(proc.stderr, proc.stdout)}")
        for (job, _), u in parse_sacct(proc.stdout, offsets).items():
            if job in out:
                out[job][u.index] = u
        return out

    def limits(self, partition: str | None) -> Limits:
        """MaxTime / MaxMemPerNode / MaxMemPerCPU of a partition (the default one when None)."""
        argv = ["scontrol", "show", "partition", "-o"] + ([partition] if partition else [])
        proc = self._run(argv)
        if proc.returncode != 0:
            raise SchedulerError(f"scontrol show partition {partition or ''}: {first_message(proc.stderr, proc.stdout)}")
        return parse_partition(proc.stdout, partition)


def _minutes(text: str) -> int | None:
    if text in ("UNLIMITED", "INFINITE", "NONE", ""):
        return None
    seconds = duration_s(text) if ":" in text else (int(text) * 60 if text.isdigit() else None)
    return None if seconds is None else int(seconds // 60)


def parse_partition(text: str, partition: str | None = None) -> Limits:
    """`scontrol show partition -o` lines -> the limits of `partition` (or the Default=YES one)."""
    for line in text.splitlines():
        attrs = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
        if not attrs.get("PartitionName"):
            continue
        if partition and attrs["PartitionName"] != partition:
            continue
        if not partition and attrs.get("Default") != "YES" and len(text.splitlines()) > 1:
            continue
        per_node = attrs.get("MaxMemPerNode", "UNLIMITED")
        per_cpu = attrs.get("MaxMemPerCPU", "UNLIMITED")
        return Limits(
            name=attrs["PartitionName"], max_time_min=_minutes(attrs.get("MaxTime", "UNLIMITED")),
            max_mem_mb_per_node=int(per_node) if per_node.isdigit() else None,
            max_mem_mb_per_cpu=int(per_cpu) if per_cpu.isdigit() else None,
        )
    return Limits(name=partition)
