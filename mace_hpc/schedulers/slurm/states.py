"""SLURM job states (squeue %T / sacct State, first word) onto `records.State`.

Requeued and held jobs will run again (PENDING); a job still finishing its epilog is not final yet
(RUNNING); hardware and memory deaths are the element's failure to rerun (FAILED); preemption
without requeue is the scheduler taking the slot away (CANCELLED); a missed deadline is a time limit.
"""

from __future__ import annotations

from ...records.states import CANCELLED, COMPLETED, FAILED, PENDING, RUNNING, TIMEOUT, State

SLURM_STATES: dict[str, State] = {
    **dict.fromkeys(("PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "SPECIAL_EXIT", "RESV_DEL_HOLD"), PENDING),
    **dict.fromkeys(("RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT",
                     "RESIZING"), RUNNING),
    "COMPLETED": COMPLETED,
    **dict.fromkeys(("FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL"), FAILED),
    **dict.fromkeys(("TIMEOUT", "DEADLINE"), TIMEOUT),
    **dict.fromkeys(("CANCELLED", "PREEMPTED", "REVOKED"), CANCELLED),
}


def normalize_slurm_state(raw: str) -> State:
    """`CANCELLED by 0`, `OUT_OF_MEMORY`, `CD`... -> a State (unknown: PENDING, i.e. not final)."""
    word = raw.strip().split(" ", 1)[0].rstrip("+").upper() if raw.strip() else ""
    return SLURM_STATES.get(word, PENDING)
