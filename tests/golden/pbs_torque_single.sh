#!/bin/bash
#PBS -N sweep-merge
#PBS -l nodes=1:ppn=1
#PBS -l walltime=00:20:00
#PBS -j oe
#PBS -o /scratch/mace/sub/sweep-merge.log
#PBS -v "MACE_MANIFEST=/scratch/mace/sub/manifest.json,MACE_ISOLATION_MODE=isolated"
#PBS -W depend=afteranyarray:55[].server

cd /scratch/mace/sub || exit 1

export MACE_NOTE='a b,c'
( sleep 1080 && kill -s USR2 $$ ) >/dev/null 2>&1 &
exec python3 -m mace_hpc.element.run --manifest /scratch/mace/sub/manifest.json
