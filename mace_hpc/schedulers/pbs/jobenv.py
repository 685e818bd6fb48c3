"""Inside a PBS Pro / Torque job: the array index, the ids to record, requeue, and what a mom
epilogue (no job environment, the job id as an argument) can learn about a subjob."""

from __future__ import annotations

from ...errors import InputError
from ...records import env as env_names
from ..jobenv import JobEnvironment, is_listed


class PbsJobEnv(JobEnvironment):
    name = "pbs"
    detect_var = "PBS_JOBID"
    index_vars = ("PBS_ARRAY_INDEX", "PBS_ARRAYID")  # PBS Pro, Torque
    id_vars = ("PBS_JOBID", "PBS_ARRAY_INDEX", "PBS_ARRAYID")

    def requeue_argv(self) -> list[str] | None:
        return ["qrerun", self.environ["PBS_JOBID"]] if self.environ.get("PBS_JOBID") else None


def subjob_of(job_id: str) -> tuple[str, int, dict[str, str]] | None:
    """(array sequence number, subjob index, the job's exported variables) of PBS subjob `job_id`
    (`123[4].server`, Torque `123-4`); None for a plain job, a filler subjob of a covering range,
    or not a PBS id. One qstat call; without qstat the variables are empty."""
    from .backend import PbsBackend  # lazy: qstat only when a hook asks
    from .dialect import parse_job_id  # lazy: a job asking its environment needs no job-id parser

    try:
        jid = parse_job_id(job_id)
    except InputError:
        return None
    if jid.index is None:
        return None
    variables: dict[str, str] = {}
    try:
        states = PbsBackend().job_states([job_id])
        attrs = next(iter(states.values()), {}) if states else {}
        raw = attrs.get("Variable_List") or {}
        variables = {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}
    except Exception:  # noqa: BLE001 - qstat unavailable: the caller falls back to the records
        pass
    if not is_listed(jid.index, variables.get(env_names.ARRAY_INDICES)):
        return None  # a covering-range filler subjob
    return jid.seq, jid.index, variables
