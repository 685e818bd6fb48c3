#!/bin/bash
# mace-hpc SLURM TaskEpilog: finalize (merge | archive | keep) a mace-hpc array element after its task.
#
# Install (slurm.conf on every compute node, then `scontrol reconfigure`):
#     TaskEpilog=/opt/mace-hpc/jobscripts/slurm-task-epilog.sh
# The file must be readable and executable by every user (slurmstepd runs it as the job's user).
#
# What it sees: the job's environment (SLURM_JOB_ID, SLURM_ARRAY_TASK_ID and the exported
# MACE_MANIFEST / MACE_INDEX_OFFSET), as the job's user, after the batch task ended however it
# ended (also after a kill at the time limit). Not a mace-hpc job: exits at once, nothing started.
# The element runner already ran its own epilogue; this one finishes what it could not (runner
# killed hard, out of memory...). A runner that finished leaves a marker file and this exits at
# once (no Python started); a second run over a finished element would be a no-op anyway.
#
# It ALWAYS exits 0 and never runs longer than the epilogue deadline plus 30 s: a hook failing or
# hanging would make SLURM drain the node. Problems are recorded in the element's state file
# (PENDING_MERGE, picked up by the backstop job or `mace merge`) and <context>/logs/epilogue.log.
#
# Which mace-epilogue: $MACE_EPILOGUE (a path), else `mace-epilogue` on the job's PATH, else
# `$MACE_PYTHON -m mace_hpc.cli.main epilogue`, else python3 on PATH.

[ -n "${MACE_MANIFEST:-}${MACE_CONTEXT_DIR:-}" ] || exit 0       # not a mace-hpc job: cheap exit
case "${SLURM_STEP_ID:-batch}" in batch|4294967291) ;; *) exit 0 ;; esac   # srun steps inside the element: not the end
# the runner finalized every element of this task itself (records/layout.py `ended_marker`): nothing to do
[ -n "${MACE_MANIFEST:-}" ] && [ -e "${MACE_MANIFEST%/*}/ended/${SLURM_JOB_ID:-x}.${SLURM_RESTART_COUNT:-0}" ] && exit 0

{
    deadline=${MACE_EPILOGUE_DEADLINE:-60}
    case "$deadline" in ''|*[!0-9.]*) deadline=60 ;; esac
    limit=$(( ${deadline%.*} + 30 ))
    if [ -n "${MACE_EPILOGUE:-}" ] && [ -x "${MACE_EPILOGUE}" ]; then
        cmd=("$MACE_EPILOGUE")
    elif command -v mace-epilogue >/dev/null 2>&1; then
        cmd=(mace-epilogue)
    elif [ -n "${MACE_PYTHON:-}" ] && [ -x "${MACE_PYTHON}" ]; then
        cmd=("$MACE_PYTHON" -m mace_hpc.cli.main epilogue)
    else
        cmd=(python3 -m mace_hpc.cli.main epilogue)
    fi
    timeout -k 5 "$limit" "${cmd[@]}" --ended --no-retry --quiet </dev/null
} >/dev/null 2>&1
exit 0
