#!/usr/bin/env bash
# .ci/pbs/start.sh - build (once per OpenPBS commit), configure and start a REAL single-node OpenPBS
# (23.06: pbs_server + PostgreSQL datastore, pbs_sched, pbs_comm, pbs_mom) inside its own network
# namespace, without systemd, for CI and for newcomers. Run as root. Modelled on what was verified in
# ../shared/pbs-reference (README there: pitfalls, timings, what the real server does).
#
# 1. build   OpenPBS from <repo>/../shared/pbs-reference/openpbs-src.tar.gz into /opt/pbs; skipped
#            when /opt/pbs/.mace-openpbs-commit names the tarball's commit (OPENPBS_COMMIT beside it)
# 2. python  /opt/mace-pbs/venv: Debian's python3 + this repo's runtime dependencies (rebuilt when
#            they change) + this checkout of mace_hpc (reinstalled every start). The job user cannot
#            run root's python (/root is 0700), so jobs, mace-submit and the epilogue use this one.
# 3. netns   namespace $MACE_PBS_NETNS (mace-pbs) with a TEST-NET address on its own `lo`; the host
#            name resolves to it through /etc/netns/<ns>/hosts (bind-mounted by `ip netns exec`).
#            OpenPBS ignores 127.x addresses; the machine's interfaces and /etc/hosts are not touched.
# 4. server  /etc/pbs.conf, pbs_postinstall + pbs_habitat (first time), the four daemons in the init
#            script's order, qmgr settings (job history, flatuid, node ncpus), mom polling 2-5 s,
#            jobscripts/pbs-epilogue.sh installed as the mom's epilogue (root 0700, as an admin would)
# 5. user    $MACE_PBS_USER (pbsuser): PBS refuses jobs of root
# Writes /run/mace-pbs/server.env (what the tests read) and prints the seconds each part took.
# Every PBS client command must run inside the namespace: `ip netns exec mace-pbs qstat ...`.
# Idempotent: a running server is left alone. Stop with .ci/pbs/stop.sh.
#
# Environment knobs (all optional):
#   MACE_PBS_REFERENCE=DIR   where openpbs-src.tar.gz + OPENPBS_COMMIT are (default ../shared/pbs-reference)
#   MACE_PBS_NETNS=mace-pbs  namespace name      MACE_PBS_ADDR=192.0.2.10  its address (TEST-NET-1)
#   MACE_PBS_USER=pbsuser    the job user        MACE_PBS_NCPUS=8   node ncpus (> cores: throttles show)
#   MACE_PBS_MAKE_JOBS=2     make -j             MACE_PBS_WAIT=120  seconds to wait for each daemon
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
REF=${MACE_PBS_REFERENCE:-$(dirname "$REPO")/shared/pbs-reference}
PBS_EXEC=/opt/pbs
PBS_HOME=/var/spool/pbs
TOOLS=/opt/mace-pbs
VENV=$TOOLS/venv
BUILD_DIR=/var/tmp/mace-openpbs-build
RUN_DIR=/run/mace-pbs
NS=${MACE_PBS_NETNS:-mace-pbs}
ADDR=${MACE_PBS_ADDR:-192.0.2.10}
PBS_USER=${MACE_PBS_USER:-pbsuser}
NCPUS=${MACE_PBS_NCPUS:-8}
JOBS=${MACE_PBS_MAKE_JOBS:-2}
WAIT=${MACE_PBS_WAIT:-120}
HOST=$(hostname | cut -d. -f1)
# the system python and tools first: a pyenv python3 would be linked into pbs_python otherwise
export PATH="$PBS_EXEC/bin:$PBS_EXEC/sbin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
export DEBIAN_FRONTEND=noninteractive
umask 022

