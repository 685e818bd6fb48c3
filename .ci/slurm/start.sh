#!/usr/bin/env bash
# .ci/slurm/start.sh - install (if missing), configure and start a REAL single-node Slurm cluster
# (Debian 12, Slurm 22.05) without systemd, for CI and for newcomers. Run as root.
#
# Idempotent: rerunning with the same settings leaves a healthy cluster alone; a changed setting
# (CPUs, hooks, array size) rewrites /etc/slurm/slurm.conf and restarts slurmctld + slurmd so both
# daemons see the same file (job state survives in StateSaveLocation). Exits 0 once the node is
# idle and (with accounting) `sacct` answers; prints how long that took.
#
# Daemons: munged, mariadbd + slurmdbd (accounting, so `sacct` works), slurmctld, slurmd.
# Stop with `.ci/slurm/stop.sh` (`--purge` also wipes job state and the accounting DB).
#
# Environment knobs (all optional):
#   LOCAL_SLURM_CPUS=8               CPUs declared on the node (SlurmdParameters=config_overrides).
#                                    More than the real count on purpose: several array elements
#                                    then run at once, so the %N throttle is observable in tests.
#   LOCAL_SLURM_MAX_ARRAY_SIZE=1001  MaxArraySize. Array task ids must be < this, so a plan with
#                                    more elements than this is split into several arrays (chunks
#                                    with an index offset); 1001 is a common site value and keeps
#                                    chunking real: a 10,000-element plan becomes 10 arrays.
#   LOCAL_SLURM_MAX_JOB_COUNT=100000 MaxJobCount. Every array task counts, and a cancelled or finished
#                                    task stays a record for MinJobAge (300 s): a 10,000-element
#                                    benchmark submitted and cancelled twice needs > 20,000.
#   LOCAL_SLURM_ACCOUNTING=1         1: mariadb + slurmdbd (sacct works). 0: no accounting.
#   LOCAL_SLURM_TASK_EPILOG=/path    TaskEpilog (job user, sees the job env incl. --export'ed MACE_*)
#   LOCAL_SLURM_EPILOG=/path         node Epilog (root, no job env; a failing one drains the node)
#   LOCAL_SLURM_EPILOG_SLURMCTLD=/path  controller epilog (SlurmUser; has SLURM_ARRAY_*)
#   LOCAL_SLURM_PROLOG=/path         node Prolog (PrologFlags=Alloc)
#   LOCAL_SLURM_TIMEOUT=60           seconds to wait for each daemon
# Hook paths must be absolute, executable files readable by the user that runs them.
set -euo pipefail

CPUS_WANTED="${LOCAL_SLURM_CPUS:-8}"
MAX_ARRAY_SIZE="${LOCAL_SLURM_MAX_ARRAY_SIZE:-1001}"
MAX_JOB_COUNT="${LOCAL_SLURM_MAX_JOB_COUNT:-100000}"
ACCOUNTING="${LOCAL_SLURM_ACCOUNTING:-1}"
TIMEOUT="${LOCAL_SLURM_TIMEOUT:-60}"
CONF_DIR=/etc/slurm
LOG_DIR=/var/log/slurm
DB_PASS=slurmdbpass   # throwaway DB bound to 127.0.0.1 only

log() { echo "[mace-slurm start] $*" >&2; }
die() {
    log "ERROR: $*"
    for f in $LOG_DIR/slurmctld.log $LOG_DIR/slurmd.log $LOG_DIR/slurmdbd.log /var/log/mariadbd-local.log; do
        [ -f "$f" ] && { echo "--- tail $f" >&2; tail -n 15 "$f" >&2; }
    done
    exit 1
}
bad() { log "ERROR: $*"; exit 2; }   # a bad setting: nothing was changed, no logs to show
[ "$(id -u)" = 0 ] || bad "must run as root (it installs packages and starts daemons)"
case "$CPUS_WANTED" in ''|*[!0-9]*) bad "LOCAL_SLURM_CPUS must be a positive integer" ;; esac
case "$MAX_JOB_COUNT" in ''|*[!0-9]*) bad "LOCAL_SLURM_MAX_JOB_COUNT must be a positive integer" ;; esac
case "$MAX_ARRAY_SIZE" in ''|*[!0-9]*) bad "LOCAL_SLURM_MAX_ARRAY_SIZE must be a positive integer" ;; esac

