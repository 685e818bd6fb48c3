#!/usr/bin/env bash
# .ci/pbs/stop.sh - stop the OpenPBS started by .ci/pbs/start.sh and remove its network namespace.
# Only PBS commands and the pids in the daemons' own lock files are used (never a kill by name):
#   qterm -t immediate (the server kills running jobs and stops its datastore), pbs_dataservice stop,
#   SIGTERM to mom / sched / comm, SIGKILL to job processes still alive in the namespace.
# Leaves /opt/pbs (the build), /opt/mace-pbs (the job python) and /var/spool/pbs (history);
#   --purge   also wipes /var/spool/pbs, so the next start begins with job id 0 and no history.
set -uo pipefail
PURGE=0
case "${1:-}" in
    --purge) PURGE=1 ;;
    "") ;;
    *) echo "usage: $0 [--purge]" >&2; exit 2 ;;
esac
NS=${MACE_PBS_NETNS:-mace-pbs}
PBS_EXEC=/opt/pbs
PBS_HOME=/var/spool/pbs
export PATH="$PBS_EXEC/bin:$PBS_EXEC/sbin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
log() { echo "[mace-pbs stop] $*" >&2; }
[ "$(id -u)" = 0 ] || { log "must run as root"; exit 1; }
T0=$SECONDS

lockpid() { # lockfile name -> the pid in it if that daemon is alive
    local pid
    pid=$(head -1 "$1" 2>/dev/null | tr -dc 0-9)
    [ -n "$pid" ] && tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -q "$2" && echo "$pid"
}
gone() { # pid seconds
    local _
    for _ in $(seq $(($2 * 5))); do
        [ -d "/proc/$1" ] && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ] || return 0
        sleep 0.2
    done
    return 1
}
stop_pid() { # name pid
    [ -n "$2" ] || return 0
    kill -TERM "$2" 2>/dev/null
    if gone "$2" 30; then log "stopped $1 ($2)"; else log "$1 ($2) ignored SIGTERM, SIGKILL"; kill -KILL "$2" 2>/dev/null; fi
}

if ip netns list | grep -qw "$NS"; then
    spid=$(lockpid "$PBS_HOME/server_priv/server.lock" pbs_server)
    if [ -n "$spid" ]; then
        timeout 60 ip netns exec "$NS" qterm -t immediate >/dev/null 2>&1 || log "qterm failed"
        gone "$spid" 60 && log "stopped pbs_server ($spid)" || stop_pid pbs_server "$spid"
    fi
    if [ -f /etc/pbs.conf ] && ip netns exec "$NS" "$PBS_EXEC/sbin/pbs_dataservice" status >/dev/null 2>&1; then
        ip netns exec "$NS" "$PBS_EXEC/sbin/pbs_dataservice" stop >/dev/null 2>&1 && log "stopped the datastore"
    fi
    mpid=$(lockpid "$PBS_HOME/mom_priv/mom.lock" pbs_mom)
    schpid=$(lockpid "$PBS_HOME/sched_priv/sched.lock" pbs_sched)
    cpid=$(lockpid "$PBS_HOME/server_priv/comm.lock" pbs_comm)
    for p in $mpid $schpid $cpid; do kill -TERM "$p" 2>/dev/null; done
    stop_pid pbs_mom "$mpid"; stop_pid pbs_sched "$schpid"; stop_pid pbs_comm "$cpid"
    # a SIGTERM'd mom leaves its jobs running on Linux: kill what is left in our namespace
    left=$(ip netns pids "$NS" 2>/dev/null | tr '\n' ' ')
    if [ -n "${left// /}" ]; then log "killing leftover processes in $NS: $left"; kill -KILL $left 2>/dev/null; fi
    ip netns del "$NS" && log "removed namespace $NS"
fi
rm -rf "/etc/netns/$NS" /run/mace-pbs
if [ $PURGE = 1 ]; then rm -rf "$PBS_HOME" && log "purged $PBS_HOME"; fi
log "stopped in $((SECONDS - T0)) s"
exit 0
