"""The one state vocabulary of an element, shared by runner, epilogue, status, scheduler tables and CLI.

An element first *runs* (PENDING -> RUNNING -> COMPLETED | FAILED | TIMEOUT | CANCELLED), then its
epilogue brings the results *home* (MERGED | ARCHIVED | KEPT, or PENDING_MERGE to retry, or
QUARANTINED when its files are unusable). A state file keeps both: `state` (where it is now) and
`run_state` (how its last run ended). Members are `str`s, so they compare equal to, and serialise
as, their names in every JSON file written before this module existed.
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    TIMEOUT = "TIMEOUT"
    CANCELLED = "CANCELLED"
    MERGED = "MERGED"
    ARCHIVED = "ARCHIVED"
    PENDING_MERGE = "PENDING_MERGE"
    KEPT = "KEPT"
    QUARANTINED = "QUARANTINED"
    SKIPPED = "SKIPPED"  # a stage that never ran because a stage it needs failed (multi-stage plans)

    @classmethod
    def parse(cls, value: object, default: State | None = None) -> State | None:
        """The member named `value`; `default` for anything else (a foreign or newer word)."""
        try:
            return cls(value)
        except ValueError:
            return default


PENDING, RUNNING, COMPLETED, FAILED, TIMEOUT, CANCELLED = (
    State.PENDING, State.RUNNING, State.COMPLETED, State.FAILED, State.TIMEOUT, State.CANCELLED,
)
MERGED, ARCHIVED, PENDING_MERGE, KEPT, QUARANTINED, SKIPPED = (
    State.MERGED, State.ARCHIVED, State.PENDING_MERGE, State.KEPT, State.QUARANTINED, State.SKIPPED,
)

RUN_STATES = (PENDING, RUNNING, COMPLETED, FAILED, TIMEOUT, CANCELLED)
FINAL_RUN_STATES = (COMPLETED, FAILED, TIMEOUT, CANCELLED)
EPILOGUE_STATES = (MERGED, ARCHIVED, PENDING_MERGE, KEPT)
DONE_STATES = (MERGED, ARCHIVED, KEPT, QUARANTINED)  # the epilogue has nothing left to do
ACTIVE = frozenset({PENDING, RUNNING})  # queued or running: may still change by itself
BAD_FINAL = frozenset({FAILED, TIMEOUT, CANCELLED})  # ended without results: resubmit candidates
SETTLED = frozenset(FINAL_RUN_STATES) | frozenset(EPILOGUE_STATES) | {QUARANTINED}
SUCCESS = frozenset({COMPLETED, MERGED, ARCHIVED, KEPT})
ORDER = (*RUN_STATES, *EPILOGUE_STATES, QUARANTINED, SKIPPED)  # how summaries list them

# the calculations table speaks upstream MACE's lower-case words for the same run outcomes
CALC_STATUS = {PENDING: "pending", RUNNING: "running", COMPLETED: "completed", FAILED: "failed",
               TIMEOUT: "timeout", CANCELLED: "cancelled"}
TERMINAL_CALC_STATUSES = frozenset(CALC_STATUS[s] for s in FINAL_RUN_STATES)
