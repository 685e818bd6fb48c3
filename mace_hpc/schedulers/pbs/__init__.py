"""PBS backend: PBS Pro / OpenPBS (`qsub -J`, `PBS_ARRAY_INDEX`) and Torque (`qsub -t`, `PBS_ARRAYID`).

submitit has no PBS executor, so this module is one, registered as a submitit plugin (entry-point
group `submitit`, names `executor` / `job_environment`, the way the external `submitit-oar` plugin
does it): `submitit.AutoExecutor(folder, cluster="pbs")` finds `PbsExecutor`. mace-hpc's own
`PbsBackend` (the Backend protocol of `backend.py`) is built on that executor: the same job-script
renderer, `qsub` argv, job-id parser, `qstat` parser and state mapping, so local, SLURM and PBS
share one shape.

Two dialects, chosen by `scheduler.pbs_flavor` or detected from `qstat --version` (PBS Pro prints
`pbs_version = 22.05.11`, Torque `Version: 6.1.3`). Facts from the docs this code relies on
(OpenPBS man pages in github.com/openpbs/openpbs doc/man1, Adaptive Computing Torque docs):

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
- Exit_status: 0 ok; a job killed by a signal reports 256 + signal (PBS Pro mom_start.c
  `WTERMSIG(statloc) + 0x100`), so 271 = SIGTERM (walltime kill or qdel of a running job);
  PBS Pro JOB_EXEC_KILL_WALLTIME = -29 (src/include/job.h); Torque -11 = walltime exceeded
  (Adaptive Computing KB "exit codes", Torque 6.1.2); note -11 in PBS Pro is JOB_EXEC_RERUN.
- `qstat -x` means "include finished jobs" in PBS Pro but "XML output" in Torque; PBS Pro has
  `qstat -f -F json`, Torque only the text `-f` format (kept for `keep_completed` seconds).
- Torque's mom runs `epilogue` with argv[1] = job id ... argv[10] = exit code and an EMPTY
  environment: an epilogue recovers the array index from the id (`parse_job_id`), never from
  PBS_ARRAYID.
"""


from .backend import PbsBackend
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
from .jobenv import PbsJobEnv
from .plugin import PbsExecutor, PbsInfoWatcher, PbsJob, PbsJobEnvironment
from .qstat import element_states, normalize_pbs_state, parse_qstat, parse_qstat_json, parse_qstat_text
from .script import JobSpec, render_script

__all__ = [
    "FLAVORS", "JobSpec", "PbsBackend", "PbsExecutor", "PbsJobEnv", "PbsInfoWatcher", "PbsJob", "PbsJobEnvironment",
    "PbsJobId", "check_flavor", "covered_ids", "detect_flavor", "element_states", "normalize_pbs_state",
    "parse_job_id", "parse_qsub_output", "parse_qstat", "parse_qstat_json", "parse_qstat_text",
    "parse_version_output", "pbspro_range", "render_script", "translate_dependency",
]
