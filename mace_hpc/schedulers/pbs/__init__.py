"""PBS backend: PBS Pro / OpenPBS (`qsub -J`, `PBS_ARRAY_INDEX`) and Torque (`qsub -t`, `PBS_ARRAYID`).

submitit has no PBS executor, so this module is one, registered as a submitit plugin (entry-point
group `submitit`, names `executor` / `job_environment`, the way the external `submitit-oar` plugin
does it): `submitit.AutoExecutor(folder, cluster="pbs")` finds `PbsExecutor`. mace-hpc's own
`PbsBackend` (the Backend protocol of `backend.py`) is built on that executor: the same job-script
renderer, `qsub` argv, job-id parser, `qstat` parser and state mapping, so local, SLURM and PBS
share one shape.

Two dialects, chosen by `scheduler.pbs_flavor` or detected from `qstat --version` (PBS Pro prints
`pbs_version = 22.05.11`, Torque `Version: 6.1.3`). Facts this code relies on, from the docs
(OpenPBS man pages in github.com/openpbs/openpbs doc/man1, Adaptive Computing Torque docs) and, for
PBS Pro, checked against a real OpenPBS 23.06 in CI (tests/test_submission_pbs_real.py, .ci/pbs/start.sh):

- PBS Pro `-J X-Y[:Z]` only takes one range with a step, X < Y (a one-element range is refused by
  `parse_subjob_index`, src/lib/Libutil/range.c). `%N` (the `max_run_subjobs` attribute) exists
  only since OpenPBS 22.05 (commit 50d9114, "Adding max_run_subjobs limit to array jobs").
  Array jobs are always rerunnable: `-J` with `-r n` is refused ("cannot submit non-rerunable
  Array Job", qsub.c), so we only ever send `-r y`.
- Torque `-t 3,7,12%2` takes any list plus a slot limit; dependencies on a whole array need the
  `*array` types (`afteranyarray:123[]`), added with Torque 2.5's array rework.
- PBS Pro `afterany`: "This job will not run if a job in the arg list was deleted without ever
  having been run" (qsub.1B): a backstop job after a fully cancelled array stays held.
- `-v` values containing commas must be quoted: `-v "a=10,var2='A,B'"` (qsub.1B).
- Jobs start in $HOME, not in the submit directory; PBS_O_WORKDIR names the latter.
- Exit_status (real OpenPBS): 0 ok; walltime kill -29 (JOB_EXEC_KILL_WALLTIME); qdel of a running
  job 271 (256 + SIGTERM: the login shell running the script died of it); qdel of a queued subjob 1
  with no `exec_host` (never ran); an element runner killed by a signal 128 + signal (the login
  shell reports its child). The array parent's Exit_status is the class (0/1/2) of the subjob that
  finished last, so states always come from the subjobs. Torque: -11 = walltime exceeded, 271 for
  both walltime and qdel (Adaptive Computing KB "exit codes"); -11 in PBS Pro is JOB_EXEC_RERUN.
- Dependencies (real OpenPBS): only on whole arrays, `afterany:123[].server` (an id without `[]` is
  accepted, then the job is deleted; `123[4]` is refused), so the backstop waits for the array.
- `qstat -F json` turns numeric/boolean `-v` values into JSON numbers (`0`, `007` -> 7): values are
  read back with `str()`, and only ours (indices, offsets, paths) are read at all.
- `qstat -x` means "include finished jobs" in PBS Pro but "XML output" in Torque; PBS Pro has
  `qstat -f -F json`, Torque only the text `-f` format (kept for `keep_completed` seconds).
- The mom runs `epilogue` as root, once per subjob, with argv[1] = job id ... argv[10] = exit code
  and next to no environment (OpenPBS: PATH=/bin:/usr/bin, no PBS_JOBID, no -v variable): an
  epilogue recovers the array index from the id (`parse_job_id`), never from PBS_ARRAY_INDEX.
- `qrerun` needs a manager (root): a job cannot requeue itself on PBS Pro as it can on SLURM.
"""


import importlib
from typing import TYPE_CHECKING, Any

from .jobenv import PbsJobEnv

if TYPE_CHECKING:
    from .dialect import (
        FLAVORS,
        PbsJobId,
        check_flavor,
        covered_ids,
        detect_flavor,
        parse_job_id,
        parse_qsub_output,
        parse_version_output,
        pbspro_range,
        translate_dependency,
    )
    from .qstat import element_states, normalize_pbs_state, parse_qstat, parse_qstat_json, parse_qstat_text
    from .script import JobSpec, render_script

__all__ = [
    "FLAVORS", "JobSpec", "PbsBackend", "PbsExecutor", "PbsJobEnv", "PbsInfoWatcher", "PbsJob", "PbsJobEnvironment",
    "PbsJobId", "check_flavor", "covered_ids", "detect_flavor", "element_states", "normalize_pbs_state",
    "parse_job_id", "parse_qsub_output", "parse_qstat", "parse_qstat_json", "parse_qstat_text",
    "parse_version_output", "pbspro_range", "render_script", "translate_dependency",
]

_NEEDS_SUBMITIT = {"PbsBackend": "backend", "PbsExecutor": "plugin", "PbsInfoWatcher": "plugin", "PbsJob": "plugin",
                   "PbsJobEnvironment": "plugin"}
#: Dialect, parsers and the script renderer: only submitting and querying need them, not a job's
#: environment (`PbsJobEnv`, which every element start asks whether this is a PBS job).
_ON_USE = {"element_states": "qstat", "normalize_pbs_state": "qstat", "parse_qstat": "qstat",
           "parse_qstat_json": "qstat", "parse_qstat_text": "qstat", "JobSpec": "script", "render_script": "script",
           **dict.fromkeys(("FLAVORS", "PbsJobId", "check_flavor", "covered_ids", "detect_flavor", "parse_job_id",
                            "parse_qsub_output", "parse_version_output", "pbspro_range", "translate_dependency"),
                           "dialect")}


def __getattr__(name: str) -> Any:
    """The submitit-based parts, the dialect and the parsers load on first use: a job asking its
    environment (every element start) must not pay for importing them."""
    if name in _NEEDS_SUBMITIT:
        if _NEEDS_SUBMITIT[name] == "backend":
            from . import backend as module  # lazy: submitit only for submitting
        else:
            from . import plugin as module  # lazy: submitit only for submitting
        return getattr(module, name)
    if name in _ON_USE:
        return getattr(importlib.import_module(f".{_ON_USE[name]}", __name__), name)
    if name == "dialect":  # `pbs.dialect` as when this package imported it itself
        return importlib.import_module(".dialect", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
