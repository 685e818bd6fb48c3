#!/bin/bash
# mace-hpc PBS epilogue (PBS Pro / OpenPBS and Torque): finalize a mace-hpc array subjob.
#
# Install on every execution host (MoM), owned by root, mode 0700 (MoM refuses anything else):
#     PBS Pro / OpenPBS: cp pbs-epilogue.sh $PBS_HOME/mom_priv/epilogue
#     Torque:            cp pbs-epilogue.sh /var/spool/torque/mom_priv/epilogue
# (If a site epilogue exists already, call this script from it with the same arguments.)
# Set MACE_EPILOGUE below to a mace-epilogue every user can run.
#
# What it sees: MoM runs it as root, once per subjob (never for the array parent), in the job
# owner's $HOME, with next to no environment (OpenPBS: PATH=/bin:/usr/bin and PBS_JOBDIR only; no
# PBS_JOBID, no -v variable) and the arguments
#     $1 job id (subjob: 123[4].server, Torque old style 123-4)  $2 user  $3 group  $4 job name
#     $5 session id  $6 requested resources  $7 used resources  $8 queue  $9 account  $10 exit status
# Only array subjobs are considered. mace-epilogue drops to user $2 before reading anything, asks
# `qstat -f` for the job's Variable_List (MACE_MANIFEST, MACE_INDEX_OFFSET) or searches the
# user's submission records, and finalizes the element (merge | archive | keep).
#
# It ALWAYS exits 0: a non-zero epilogue makes MoM requeue the job or mark the host down.
# Problems are recorded as PENDING_MERGE in the element's state file for `mace merge`.

# MoM gives the epilogue an empty environment, so these defaults are the admin's
MACE_EPILOGUE=${MACE_EPILOGUE:-/usr/local/bin/mace-epilogue}
MACE_EPILOGUE_TIMEOUT=${MACE_EPILOGUE_TIMEOUT:-120}
LOG=${MACE_EPILOG_LOG:-/dev/null}
# mace-epilogue asks `qstat -f` for the job's Variable_List, but OpenPBS's mom gives its epilogue
# only PATH=/bin:/usr/bin while qstat lives in $PBS_EXEC/bin (seen on a real OpenPBS 23.06):
# without this the element is "not a mace-hpc element" unless it is under the default scratch root.
PBS_EXEC=$(sed -n 's/^PBS_EXEC=//p' "${PBS_CONF_FILE:-/etc/pbs.conf}" 2>/dev/null | tail -1)
export PATH="${PBS_EXEC:+$PBS_EXEC/bin:}/usr/local/bin:${PATH:-/usr/bin:/bin}"

{
    job=${1:-}
    user=${2:-}
    case "$job" in *\[[0-9]*\]*|[0-9]*-[0-9]*) ;; *) exit 0 ;; esac     # array subjobs only
    [ -x "$MACE_EPILOGUE" ] || exit 0
    if [ "$(id -u)" = 0 ]; then
        [ -n "$user" ] || exit 0
        timeout -k 5 "$MACE_EPILOGUE_TIMEOUT" "$MACE_EPILOGUE" --pbs-job "$job" --user "$user" --no-retry --quiet </dev/null
    else   # Torque epilogue.user: already the job's user
        timeout -k 5 "$MACE_EPILOGUE_TIMEOUT" "$MACE_EPILOGUE" --pbs-job "$job" --ended --no-retry --quiet </dev/null
    fi
} >>"$LOG" 2>&1
exit 0
