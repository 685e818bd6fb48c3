#!/bin/bash
#PBS -N sweep
#PBS -q workq
#PBS -l select=1:ncpus=1
#PBS -l walltime=00:30:00
#PBS -J 1-7:2%2
#PBS -j oe
#PBS -o /scratch/mace/sub/sweep@100.^array_index^.log
#PBS -v "MACE_INDEX_OFFSET=100,MACE_MANIFEST=/scratch/mace/sub/manifest.json,MACE_ISOLATION_MODE=isolated,MACE_ARRAY_INDICES='1,3,7'"
#PBS -W depend=afterany:55[].server

cd /scratch/mace/sub || exit 1

export MACE_INDEX_OFFSET=100
export MACE_NOTE='a b,c'
# -J takes one range; subjobs the submission did not list exit 0 at once (see mace_hpc/schedulers/pbs/)
mace_listed() {
    local IFS=, r
    for r in $MACE_ARRAY_INDICES; do
        case $r in
            *-*) [ "$1" -ge "${r%-*}" ] && [ "$1" -le "${r#*-}" ] && return 0 ;;
            *) [ "$1" -eq "$r" ] && return 0 ;;
        esac
    done
    return 1
}
mace_listed "$PBS_ARRAY_INDEX" || exit 0
( sleep 1740 && kill -s USR2 $$ ) >/dev/null 2>&1 &
exec python3 -m mace_hpc.element.run --manifest /scratch/mace/sub/manifest.json
