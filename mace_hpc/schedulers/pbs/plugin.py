"""The submitit executor plugin (`submitit.AutoExecutor(folder, cluster="pbs")`)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import typing as tp
import uuid
from pathlib import Path

from submitit.core import core, job_environment, logger, utils

from ...errors import InputError, SchedulerError
from ..base import (
    check_env,
    check_script_value,
)
from . import dialect
from .dialect import (
    PBSPRO_THROTTLE_SINCE,
    check_flavor,
    convert_mem,
    parse_job_id,
    parse_qsub_output,
    translate_dependency,
)
from .qstat import normalize_pbs_state, parse_qstat, qstat_argv
from .script import JobSpec, render_script


# ---------------------------------------------------------------------------- submitit plugin
def _submitit_id(pbs_id: str) -> str:
    """PBS id -> submitit id: `123[4].srv` -> `123_4`, `123.srv` -> `123` (submitit's `%A_%a` shape)."""
    jid = parse_job_id(pbs_id)
    return f"{jid.seq}_{jid.index}" if jid.index is not None else jid.seq


def _pbs_id(submitit_id: str, array: bool = False) -> str:
    seq, sep, idx = submitit_id.partition("_")
    if sep:
        return f"{seq}[{idx}]"
    return f"{seq}[]" if array else seq


class PbsInfoWatcher(core.InfoWatcher):
    """One qstat call for every registered job (arrays asked as `123[]`), states normalized."""

    flavor: str | None = None

    def _flavor(self) -> str:
        if self.flavor is None:
            self.flavor = dialect.detect_flavor()[0]
        return self.flavor

    def _make_command(self) -> list[str] | None:
        to_check = self._registered - self._finished
        if not to_check:
            return None
        ids = sorted({_pbs_id(j.split("_")[0], array="_" in j) for j in to_check})
        return qstat_argv(self._flavor(), ids)

    def get_state(self, job_id: str, mode: str = "standard") -> str:
        return self.get_info(job_id, mode=mode).get("State") or "UNKNOWN"

    def read_info(self, string: bytes | str) -> dict[str, dict[str, str]]:
        text = string.decode() if isinstance(string, bytes) else string
        if not text.strip():
            return {}
        flavor = self._flavor()
        out = {}
        for job_id, attrs in parse_qstat(flavor, text).items():
            try:
                key = _submitit_id(job_id)
            except InputError:
                continue
            out[key] = {"JobID": key, "State": normalize_pbs_state(attrs, flavor)}
        return out


class PbsJob(core.Job[core.R]):
    _cancel_command = "qdel"
    watcher = PbsInfoWatcher(delay_s=600)

    def cancel(self, check: bool = True) -> None:
        (subprocess.check_call if check else subprocess.call)(
            [self._cancel_command, _pbs_id(self.job_id)], shell=False
        )


class PbsJobEnvironment(job_environment.JobEnvironment):
    """Inside a PBS job started by PbsExecutor (SUBMITIT_EXECUTOR=pbs): ids and ranks from PBS_*."""

    _env = {"job_id": "PBS_JOBID"}

    @property
    def raw_job_id(self) -> str:
        return parse_job_id(os.environ["PBS_JOBID"]).seq

    @property
    def array_job_id(self) -> str | None:
        return self.raw_job_id if self.array_task_id is not None else None

    @property
    def array_task_id(self) -> str | None:
        return os.environ.get("PBS_ARRAY_INDEX") or os.environ.get("PBS_ARRAYID")

    @property
    def num_tasks(self) -> int:
        return 1

    @property
    def num_nodes(self) -> int:
        return 1

    @property
    def node(self) -> int:
        return 0

    @property
    def global_rank(self) -> int:
        return 0

    @property
    def local_rank(self) -> int:
        return 0

    @property
    def hostnames(self) -> list[str]:
        nodefile = os.environ.get("PBS_NODEFILE")
        if nodefile and Path(nodefile).is_file():
            return list(dict.fromkeys(Path(nodefile).read_text().split())) or [self.hostname]
        return [self.hostname]

    def _requeue(self, countdown: int) -> None:
        jid = os.environ["PBS_JOBID"]
        subprocess.check_call(["qrerun", jid], timeout=60)
        logger.get_logger().info(f"Requeued job {jid} ({countdown} remaining timeouts)")


def _executor_defaults() -> dict[str, tp.Any]:
    return {
        "job_name": "submitit",
        "queue": None,
        "account": None,
        "time": 5,
        "cpus": 1,
        "mem": None,
        "ngpus": None,
        "nodes": 1,
        "tasks_per_node": 1,
        "setup": [],
        "env": {},
        "array_parallelism": 256,
        "requeue": False,
        "dependency": None,
        "signal_margin": None,
    }


class PbsExecutor(core.PicklingExecutor):
    """submitit executor for PBS Pro / OpenPBS and Torque (`cluster="pbs"`).

    Parameters (update_parameters): job_name, queue, account, time [min], cpus, mem ("4gb"),
    ngpus, setup [shell lines], env {K: V}, array_parallelism, requeue, dependency, signal_margin.
    One node, one task: enough for mace-hpc's single-process elements; nodes/tasks_per_node > 1 are
    refused rather than silently ignored.
    """

    job_class = PbsJob

    def __init__(self, folder: str | Path, max_num_timeout: int = 3, max_pickle_size_gb: float = 1.0,
                 python: str | None = None, flavor: str | None = None) -> None:
        super().__init__(folder, max_num_timeout=max_num_timeout, max_pickle_size_gb=max_pickle_size_gb)
        self.python = shlex.quote(sys.executable) if python is None else python
        self.flavor = check_flavor(flavor) if flavor is not None else None
        self.version: tuple[int, ...] | None = None
        self.parameters = dict(_executor_defaults())

    # -- flavor --------------------------------------------------------------
    def resolve_flavor(self) -> str:
        if self.flavor is None:
            self.flavor, self.version = dialect.detect_flavor()
        return self.flavor

    def pbspro_throttle(self) -> bool:
        """Whether `-J range%N` may be sent: OpenPBS >= 22.05, or a PBS Pro whose version we cannot read."""
        if self.resolve_flavor() != "pbspro":
            return False
        if self.version is None:
            try:
                flavor, version = dialect.detect_flavor()
            except SchedulerError:
                return True
            if flavor != "pbspro" or version is None:
                return True
            self.version = version
        return self.version[:2] >= PBSPRO_THROTTLE_SINCE

    # -- parameters ----------------------------------------------------------
    @classmethod
    def _equivalence_dict(cls) -> core.EquivalenceDict:
        return {
            "name": "job_name",
            "timeout_min": "time",
            "mem_gb": "mem",
            "nodes": "nodes",
            "cpus_per_task": "cpus",
            "gpus_per_node": "ngpus",
            "tasks_per_node": "tasks_per_node",
        }

    @classmethod
    def _valid_parameters(cls) -> set[str]:
        return set(_executor_defaults())

    def _convert_parameters(self, params: dict[str, tp.Any]) -> dict[str, tp.Any]:
        params = super()._convert_parameters(params)
        if isinstance(params.get("mem"), (int, float)):
            gb = float(params["mem"])
            params["mem"] = f"{int(gb)}gb" if gb == int(gb) else f"{int(gb * 1024)}mb"
        return params

    def _internal_update_parameters(self, **kwargs: tp.Any) -> None:
        unknown = sorted(set(kwargs) - self._valid_parameters())
        if unknown:
            raise ValueError(f"Unavailable parameter(s): {unknown}; valid: {sorted(self._valid_parameters())}")
        for key in ("nodes", "tasks_per_node"):
            if key in kwargs and int(kwargs[key] or 1) != 1:
                raise ValueError(f"PbsExecutor runs one task on one node; {key}={kwargs[key]} is not supported")
        super()._internal_update_parameters(**kwargs)

    # -- submission ----------------------------------------------------------
    @property
    def _submitit_command_str(self) -> str:
        return " ".join([self.python, "-u -m submitit.core._submit", shlex.quote(str(self.folder))])

    def _num_tasks(self) -> int:
        return 1

    def spec_from_parameters(self, command: str) -> JobSpec:
        p = self.parameters
        flavor = self.resolve_flavor()
        folder = utils.JobPaths.get_first_id_independent_folder(self.folder)
        n = p.get("map_count")
        name = re.sub(r"[^A-Za-z0-9._-]", "_", str(p["job_name"]))[:128] or "submitit"
        return JobSpec(
            flavor=flavor,
            name=name if name[0].isalpha() else f"j{name}",
            command=command,
            work_dir=folder,
            log_stem="pbs",
            task_ids=list(range(n)) if n else None,
            max_parallel=int(p["array_parallelism"]),
            queue=p["queue"],
            account=p["account"],
            time_min=int(p["time"]),
            cpus=int(p["cpus"]),
            mem=convert_mem(p["mem"]) if p["mem"] else None,
            gpus=int(p["ngpus"]) if p["ngpus"] else None,
            setup=[check_script_value(s, "setup") for s in p["setup"]],
            env=check_env(p["env"]) if p["env"] else {},
            dependency=translate_dependency(p["dependency"], flavor) if p["dependency"] else None,
            requeue=bool(p["requeue"]),
            signal_margin=p["signal_margin"],
            pbspro_throttle=self.pbspro_throttle() if n else True,
        )

    def _make_submission_file_text(self, command: str, uid: str) -> str:
        folder = shlex.quote(str(self.folder))
        # submitit reads <folder>/<id>_0_log.out|err; PBS cannot name files after the job id at submit
        # time, so the script redirects itself once PBS_JOBID is known.
        redirect = [
            "export SUBMITIT_EXECUTOR=pbs",
            'SUBMITIT_JOB_ID="${PBS_JOBID%%[[.]*}"',
            'if [ -n "${PBS_ARRAY_INDEX:-${PBS_ARRAYID:-}}" ]; then '
            'SUBMITIT_JOB_ID="${SUBMITIT_JOB_ID}_${PBS_ARRAY_INDEX:-$PBS_ARRAYID}"; fi',
            f'SUBMITIT_DIR={folder}',
            'SUBMITIT_DIR="${SUBMITIT_DIR//%j/$SUBMITIT_JOB_ID}"',
            'mkdir -p "$SUBMITIT_DIR"',
            'exec >>"$SUBMITIT_DIR/${SUBMITIT_JOB_ID}_0_log.out" 2>>"$SUBMITIT_DIR/${SUBMITIT_JOB_ID}_0_log.err"',
        ]
        spec = self.spec_from_parameters(command)
        spec.exports = redirect
        return render_script(spec)

    def _make_submission_command(self, submission_file_path: Path) -> list[str]:
        return ["qsub", str(submission_file_path)]

    @staticmethod
    def _get_job_id_from_submission_command(string: bytes | str) -> str:
        text = string.decode() if isinstance(string, bytes) else string
        try:
            return _submitit_id(parse_qsub_output(text)).split("_")[0]
        except (InputError, SchedulerError):
            raise utils.FailedSubmissionError(f'Could not make sense of qsub output "{text}"') from None

    def _submit_command(self, command: str) -> core.Job[tp.Any]:
        PbsJob.watcher.flavor = self.resolve_flavor()
        return super()._submit_command(command)

    def _internal_process_submissions(
        self, delayed_submissions: list[utils.DelayedSubmission]
    ) -> list[core.Job[tp.Any]]:
        if len(delayed_submissions) == 1:
            return super()._internal_process_submissions(delayed_submissions)
        folder = utils.JobPaths.get_first_id_independent_folder(self.folder)
        folder.mkdir(parents=True, exist_ok=True)
        pickle_paths = []
        for d in delayed_submissions:
            pickle_path = folder / f"{uuid.uuid4().hex}.pkl"
            d.set_timeout(int(self.parameters["time"]), self.max_num_timeout)
            d.dump(pickle_path)
            pickle_paths.append(pickle_path)
        n = len(delayed_submissions)
        array_ex = PbsExecutor(self.folder, self.max_num_timeout, python=self.python, flavor=self.resolve_flavor())
        array_ex.version = self.version
        array_ex.parameters = dict(self.parameters, map_count=n)
        self._throttle()
        first: core.Job[tp.Any] = array_ex._submit_command(self._submitit_command_str)
        jobs: list[core.Job[tp.Any]] = [PbsJob(folder=self.folder, job_id=f"{first.job_id}_{a}") for a in range(n)]
        for job, pickle_path in zip(jobs, pickle_paths, strict=True):
            job.paths.move_temporary_file(pickle_path, "submitted_pickle")
        return jobs

    @classmethod
    def affinity(cls) -> int:
        return -1 if shutil.which("qsub") is None else 2


