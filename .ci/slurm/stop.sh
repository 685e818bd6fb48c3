#!/usr/bin/env bash
# .ci/slurm/stop.sh - stop the single-node cluster started by .ci/slurm/start.sh.
# Kills only the daemons named in their own pidfiles (never by name), in dependency order.
#   --purge   also wipe Slurm state (queue, job ids), the job-completion log and the accounting
#             DB, so the next start begins from job id 1 with an empty history.
set -uo pipefail
PURGE=0
case "${1:-}" in
    --purge) PURGE=1 ;;
    "") ;;
    *) echo "usage: $0 [--purge]" >&2; exit 2 ;;
esac
[ "$(id -u)" = 0 ] || { echo "[mace-slurm stop] must run as root" >&2; exit 1; }
log() { echo "[mace-slurm stop] $*" >&2; }

stop_pid() { # name pidfile
    local name=$1 pf=$2 p
    [ -s "$pf" ] || { log "$name: no pidfile"; return 0; }
    p=$(cat "$pf")
    if [ -z "$p" ] || [ ! -d "/proc/$p" ] || ! grep -q "$name" "/proc/$p/comm" 2>/dev/null; then
        log "$name: not running"; rm -f "$pf"; return 0
    fi
    kill "$p"
    for _ in $(seq 150); do
        # gone, or a zombie waiting to be reaped by PID 1
        if [ ! -d "/proc/$p" ] || [ "$(awk '{print $3}' "/proc/$p/stat" 2>/dev/null)" = Z ]; then
            log "$name ($p) stopped"; rm -f "$pf"; return 0
        fi
        sleep 0.1
    done
    log "$name ($p) ignored SIGTERM for 15s, sending SIGKILL"; kill -9 "$p" 2>/dev/null; rm -f "$pf"
}

stop_pid slurmd    /run/slurmd.pid
stop_pid slurmctld /run/slurmctld.pid
stop_pid slurmdbd  /run/slurmdbd.pid
if [ $PURGE = 1 ] && mariadb-admin ping >/dev/null 2>&1; then
    mariadb -e 'DROP DATABASE IF EXISTS slurm_acct_db' && log "dropped accounting DB slurm_acct_db"
fi
stop_pid mariadbd  /run/mysqld/mysqld.pid
stop_pid munged    /run/munge/munged.pid

if [ $PURGE = 1 ]; then
    rm -rf /var/spool/slurmctld/* /var/spool/slurmd/* /var/log/slurm/jobcomp.log
    log "purged slurm state (queue, job ids, jobcomp log)"
fi
exit 0