pid_alive() { # pidfile [comm]: the process in the pidfile exists, is not a zombie, has that name
    local p
    [ -s "$1" ] || return 1
    p=$(cat "$1" 2>/dev/null) || return 1
    [ -n "$p" ] && [ -d "/proc/$p" ] || return 1
    [ "$(awk '{print $3}' "/proc/$p/stat" 2>/dev/null)" != Z ] || return 1
    [ -z "${2:-}" ] || grep -q "$2" "/proc/$p/comm" 2>/dev/null
}
wait_for() { # description, command...
    local what=$1; shift
    local end=$((SECONDS + TIMEOUT))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $end ] || die "timed out after ${TIMEOUT}s waiting for $what"
        sleep 0.2
    done
}
stop_pid() { # pidfile: SIGTERM, wait up to 10 s, then SIGKILL (only the pid in the file)
    pid_alive "$1" || return 0
    local p; p=$(cat "$1"); kill "$p" 2>/dev/null || true
    for _ in $(seq 100); do
        [ -d "/proc/$p" ] && [ "$(awk '{print $3}' "/proc/$p/stat" 2>/dev/null)" != Z ] || return 0
        sleep 0.1
    done
    kill -9 "$p" 2>/dev/null || true
}

T0=$(date +%s.%N)

# ---------------------------------------------------------------- 1. packages
PKGS=(slurmctld slurmd slurm-client munge)
[ "$ACCOUNTING" = 1 ] && PKGS+=(slurmdbd mariadb-server)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq </dev/null >/dev/null || die "apt-get update failed"
    # without systemd the packages' scripts start nothing; we start the daemons below
    apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null >/tmp/mace-slurm-apt.log 2>&1 \
        || { tail -20 /tmp/mace-slurm-apt.log >&2; die "apt-get install failed"; }
fi

# ---------------------------------------------------------------- 2. host, dirs, munge key
HOST=$(hostname -s)
getent hosts "$HOST" >/dev/null || echo "127.0.0.1 $HOST" >> /etc/hosts
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /etc/munge
install -d -o slurm -g slurm -m 0755 /var/spool/slurmctld $LOG_DIR
install -d -o root  -g root  -m 0755 /var/spool/slurmd $CONF_DIR
if [ ! -s /etc/munge/munge.key ]; then
    log "creating munge key"
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
fi
chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key

# ---------------------------------------------------------------- 3. slurm.conf
read -r REAL_CPUS REAL_MEM < <(slurmd -C | head -1 | sed -E 's/.*CPUs=([0-9]+).*RealMemory=([0-9]+).*/\1 \2/')
MEM=$((REAL_MEM * 9 / 10))   # headroom: never drained for "Low RealMemory"

