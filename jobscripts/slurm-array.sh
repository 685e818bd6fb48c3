#!/bin/bash
# jobscripts/slurm-array.sh - run a mace-hpc plan with YOUR OWN sbatch array script.
#
# `mace-submit --backend slurm plan.json` writes and submits its own job script; use this one
# instead when you want to control sbatch yourself (site-specific directives, a wrapper, a
# workflow manager). mace-hpc still gives every array element its own context, environment
# (MACE_WORKFLOW_ID, MACE_ISOLATION_MODE, MACE_CONTEXT_DIR, the plan's env) and epilogue.
#
# 1. Create the contexts and the manifest without submitting anything:
#        mace-submit plan.json --no-submit
#    It prints MACE_MANIFEST=<scratch>/.submissions/<plan>/manifest.json and the element count N.
# 2. Submit this script as an array over the element indices 0..N-1 (%4: at most 4 at once):
#        MACE_MANIFEST=<that path> sbatch --array=0-$((N-1))%4 jobscripts/slurm-array.sh
#    A subset works too: --array=3,7,12 runs only those elements (e.g. to rerun failed ones).
#    Put MACE_* in sbatch's environment as above (sbatch exports it all by default), not in
#    `--export=ALL,MACE_MANIFEST=...`: a variable list makes slurmd start a login shell
#    (`su - $USER`) before every task, which costs your whole profile per element.
# 3. Follow it with `mace status <plan>` (state files), `mace merge <plan>` if an epilogue could not.
#
# The element index comes from SLURM_ARRAY_TASK_ID (plus MACE_INDEX_OFFSET if you set one,
# for plans larger than the cluster's MaxArraySize: submit element 1001.. as --array=0-..
# with MACE_INDEX_OFFSET=1001 in sbatch's environment).
#
# Time limit: --signal=B:USR2@120 sends SIGUSR2 to this batch shell 120 s before --time. The
# runner is started with `exec`, so it IS the batch shell and gets the signal: it stops the
# running step, records TIMEOUT and runs the epilogue before SLURM kills the job. Keep the margin
# larger than a merge takes. Add `#SBATCH --requeue` and export MACE_REQUEUE=1 to have a timed-out
# element requeued; it resumes in the same context and skips the steps it completed.
#
# Edit the directives below for your site (partition, account, time, memory).
#SBATCH --job-name=mace-array
#SBATCH --time=01:00:00
#SBATCH --cpus-per-task=1
#SBATCH --signal=B:USR2@120
#SBATCH --output=mace-array_%A_%a.out
#SBATCH --error=mace-array_%A_%a.err
##SBATCH --partition=compute
##SBATCH --account=myproject
##SBATCH --mem=2G

set -eu

if [ -z "${MACE_MANIFEST:-}" ]; then
    echo "slurm-array.sh: MACE_MANIFEST is not set; submit with MACE_MANIFEST=/path/to/manifest.json sbatch ..." >&2
    exit 2
fi
if [ -z "${SLURM_ARRAY_TASK_ID:-}" ]; then
    echo "slurm-array.sh: not an array job; submit with sbatch --array=0-<N-1>" >&2
    exit 2
fi

# Software on the compute node (edit): the `mace` command must be on PATH after these lines.
# module load python/3.11
# . "$HOME/venvs/mace/bin/activate"

exec mace run-element "$MACE_MANIFEST"
