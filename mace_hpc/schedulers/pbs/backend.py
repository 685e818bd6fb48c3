"""`PbsBackend`: mace-hpc's Backend protocol on top of the PBS submitit executor."""

from __future__ import annotations

import re
import subprocess
import typing as tp
from pathlib import Path

from ...config import effective_signal_margin
from ...errors import ConfigError, InputError, SchedulerError
from ...records.states import State
from ..base import (
    ArrayRequest,
    are_placeholders,
    check_env,
    check_job_name,
    check_script_value,
    first_message,
    run_scheduler_command,
    scheduler_number,
    shell_quote,
    submit_each,
    submit_script,
)
from . import dialect
from .dialect import (
    CLIENT_TIMEOUT_S,
    DEFAULT_MAX_ARRAY_SIZE,
    V_SAFE,
    check_flavor,
    convert_mem,
    gpu_count,
    parse_job_id,
    parse_qsub_output,
    translate_dependency,
)
from .plugin import PbsExecutor
from .qstat import element_states, parse_qstat, qstat_argv
from .script import JobSpec, render_script


# ---------------------------------------------------------------------------- mace-hpc backend
class PbsBackend:
    """mace-hpc's Backend protocol for PBS Pro and Torque, built on PbsExecutor.

    `PbsBackend()` needs no arguments: the flavor comes from `flavor=`, else from the request's
    `scheduler.pbs_flavor` at submit time, else from `qstat --version`.
    """

    name = "pbs"
    elementwise_dependencies = False  # stages wait for whole arrays (or, locally, our own scheduler)

    def __init__(self, flavor: str | None = None, max_array_size: int | None = None,
                 timeout: float = CLIENT_TIMEOUT_S) -> None:
        self._flavor = check_flavor(flavor, "flavor") if flavor is not None else None
        self._max_array_size = max_array_size
        self._timeout = timeout

    # -- helpers -------------------------------------------------------------
    def flavor(self, req: ArrayRequest | None = None) -> str:
        if self._flavor is not None:
            return self._flavor
        configured = (req.scheduler or {}).get("pbs_flavor") if req is not None else None
        if configured is not None:
            return check_flavor(configured)
        return dialect.detect_flavor()[0]

    def executor(self, req: ArrayRequest) -> PbsExecutor:
        return PbsExecutor(Path(req.work_dir), flavor=self.flavor(req))

    def script_path(self, req: ArrayRequest) -> Path:
        return Path(req.work_dir) / f"{_stem(req)}.pbs"

    def spec(self, req: ArrayRequest) -> JobSpec:
        ex = self.executor(req)
        flavor = ex.resolve_flavor()
        sched = dict(req.scheduler or {})
        name = check_job_name(req.name)
        if not name[0].isalpha():  # PBS job names must start with a letter
            name = f"m{name}"
        if not req.command:
            raise InputError("command: the element runner argv is empty")
        if sched.get("qos") is not None and flavor == "pbspro":
            raise ConfigError("scheduler.qos has no PBS Pro equivalent; unset it (use scheduler.partition for the queue)")
        env = check_env(req.env or {})
        v_env: dict[str, str] = {}
        exports: list[str] = []
        if req.indices is not None:
            v_env["MACE_INDEX_OFFSET"] = str(int(req.index_offset))
        for key, value in env.items():
            if key in ("MACE_INDEX_OFFSET", "MACE_ARRAY_INDICES"):
                continue
            if V_SAFE.fullmatch(value):
                v_env[key] = value
            else:  # quotes, spaces, commas, $...: a quoted shell line instead of -v
                exports.append(f"export {key}={shell_quote(value, f'env.{key}')}")
        setup = [check_script_value(s, f"scheduler.setup[{i}]") for i, s in enumerate(sched.get("setup") or [])]
        command = "exec " + " ".join(shell_quote(a, f"command[{i}]") for i, a in enumerate(req.command))
        return JobSpec(
            flavor=flavor,
            name=name,
            command=command,
            work_dir=Path(req.work_dir).resolve(),
            log_stem=_stem(req),
            task_ids=req.task_ids() if req.indices is not None else None,
            max_parallel=int(req.max_parallel) if req.max_parallel else None,
            queue=sched.get("partition"),
            account=sched.get("account"),
            qos=sched.get("qos"),
            time_min=int(sched.get("time") or 60),
            cpus=int(sched.get("cpus") or 1),
            mem=convert_mem(sched["mem"]) if sched.get("mem") else None,
            gpus=gpu_count(sched.get("gres")),
            setup=setup,
            env=v_env,
            exports=exports,
            dependency=_translated(req, flavor),
            requeue=bool(sched.get("requeue")),
            signal_margin=effective_signal_margin(sched),
            pbspro_throttle=ex.pbspro_throttle() if flavor == "pbspro" else True,
            index_offset=int(req.index_offset) if req.indices is not None else None,
        )

    # -- Backend protocol ----------------------------------------------------
    def render(self, req: ArrayRequest) -> tuple[str, list[str]]:
        """Job script text and the `qsub <script>` argv (dry-run); InputError/ConfigError on bad values."""
        text = render_script(self.spec(req))
        return text, self.executor(req)._make_submission_command(self.script_path(req))

    def submit(self, req: ArrayRequest) -> str:
        """Write the script next to the logs, qsub it from work_dir; the full PBS job id."""
        text, argv = self.render(req)
        proc = submit_script(self._run, self.script_path(req), text, argv, req.work_dir)
        if proc.returncode != 0:
            raise SchedulerError(f"qsub refused {req.name}: {first_message(proc.stderr, proc.stdout)}")
        return parse_qsub_output(proc.stdout)

    def job_states(self, job_ids: list[str], flavor: str | None = None) -> dict[str, dict[str, tp.Any]]:
        """qstat records for these jobs and, for arrays, every subjob: one qstat call per id."""
        flavor = flavor or self.flavor()
        records: dict[str, dict[str, tp.Any]] = {}
        for raw in dict.fromkeys(job_ids):
            jid = parse_job_id(raw)
            proc = self._run(qstat_argv(flavor, [str(jid)]))
            if proc.returncode != 0 and not proc.stdout.strip():
                msg = first_message(proc.stderr, proc.stdout)
                if re.search(r"unknown job id|job has finished", msg, re.IGNORECASE):
                    continue  # purged (Torque keep_completed) or history off: state files tell
                raise SchedulerError(f"qstat failed for {jid}: {msg}")
            records.update(parse_qstat(flavor, proc.stdout))
        return records

    def query(self, job_ids: list[str], offsets: tp.Mapping[str, int] | None = None) -> dict[int, State]:
        """Element index -> state over the given arrays; ONE qstat call per array.

        The index is the subjob's array index + the array's MACE_INDEX_OFFSET (read back from
        qstat's Variable_List, or `offsets[seq]`). Jobs qstat no longer knows are absent.
        """
        flavor = self.flavor()
        return element_states(self.job_states(job_ids, flavor), flavor, offsets)

    def submit_all(
        self, requests: tp.Sequence[ArrayRequest], on_submitted: tp.Callable[[ArrayRequest, str], None]
    ) -> list[str]:
        """One qsub per request, in order; a stage's array waits for its whole upstream arrays
        (`afterany`: PBS has no element-wise array dependency) and its runner skips an element
        whose upstream stage did not complete."""
        return submit_each(self, requests, on_submitted)

    def element_job_id(self, job_id: str, task_id: int) -> str | None:
        return None  # whole-array chains: a skipped element's runner reads SKIPPED and ends at once

    def cancel(self, job_ids: list[str]) -> None:
        """qdel the given arrays/subjobs/jobs in one call; already-finished ones are not an error."""
        ids = [str(parse_job_id(j)) for j in dict.fromkeys(job_ids)]
        if not ids:
            return
        proc = self._run(["qdel", *ids])
        if proc.returncode != 0:
            msg = first_message(proc.stderr, proc.stdout)
            if not re.search(r"unknown job id|job has finished|invalid state|already", msg, re.IGNORECASE):
                raise SchedulerError(f"qdel failed: {msg}")

    def max_array_size(self) -> int:
        """scheduler.max_array_size if given to the constructor, else the server's `max_array_size`
        (PBS Pro) / `max_job_array_size` (Torque) from `qstat -B -f`, else 10000 (PBS Pro's default)."""
        if self._max_array_size is None:
            self._max_array_size = scheduler_number(
                self._run, ["qstat", "-B", "-f"], r"^\s*max_(?:job_)?array_size\s*=\s*(\d+)", DEFAULT_MAX_ARRAY_SIZE
            )
        return self._max_array_size

    def _run(self, argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return run_scheduler_command(argv, timeout=self._timeout, what="a PBS login node", cwd=cwd)


def _translated(req: ArrayRequest, flavor: str) -> str | None:
    """The request's `depend=` value: the backstop's own, or a stage's whole upstream arrays
    (afterany; a dry run's placeholders shown as they are)."""
    if req.dependency is None and req.after_ids:
        dep = "afterany:" + ":".join(req.after_ids)
        return dep if are_placeholders(req.after_ids) else translate_dependency(dep, flavor)
    return translate_dependency(req.dependency, flavor) if req.dependency else None


def _stem(req: ArrayRequest) -> str:
    """The name of this submission's script and logs in the logs directory: the array's name (with
    its chunk's offset), plus `.r2`, `.r3`, ... when an earlier submission of it (`mace resubmit`)
    left its script there. PBS Pro expands no job id in `-o`, so without this a resubmit's logs
    would overwrite the first attempt's."""
    base = f"{check_job_name(req.name)}{f'@{req.index_offset}' if req.index_offset else ''}"
    stem, attempt = base, 1
    while (Path(req.work_dir) / f"{stem}.pbs").exists():
        attempt += 1
        stem = f"{base}.r{attempt}"
    return stem
