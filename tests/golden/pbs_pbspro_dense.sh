#!/bin/bash
#PBS -N sweep
#PBS -q workq
#PBS -A proj42
#PBS -l select=1:ncpus=2:mem=4gb
#PBS -l walltime=01:30:00
#PBS -J 0-4%2
#PBS -j oe
#PBS -o /scratch/mace/sub/sweep.^array_index^.log
#PBS -v "MACE_INDEX_OFFSET=0,MACE_MANIFEST=/scratch/mace/sub/manifest.json,MACE_ISOLATION_MODE=isolated"
#PBS -r y

cd /scratch/mace/sub || exit 1

# setup
module load python/3.11

export MACE_INDEX_OFFSET=0
export MACE_NOTE='a b,c'
( sleep 5280 && kill -s USR2 $$ ) >/dev/null 2>&1 &
exec python3 -m mace_hpc.element.run --manifest /scratch/mace/sub/manifest.json
