#!/bin/bash
# Your own PBS array script for a mace-hpc plan (instead of `mace-submit --backend pbs`).
#
#   mace-submit plan.json --dry-run        # creates contexts + manifest, prints its path
#   qsub -v MACE_MANIFEST=/path/to/manifest.json jobscripts/pbs-array.sh
#
# The element runner reads its index from PBS_ARRAY_INDEX (PBS Pro / OpenPBS) or PBS_ARRAYID
# (Torque), adds MACE_INDEX_OFFSET (default 0) and resolves the workflow id from the manifest.
# Keep exactly ONE of the two array lines below (each dialect rejects the other's option):
#
# --- PBS Pro / OpenPBS: one range X-Y[:step]; "%N" (max running subjobs) needs OpenPBS >= 22.05.
#PBS -J 0-99%8
#PBS -l select=1:ncpus=1:mem=4gb
# --- Torque: any list, "%N" is the slot limit; resources use nodes/ppn.
##PBS -t 0-99%8
##PBS -l nodes=1:ppn=1,mem=4gb
#
#PBS -N mace-array
#PBS -l walltime=02:00:00
#PBS -j oe
#PBS -r y
# Never -V: export only what the element needs (-v on the qsub line or below).
# Jobs start in $HOME; PBS_O_WORKDIR is where you ran qsub.

set -u
cd "${PBS_O_WORKDIR:-$PWD}" || exit 1
: "${MACE_MANIFEST:?pass -v MACE_MANIFEST=/path/to/manifest.json to qsub}"
export MACE_INDEX_OFFSET="${MACE_INDEX_OFFSET:-0}"

# module load python   # your site's setup

# Signal the runner 120 s before the walltime kill so its epilogue can finish (PBS has no --signal).
# Keep in sync with -l walltime above (02:00:00 = 7200 s).
( sleep $((7200 - 120)) && kill -s USR2 $$ ) >/dev/null 2>&1 &
exec mace run-element "$MACE_MANIFEST"
