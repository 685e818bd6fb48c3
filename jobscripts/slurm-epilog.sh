#!/bin/bash
# mace-hpc SLURM site Epilog: finalize a mace-hpc array element when its job leaves the node.
#
# Install (slurm.conf on every compute node, then `scontrol reconfigure`):
#     Epilog=/opt/mace-hpc/jobscripts/slurm-epilog.sh
# and point MACE_EPILOGUE below (or in /etc/mace-hpc/epilogue.env, root-owned) at the mace-epilogue
# of an installation every user can read, e.g. /opt/mace-hpc/venv/bin/mace-epilogue.
#
# What it sees: runs as root (slurmd), with SLURM_JOB_ID, SLURM_JOB_UID, SLURM_JOB_USER but NOT
# the job's environment nor SLURM_ARRAY_*. So: one `scontrol show job -o` call decides whether
# this is a mace-hpc element (an array task whose batch script lives in a `.submissions/<plan>/`
# directory); other jobs cost that one call and nothing else. For ours, mace-epilogue drops
# to the job's user (setuid/setgid + the user's groups, clean environment) before reading any
# file, finds the manifest and index from the same scontrol data, and finalizes the element.
#
# It ALWAYS exits 0 (a failing Epilog drains the node) and is bounded by `timeout`. Problems
# are recorded as PENDING_MERGE in the element's state file, for the backstop job / `mace merge`.

# slurmd gives the Epilog no user-controlled environment, so these defaults are the admin's
MACE_EPILOGUE=${MACE_EPILOGUE:-/usr/local/bin/mace-epilogue}
MACE_EPILOGUE_TIMEOUT=${MACE_EPILOGUE_TIMEOUT:-120}
LOG=${MACE_EPILOG_LOG:-/dev/null}      # e.g. /var/log/slurm/mace-epilog.log while debugging
if [ -f /etc/mace-hpc/epilogue.env ] && [ "$(stat -c %u /etc/mace-hpc/epilogue.env)" = 0 ]; then
    . /etc/mace-hpc/epilogue.env
fi

{
    [ -n "${SLURM_JOB_ID:-}" ] || exit 0
    case "$SLURM_JOB_ID" in *[!0-9]*) exit 0 ;; esac
    info=$(timeout 20 scontrol show job -o "$SLURM_JOB_ID" 2>/dev/null) || exit 0
    case "$info" in *" ArrayTaskId="*) ;; *) exit 0 ;; esac          # not an array element
    case "$info" in *"/.submissions/"*) ;; *) exit 0 ;; esac         # not submitted by mace-submit
    [ -x "$MACE_EPILOGUE" ] || { echo "mace-epilog: $MACE_EPILOGUE not executable"; exit 0; }
    timeout -k 5 "$MACE_EPILOGUE_TIMEOUT" "$MACE_EPILOGUE" --no-retry --quiet </dev/null
} >>"$LOG" 2>&1
exit 0