log() { echo "[mace-pbs start] $*" >&2; }
die() {
    log "ERROR: $*"
    for f in "$PBS_HOME"/server_logs/* "$PBS_HOME"/mom_logs/* "$PBS_HOME"/comm_logs/*; do
        [ -f "$f" ] && { echo "--- tail $f" >&2; tail -n 8 "$f" >&2; }
    done
    exit 1
}
took() { echo "[mace-pbs start] $1: $((SECONDS - $2)) s" >&2; }
inns() { ip netns exec "$NS" "$@"; }
[ "$(id -u)" = 0 ] || { log "must run as root (it builds into /opt, starts daemons, creates a namespace)"; exit 2; }
[ -f "$REF/openpbs-src.tar.gz" ] && [ -f "$REF/OPENPBS_COMMIT" ] \
    || { log "no OpenPBS source: $REF/openpbs-src.tar.gz (set MACE_PBS_REFERENCE)"; exit 2; }
COMMIT=$(tr -dc 0-9a-f <"$REF/OPENPBS_COMMIT")

# ---------------------------------------------------------------------------------------- packages
BUILD_PKGS="gcc make libtool libhwloc-dev libx11-dev libxt-dev libedit-dev libical-dev libncurses-dev
  perl postgresql-server-dev-all postgresql-contrib python3-dev tcl-dev tk-dev swig libexpat1-dev
  libssl-dev libxext-dev libxft-dev autoconf automake g++ libcjson-dev"
# libpq-dev at run time too: pbs_db_env finds initdb/pg_ctl through `pg_config --bindir`
RUN_PKGS="expat libedit2 postgresql postgresql-contrib python3 python3-venv sendmail-bin sudo tcl tk
  libical3 libcjson1 libpq-dev hostname procps iproute2"
apt_install() {
    local p missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} = 0 ] && return 0
    log "apt-get install ${missing[*]}"
    mkdir -p "$BUILD_DIR"
    apt-get update -qq </dev/null >"$BUILD_DIR/apt.log" 2>&1 || { tail -20 "$BUILD_DIR/apt.log" >&2; die "apt-get update failed"; }
    apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null >>"$BUILD_DIR/apt.log" 2>&1 \
        || { tail -20 "$BUILD_DIR/apt.log" >&2; die "apt-get install failed"; }
}

# ---------------------------------------------------------------------------------------- 1. build
build() {
    local t0=$SECONDS src=$BUILD_DIR/openpbs
    if [ "$(cat "$PBS_EXEC/.mace-openpbs-commit" 2>/dev/null)" = "$COMMIT" ] \
        && "$PBS_EXEC/bin/qsub" --version 2>/dev/null | grep -q '^pbs_version'; then
        # shellcheck disable=SC2086
        apt_install $RUN_PKGS
        log "OpenPBS $COMMIT already in $PBS_EXEC: build skipped"
        return 0
    fi
    # shellcheck disable=SC2086
    apt_install $BUILD_PKGS $RUN_PKGS
    log "building OpenPBS $COMMIT (logs in $BUILD_DIR)"
    rm -rf "$src"
    mkdir -p "$BUILD_DIR"
    tar -xzf "$REF/openpbs-src.tar.gz" -C "$BUILD_DIR"
    [ -d "$src" ] || die "the tarball did not unpack into $src"
    (
        cd "$src"
        ./autogen.sh >"$BUILD_DIR/autogen.log" 2>&1 || { tail -30 "$BUILD_DIR/autogen.log" >&2; exit 1; }
        ./configure --prefix="$PBS_EXEC" PYTHON=/usr/bin/python3 >"$BUILD_DIR/configure.log" 2>&1 \
            || { tail -30 "$BUILD_DIR/configure.log" >&2; exit 1; }
        make -j"$JOBS" >"$BUILD_DIR/make.log" 2>&1 || { tail -40 "$BUILD_DIR/make.log" >&2; exit 1; }
        make install >"$BUILD_DIR/install.log" 2>&1 || { tail -40 "$BUILD_DIR/install.log" >&2; exit 1; }
    ) || die "OpenPBS build failed"
    chmod 4755 "$PBS_EXEC/sbin/pbs_iff" "$PBS_EXEC/sbin/pbs_rcp"   # INSTALL step 12
    "$PBS_EXEC/bin/qsub" --version | grep -q '^pbs_version' || die "the installed qsub does not work"
    echo "$COMMIT" >"$PBS_EXEC/.mace-openpbs-commit"
    rm -rf "$src"
    took "build" "$t0"
}

# ---------------------------------------------------------------------------------------- 2. python
job_python() {
    local t0=$SECONDS deps
    deps=$(/usr/bin/python3 -c 'import sys, tomllib; print(" ".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]))' \
        "$REPO/pyproject.toml")
    if [ "$(cat "$VENV/.mace-deps" 2>/dev/null)" != "$deps" ]; then
        log "creating $VENV with: $deps"
        rm -rf "$VENV"
        /usr/bin/python3 -m venv "$VENV"
        # shellcheck disable=SC2086
        "$VENV/bin/pip" install -q --disable-pip-version-check $deps "setuptools>=64" wheel >"$TOOLS/pip.log" 2>&1 \
            || { tail -20 "$TOOLS/pip.log" >&2; die "pip install into $VENV failed"; }
        echo "$deps" >"$VENV/.mace-deps"
    fi
    # a copy, not an editable install: the checkout may live where the job user cannot read
    local wheel=$BUILD_DIR/src
    rm -rf "$wheel"; mkdir -p "$wheel"
    cp -r "$REPO/mace_hpc" "$REPO/pyproject.toml" "$REPO/README.md" "$wheel/"
    "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps --no-build-isolation --force-reinstall "$wheel" \
        >"$TOOLS/pip.log" 2>&1 || { tail -20 "$TOOLS/pip.log" >&2; die "installing mace_hpc into $VENV failed"; }
    rm -rf "$wheel"
    took "job python ($VENV)" "$t0"
}

# ---------------------------------------------------------------------------------------- 3. netns
netns_up() {
    ip netns list | grep -qw "$NS" || ip netns add "$NS"
    inns ip link set lo up
    inns ip -4 addr show dev lo | grep -q " $ADDR/" || inns ip addr add "$ADDR/32" dev lo
    mkdir -p "/etc/netns/$NS"
    printf '127.0.0.1 localhost\n%s %s\n' "$ADDR" "$HOST" >"/etc/netns/$NS/hosts"
    inns getent ahostsv4 "$HOST" | grep -q "^$ADDR " || die "inside $NS, $HOST does not resolve to $ADDR"
}

# ---------------------------------------------------------------------------------------- 4. server
lock_alive() { # lockfile name: the daemon named in its lock file runs
    local pid
    pid=$(head -1 "$1" 2>/dev/null | tr -dc 0-9)
    [ -n "$pid" ] && tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -q "$2"
}
start_daemon() { # lockfile name
    if lock_alive "$1" "$2"; then return 0; fi
    inns "$PBS_EXEC/sbin/$2" >>"$PBS_HOME/mace-start.log" 2>&1 || die "$2 failed to start"
    log "started $2"
}
wait_until() { # what, command...
    local what=$1 end=$((SECONDS + WAIT)); shift
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $end ] || die "timed out after ${WAIT}s waiting for $what"
        sleep 0.3
    done
}
server() {
    local t0=$SECONDS conf
    conf="PBS_EXEC=$PBS_EXEC
PBS_SERVER=$HOST
PBS_START_SERVER=1
PBS_START_SCHED=1
PBS_START_COMM=1
PBS_START_MOM=1
PBS_HOME=$PBS_HOME
PBS_CORE_LIMIT=unlimited"
    [ -x /usr/bin/scp ] && conf="$conf
PBS_SCP=/usr/bin/scp"
    if [ ! -f "$PBS_HOME/pbs_environment" ]; then
        log "pbs_postinstall (creates $PBS_HOME)"
        mkdir -p "$PBS_HOME"
        printf '%s\n' "$conf" >/etc/pbs.conf
        inns "$PBS_EXEC/libexec/pbs_postinstall" >"$PBS_HOME/mace-postinstall.log" 2>&1 || true
        [ -f "$PBS_HOME/pbs_environment" ] || die "pbs_postinstall failed (see $PBS_HOME/mace-postinstall.log)"
    fi
    [ "$(cat /etc/pbs.conf 2>/dev/null)" = "$conf" ] || printf '%s\n' "$conf" >/etc/pbs.conf  # postinstall rewrites it
    chmod 644 /etc/pbs.conf
    chmod 4755 "$PBS_EXEC/sbin/pbs_iff" "$PBS_EXEC/sbin/pbs_rcp"
    if [ "$(cat "$PBS_HOME/pbs_version" 2>/dev/null)" != "$(qstat --version | sed -e 's/^.* = //')" ] \
        || [ ! -d "$PBS_HOME/datastore" ]; then
        log "pbs_habitat (initialises the datastore)"
        inns "$PBS_EXEC/libexec/pbs_habitat" >"$PBS_HOME/mace-habitat.log" 2>&1 \
            || { tail -20 "$PBS_HOME/mace-habitat.log" >&2; die "pbs_habitat failed"; }
    fi
    # Mom polls resources every 10-120 s by default: a walltime kill would land up to 2 min late.
    local cfg=$PBS_HOME/mom_priv/config
    touch "$cfg"
    if ! grep -qx '\$min_check_poll 2' "$cfg" || ! grep -qx '\$max_check_poll 5' "$cfg"; then
        { grep -vE '^\$(min|max)_check_poll' "$cfg" || true; printf '$min_check_poll 2\n$max_check_poll 5\n'; } >"$cfg.new"
        mv -f "$cfg.new" "$cfg"
        if lock_alive "$PBS_HOME/mom_priv/mom.lock" pbs_mom; then kill -HUP "$(head -1 "$PBS_HOME/mom_priv/mom.lock")"; fi
    fi
    install_epilogue
    start_daemon "$PBS_HOME/server_priv/comm.lock" pbs_comm
    start_daemon "$PBS_HOME/mom_priv/mom.lock" pbs_mom
    start_daemon "$PBS_HOME/sched_priv/sched.lock" pbs_sched
    start_daemon "$PBS_HOME/server_priv/server.lock" pbs_server
    wait_until "pbs_server" inns qstat -B
    # a test server sends no mail (PBS mails on abort: walltime kills, qdel; sendmail would linger)
    printf '#!/bin/sh\ncat >/dev/null\n' >"$TOOLS/no-mail" && chmod 755 "$TOOLS/no-mail"
    # Finished jobs of earlier runs go: after the daemons were killed (the end of a session) the
    # server can hand out job ids again that its history still holds ("Job with requested ID
    # already exists", seen here); turning history off purges it, the loop below turns it on again.
    inns qmgr -c "set server job_history_enable=false" >/dev/null || die "qmgr: purging the job history failed"
    local q
    for q in "set server scheduling=true" "set server job_history_enable=true" "set server flatuid=true" \
             "set server default_queue=workq" "set server mailer=$TOOLS/no-mail"; do
        inns qmgr -c "$q" >/dev/null || die "qmgr -c '$q' failed"
    done
    inns qmgr -c "list queue workq" >/dev/null 2>&1 || inns qmgr -c "create queue workq queue_type=execution"
    inns qmgr -c "set queue workq enabled=true" && inns qmgr -c "set queue workq started=true"
    inns qmgr -c "list node $HOST" >/dev/null 2>&1 || inns qmgr -c "create node $HOST"
    inns qmgr -c "set node $HOST resources_available.ncpus=$NCPUS"
    wait_until "node $HOST free" node_free
    took "server up" "$t0"
}
node_free() { inns pbsnodes "$HOST" | grep -q 'state = free'; }

install_epilogue() { # as an admin would: the shipped script, MACE_EPILOGUE pointed at our python
    local epi=$PBS_HOME/mom_priv/epilogue
    sed -e "s|^MACE_EPILOGUE=.*|MACE_EPILOGUE=\${MACE_EPILOGUE:-$VENV/bin/mace-epilogue}|" \
        -e "s|^LOG=.*|LOG=\${MACE_EPILOG_LOG:-$PBS_HOME/mace-epilogue.log}|" \
        "$REPO/jobscripts/pbs-epilogue.sh" >"$epi.new"
    grep -q "$VENV/bin/mace-epilogue" "$epi.new" || die "jobscripts/pbs-epilogue.sh has no MACE_EPILOGUE= line to set"
    chown root:root "$epi.new"; chmod 0700 "$epi.new"   # mom refuses anything else
    mv -f "$epi.new" "$epi"
}

# ---------------------------------------------------------------------------------------- 5. user
job_user() {
    id "$PBS_USER" >/dev/null 2>&1 || { useradd -m -s /bin/bash "$PBS_USER"; log "created user $PBS_USER"; }
}

T0=$SECONDS
mkdir -p "$TOOLS" "$RUN_DIR"
build
job_python
job_user
netns_up
server
cat >"$RUN_DIR/server.env.new" <<EOF
MACE_PBS_NETNS=$NS
MACE_PBS_USER=$PBS_USER
MACE_PBS_EXEC=$PBS_EXEC
MACE_PBS_HOME=$PBS_HOME
MACE_PBS_VENV=$VENV
MACE_PBS_HOST=$HOST
MACE_PBS_NCPUS=$NCPUS
EOF
mv -f "$RUN_DIR/server.env.new" "$RUN_DIR/server.env"
log "READY: OpenPBS $(qstat --version | sed -e 's/^.* = //') in namespace $NS (server $HOST = $ADDR), jobs as $PBS_USER"
took "total" "$T0"
