"""Why an element's attempt ended (its *cause*), and what the scheduler accounted for it (`Usage`).

The scheduler readers (`schedulers/slurm/accounting.py`, `schedulers/pbs/accounting.py`, the local
runner's own figures) produce `Usage` rows; the classifier (`status/classify.py`) turns a row, the
element's state file and the plan's named application errors into one `Cause`; the retry policy
(`submission/retry.py`) and the submission record's decisions speak the same words:

    COMPLETED  TIMEOUT  OUT_OF_MEMORY  NODE_FAIL  PREEMPTED  CANCELLED  APP_ERROR:<name>  FAILED(exit N)

`str(cause)` is that spelling and `Cause.parse` reads it back, so decisions stored in
`record.json` stay plain strings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

COMPLETED, TIMEOUT, OUT_OF_MEMORY, NODE_FAIL, PREEMPTED, CANCELLED, APP_ERROR, FAILED = (
    "COMPLETED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "CANCELLED", "APP_ERROR", "FAILED",
)
KINDS = (COMPLETED, TIMEOUT, OUT_OF_MEMORY, NODE_FAIL, PREEMPTED, CANCELLED, APP_ERROR, FAILED)
# what a plan's retry policy retries when it does not say (a cancel is a person's decision: never)
DEFAULT_RETRIED = (TIMEOUT, OUT_OF_MEMORY, NODE_FAIL, PREEMPTED)
_FAILED_RE = re.compile(r"^FAILED\(exit (-?\d+)\)$")
_APP_RE = re.compile(r"^APP_ERROR:([A-Za-z0-9][A-Za-z0-9._-]{0,63})$")


@dataclass(frozen=True)
class Cause:
    """One ended attempt's cause: a kind, plus the error's name (APP_ERROR) or exit code (FAILED)."""

    kind: str
    name: str | None = None  # APP_ERROR: the plan's error name
    exit_code: int | None = None  # FAILED: the exit code
    retryable: bool | None = None  # APP_ERROR: as the plan declared it (None: ask the policy)
    detail: str = ""  # one line of evidence: the matched line, the scheduler state

    def __str__(self) -> str:
        if self.kind == APP_ERROR:
            return f"{APP_ERROR}:{self.name}"
        if self.kind == FAILED:
            return f"FAILED(exit {self.exit_code if self.exit_code is not None else '?'})"
        return self.kind

    @classmethod
    def parse(cls, text: str) -> Cause:
        """`TIMEOUT`, `APP_ERROR:scf`, `FAILED(exit 3)` -> a Cause (ValueError for anything else)."""
        text = str(text).strip()
        if m := _APP_RE.fullmatch(text):
            return cls(APP_ERROR, name=m.group(1))
        if m := _FAILED_RE.fullmatch(text):
            return cls(FAILED, exit_code=int(m.group(1)))
        if text in KINDS and text not in (APP_ERROR, FAILED):
            return cls(text)
        raise ValueError(f"{text!r} is not a cause; use one of {', '.join(KINDS[:-2])}, APP_ERROR:<name>, FAILED")

    @property
    def succeeded(self) -> bool:
        return self.kind == COMPLETED


def check_cause_word(word: str) -> str:
    """A word a retry policy may list: a kind (`FAILED` means any exit code), or `APP_ERROR:<name>`."""
    if word in KINDS or _APP_RE.fullmatch(word):
        return word
    raise ValueError(word)


@dataclass(frozen=True)
class Usage:
    """What the scheduler (or the runner, locally) accounted for one element's attempt.

    Every figure may be None: sacct leaves MaxRSS empty for a job shorter than its sampling
    interval, PBS has no CPU count for a subjob that never ran. Times in seconds, sizes in bytes.
    """

    index: int
    job_id: str  # the array (`123`) this attempt ran in
    state: str = ""  # the scheduler's own word (sacct State first word, PBS F/X + exit status mapped)
    exit_code: int | None = None
    signal: int | None = None
    elapsed_s: float | None = None
    time_limit_s: float | None = None
    req_mem_bytes: int | None = None
    max_rss_bytes: int | None = None
    total_cpu_s: float | None = None
    alloc_cpus: int | None = None
    partition: str | None = None
    node: str | None = None
    # a packed array task's record: this many elements ran in it and every figure is the task's
    # (schedulers.base.element_usage marks it; the efficiency report takes each element's own)
    shared_by: int = 1

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Limits:
    """What a partition/queue allows one job: minutes and MiB, None = no limit."""

    name: str | None = None
    max_time_min: int | None = None
    max_mem_mb_per_node: int | None = None
    max_mem_mb_per_cpu: int | None = None

    def max_mem_mb(self, cpus: int) -> int | None:
        per_cpu = self.max_mem_mb_per_cpu * max(cpus, 1) if self.max_mem_mb_per_cpu else None
        values = [v for v in (self.max_mem_mb_per_node, per_cpu) if v]
        return min(values) if values else None