hooks=""
add_hook() { # SlurmKey, path from env (empty: none)
    [ -n "$2" ] || return 0
    case "$2" in /*) ;; *) bad "$1 path must be absolute: $2" ;; esac
    [ -f "$2" ] && [ -x "$2" ] || bad "$1 script $2 is missing or not executable"
    hooks+="$1=$2"$'\n'
}
add_hook Prolog          "${LOCAL_SLURM_PROLOG:-}"
add_hook Epilog          "${LOCAL_SLURM_EPILOG:-}"
add_hook EpilogSlurmctld "${LOCAL_SLURM_EPILOG_SLURMCTLD:-}"
add_hook TaskEpilog      "${LOCAL_SLURM_TASK_EPILOG:-}"

if [ "$ACCOUNTING" = 1 ]; then
    acct="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux
# sampled every 2 s; a step above its --mem is killed at the next sample (no cgroups here), so an
# element that runs out of memory ends OUT_OF_MEMORY as on a production cluster (issue 10's retries)
JobAcctGatherFrequency=2
JobAcctGatherParams=OverMemoryKill"
else
    acct="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
fi
overrides=""
[ "$CPUS_WANTED" != "$REAL_CPUS" ] && overrides="SlurmdParameters=config_overrides"

NEW_CONF=$(cat <<CONF
# generated by mace-hpc .ci/slurm/start.sh - single-node test cluster, no systemd, no cgroups
ClusterName=localcluster
SlurmctldHost=${HOST}(127.0.0.1)
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# A requeued job waits cred_expire seconds before it may start again (its old credential must
# expire first; starting earlier fails with 'Job credential revoked'). 120 s by default; short here
# so the requeue tests do not wait two minutes.
AuthInfo=cred_expire=10
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=${LOG_DIR}/slurmctld.log
SlurmdLogFile=${LOG_DIR}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
MpiDefault=none
SwitchType=switch/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
# memory is a consumable resource so a job's --mem is its step's limit (OverMemoryKill above);
# a job that asks for none gets 1 GB per CPU
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
SchedulerType=sched/backfill
# a small array would otherwise wait 10-20 s for the next backfill pass
SchedulerParameters=bf_interval=1,sched_min_interval=100000,batch_sched_delay=0
ReturnToService=2
MinJobAge=300
MaxJobCount=${MAX_JOB_COUNT}
MaxArraySize=${MAX_ARRAY_SIZE}
${acct}
JobCompType=jobcomp/filetxt
JobCompLoc=${LOG_DIR}/jobcomp.log
PrologFlags=Alloc
${hooks}${overrides}
NodeName=${HOST} NodeAddr=127.0.0.1 CPUs=${CPUS_WANTED} RealMemory=${MEM} State=UNKNOWN
PartitionName=debug Nodes=${HOST} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
)
conf_changed=0
if [ ! -f $CONF_DIR/slurm.conf ] || [ "$(cat $CONF_DIR/slurm.conf)" != "$NEW_CONF" ]; then
    printf '%s\n' "$NEW_CONF" > $CONF_DIR/slurm.conf.new
    chmod 0644 $CONF_DIR/slurm.conf.new
    mv -f $CONF_DIR/slurm.conf.new $CONF_DIR/slurm.conf
    conf_changed=1
    log "wrote $CONF_DIR/slurm.conf (CPUs=$CPUS_WANTED of $REAL_CPUS real, MaxArraySize=$MAX_ARRAY_SIZE)"
fi

# ---------------------------------------------------------------- 4. munged
if ! pid_alive /run/munge/munged.pid munged; then
    log "starting munged"
    runuser -u munge -- /usr/sbin/munged </dev/null >/dev/null 2>&1 || die "munged failed to start"
fi
wait_for "munge round-trip" bash -c 'munge -n | unmunge'

# ---------------------------------------------------------------- 5. mariadb + slurmdbd
if [ "$ACCOUNTING" = 1 ]; then
    install -d -o mysql -g root -m 0755 /run/mysqld
    [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null 2>&1 \
        || die "mariadb-install-db failed"
    if ! mariadb-admin ping >/dev/null 2>&1; then
        log "starting mariadbd"
        # fully detached, so a caller reading our stdout (CI) never waits on it
        setsid /usr/sbin/mariadbd --user=mysql --bind-address=127.0.0.1 \
            --pid-file=/run/mysqld/mysqld.pid --log-error=/var/log/mariadbd-local.log \
            </dev/null >/dev/null 2>&1 &
    fi
    wait_for "mariadbd" mariadb-admin ping
    mariadb -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
                CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '${DB_PASS}';
                GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;" || die "DB setup failed"
    DBD_CONF="AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=slurm
DebugLevel=info
LogFile=${LOG_DIR}/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=${DB_PASS}"
    if [ ! -f $CONF_DIR/slurmdbd.conf ] || [ "$(cat $CONF_DIR/slurmdbd.conf)" != "$DBD_CONF" ]; then
        (umask 077; printf '%s\n' "$DBD_CONF" > $CONF_DIR/slurmdbd.conf)
        stop_pid /run/slurmdbd.pid
    fi
    chown slurm:slurm $CONF_DIR/slurmdbd.conf; chmod 0600 $CONF_DIR/slurmdbd.conf
    if ! pid_alive /run/slurmdbd.pid slurmdbd; then
        log "starting slurmdbd"
        /usr/sbin/slurmdbd </dev/null >/dev/null 2>&1 || die "slurmdbd failed to start"
    fi
    wait_for "slurmdbd port 6819" bash -c 'exec 3<>/dev/tcp/127.0.0.1/6819'
fi

# ---------------------------------------------------------------- 6. slurmctld + slurmd
if [ $conf_changed = 1 ]; then   # both daemons must read the same slurm.conf
    stop_pid /run/slurmd.pid; stop_pid /run/slurmctld.pid
fi
if ! pid_alive /run/slurmctld.pid slurmctld; then
    log "starting slurmctld"
    /usr/sbin/slurmctld </dev/null >/dev/null 2>&1 || die "slurmctld failed to start"
fi
wait_for "slurmctld" scontrol ping
if ! pid_alive /run/slurmd.pid slurmd; then
    log "starting slurmd"
    /usr/sbin/slurmd </dev/null >/dev/null 2>&1 || die "slurmd failed to start"
fi

# ---------------------------------------------------------------- 7. ready: node idle, sacct answers
node_ready() {
    local st; st=$(sinfo -h -n "$HOST" -o '%t' 2>/dev/null) || return 1
    case "$st" in
        idle|mix|alloc) return 0 ;;
        down*|drain*|drng*|fail*) scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1; return 1 ;;
        *) return 1 ;;
    esac
}
wait_for "node $HOST idle" node_ready
[ "$ACCOUNTING" = 1 ] && wait_for "sacct" sacct -n -X -S now-1minutes
log "cluster up in $(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')s:" \
    "$(sinfo -h -o '%P %a %D %t %N CPUs=%c') MaxArraySize=$MAX_ARRAY_SIZE${hooks:+ hooks: $(echo "$hooks" | tr '\n' ' ')}"
