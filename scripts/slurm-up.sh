#!/usr/bin/env bash
# Bring up a one-node SLURM cluster with accounting (munge, MariaDB, slurmdbd,
# slurmctld, slurmd) on this Debian 12 machine, without systemd.
# Idempotent: healthy daemons are left alone, stopped ones are (re)started.
# Must run as root. See DEVELOPERS.md, "A local SLURM cluster".
#
# Environment:
#   LABCTL_SLURM_DIR   state, spool, logs and pid files (default /var/lib/labctl-slurm)
#   LABCTL_SLURM_CPUS  CPUs to advertise for the node (default: the real count)
#   LABCTL_SLURM_WAIT  seconds to wait for each daemon / the node (default 60)
set -euo pipefail
# The daemons and their tools live in sbin, which a reduced environment (env -i, cron, a non-login
# shell) may leave off PATH: without it slurmdbd was never started again after an accounting outage.
export PATH="$PATH:/usr/sbin:/sbin"

DIR="${LABCTL_SLURM_DIR:-/var/lib/labctl-slurm}"
WAIT="${LABCTL_SLURM_WAIT:-60}"
CLUSTER=labctl
ACCOUNT=labctl
HOST="$(hostname -s)"
CONF_DIR=/etc/slurm
DB_NAME=slurm_acct_db
DB_USER=slurm
START_TIME=$SECONDS

log() { printf 'slurm-up: %s\n' "$*" >&2; }

die() {
    # die MESSAGE [LOGFILE...]: explain, show the relevant log tails, exit 1.
    local msg=$1
    shift
    log "ERROR: $msg"
    local f
    for f in "$@"; do
        if [[ -f $f ]]; then
            printf -- '--- last lines of %s ---\n' "$f" >&2
            tail -n 25 "$f" >&2
        fi
    done
    exit 1
}

# wait_for DESCRIPTION LOGFILE COMMAND...: poll COMMAND until it succeeds or $WAIT s pass.
wait_for() {
    local what=$1 logfile=$2
    shift 2
    local deadline=$((SECONDS + WAIT))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            die "$what not ready after ${WAIT}s" "$logfile"
        fi
        sleep 0.5
    done
}

# pid_alive PIDFILE: the pid file names a running process.
pid_alive() {
    [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

[[ $(id -u) -eq 0 ]] || die "run as root (daemons run as root here, SlurmUser=root)"

# --- packages ---------------------------------------------------------------
PACKAGES=(slurm-wlm slurmdbd munge mariadb-server)
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # policy-rc.d in containers refuses service starts during install; that is fine, we start daemons below.
    apt-get install -y -qq "${PACKAGES[@]}" >/dev/null
fi

mkdir -p "$DIR"/{state,spool,log,run,etc} "$CONF_DIR"
chmod 700 "$DIR/etc"
SLURM_LOG="$DIR/log"

# --- configuration ------------------------------------------------------------
# Node size from the hardware; leave memory headroom for the OS, MariaDB and the daemons.
read -r HW_CPUS HW_MEM < <(slurmd -C | sed -n 's/.*CPUs=\([0-9]*\).*RealMemory=\([0-9]*\).*/\1 \2/p')
[[ -n ${HW_CPUS:-} && -n ${HW_MEM:-} ]] || die "could not read CPUs/RealMemory from 'slurmd -C'"
CPUS="${LABCTL_SLURM_CPUS:-$HW_CPUS}"
REAL_MEM=$((HW_MEM - HW_MEM / 10 > 512 ? HW_MEM - HW_MEM / 10 : HW_MEM / 2))
HEADROOM_MIN=1024
((HW_MEM - REAL_MEM >= HEADROOM_MIN || HW_MEM < 2 * HEADROOM_MIN)) || REAL_MEM=$((HW_MEM - HEADROOM_MIN))
# Jobs without --mem get this much, so several jobs can share the node.
DEF_MEM_PER_CPU=$((REAL_MEM / CPUS < 1024 ? REAL_MEM / CPUS : 1024))
SLURMD_PARAMS=""
# Advertising more CPUs than the hardware has needs config_overrides, or slurmd drains the node.
((CPUS > HW_CPUS)) && SLURMD_PARAMS="SlurmdParameters=config_overrides"

DB_PASS_FILE="$DIR/etc/db_password"
if [[ ! -s $DB_PASS_FILE ]]; then
    (umask 077 && head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$DB_PASS_FILE")
fi
DB_PASS="$(cat "$DB_PASS_FILE")"

SLURM_CONF_TEXT="# Written by labctl scripts/slurm-up.sh; edits are overwritten.
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$DEF_MEM_PER_CPU
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$SLURM_LOG/slurmctld.log
SlurmdLogFile=$SLURM_LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=2
# Memory is enforced by polling (no cgroups): a job over its --mem is SIGKILLed and ends FAILED 0:9, not OUT_OF_MEMORY.
JobAcctGatherParams=OverMemoryKill
JobCompType=jobcomp/none
MinJobAge=10
MaxJobCount=50000
MaxArraySize=10001
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_interval=5,bf_interval=5,default_queue_depth=1000
KillWait=2
OverTimeLimit=0
InactiveLimit=0
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=60
MessageTimeout=10
$SLURMD_PARAMS
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$REAL_MEM State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
"

SLURMDBD_CONF_TEXT="# Written by labctl scripts/slurm-up.sh; edits are overwritten.
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
DebugLevel=info
LogFile=$SLURM_LOG/slurmdbd.log
PidFile=$DIR/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=$DB_NAME
StorageUser=$DB_USER
StoragePass=$DB_PASS
"

# write_if_changed FILE MODE TEXT: returns 0 when the file was (re)written.
write_if_changed() {
    local file=$1 mode=$2 text=$3
    if [[ -f $file ]] && [[ "$(cat "$file")" == "${text%$'\n'}" ]]; then
        return 1
    fi
    (umask 077 && printf '%s' "$text" >"$file.tmp")
    chmod "$mode" "$file.tmp"
    mv "$file.tmp" "$file"
    return 0
}

slurm_conf_changed=0
dbd_conf_changed=0
write_if_changed "$CONF_DIR/slurm.conf" 644 "$SLURM_CONF_TEXT" && slurm_conf_changed=1
# slurmdbd refuses a config readable by others (it holds the DB password).
write_if_changed "$CONF_DIR/slurmdbd.conf" 600 "$SLURMDBD_CONF_TEXT" && dbd_conf_changed=1

# --- munge ----------------------------------------------------------------------
if [[ ! -s /etc/munge/munge.key ]]; then
    log "creating munge key"
    mungekey --create --keyfile=/etc/munge/munge.key
fi
chown munge:munge /etc/munge/munge.key
chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
chmod 755 /run/munge

munge_ok() { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }
if ! munge_ok; then
    log "starting munged"
    rm -f /run/munge/munged.pid
    runuser -u munge -- /usr/sbin/munged
    wait_for munged /var/log/munge/munged.log munge_ok
fi

# --- MariaDB ----------------------------------------------------------------------
MYSQL_CNF=/etc/mysql/mariadb.conf.d/60-labctl-slurm.cnf
# slurmdbd warns below these values (see the SLURM accounting docs).
write_if_changed "$MYSQL_CNF" 644 "# Written by labctl scripts/slurm-up.sh
[mysqld]
innodb_buffer_pool_size=256M
innodb_lock_wait_timeout=900
innodb_log_file_size=64M
max_allowed_packet=64M
" || true

mysql_ok() { mysqladmin --protocol=socket ping >/dev/null 2>&1; }
if ! mysql_ok; then
    log "starting MariaDB"
    mkdir -p /run/mysqld
    chown mysql:mysql /run/mysqld
    # mariadbd itself (user mysql) appends to the error log.
    touch "$SLURM_LOG/mariadb.log"
    chown mysql:mysql "$SLURM_LOG/mariadb.log"
    setsid -f mysqld_safe --skip-syslog --log-error="$SLURM_LOG/mariadb.log" \
        </dev/null >>"$SLURM_LOG/mariadb.log" 2>&1
    wait_for MariaDB "$SLURM_LOG/mariadb.log" mysql_ok
fi
# root authenticates over the unix socket (Debian default), so no root password is needed.
mysql --protocol=socket <<SQL
CREATE DATABASE IF NOT EXISTS $DB_NAME;
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
ALTER USER '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'localhost';
FLUSH PRIVILEGES;
SQL

# --- slurmdbd ---------------------------------------------------------------------
DBD_PID="$DIR/run/slurmdbd.pid"
CTLD_PID="$DIR/run/slurmctld.pid"
SLURMD_PID="$DIR/run/slurmd.pid"

# stop_daemon PIDFILE NAME: SIGTERM and wait for exit.
stop_daemon() {
    local pidfile=$1 name=$2 pid deadline
    pid_alive "$pidfile" || return 0
    pid="$(cat "$pidfile")"
    log "stopping $name (pid $pid)"
    kill "$pid"
    deadline=$((SECONDS + 30))
    while kill -0 "$pid" 2>/dev/null; do
        ((SECONDS < deadline)) || die "$name (pid $pid) did not stop"
        sleep 0.2
    done
}

dbd_ok() { pid_alive "$DBD_PID" && sacctmgr -n -P show cluster format=cluster >/dev/null 2>&1; }
((dbd_conf_changed)) && stop_daemon "$DBD_PID" slurmdbd
if ! dbd_ok; then
    if ! pid_alive "$DBD_PID"; then
        log "starting slurmdbd"
        slurmdbd
    fi
    wait_for slurmdbd "$SLURM_LOG/slurmdbd.log" dbd_ok
fi

if ! sacctmgr -n -P show cluster format=cluster | grep -qx "$CLUSTER"; then
    log "registering cluster $CLUSTER in accounting"
    sacctmgr -i add cluster "$CLUSTER" >/dev/null
fi
if ! sacctmgr -n -P show account format=account | grep -qx "$ACCOUNT"; then
    sacctmgr -i add account "$ACCOUNT" cluster="$CLUSTER" description="labctl local" organization=labctl >/dev/null
fi
if ! sacctmgr -n -P show user root format=user | grep -qx root ||
    ! sacctmgr -n -P show assoc user=root account="$ACCOUNT" format=user | grep -qx root; then
    sacctmgr -i add user root account="$ACCOUNT" cluster="$CLUSTER" >/dev/null || true
fi

# --- slurmctld and slurmd -------------------------------------------------------
if ((slurm_conf_changed)); then
    stop_daemon "$SLURMD_PID" slurmd
    stop_daemon "$CTLD_PID" slurmctld
fi

ctld_ok() { scontrol ping 2>/dev/null | grep -q 'is UP'; }
if ! pid_alive "$CTLD_PID"; then
    log "starting slurmctld"
    slurmctld
fi
wait_for slurmctld "$SLURM_LOG/slurmctld.log" ctld_ok

if ! pid_alive "$SLURMD_PID"; then
    log "starting slurmd"
    slurmd
fi

node_state() { sinfo -h -N -n "$HOST" -o '%T' 2>/dev/null | head -n1; }
node_ready() { [[ "$(node_state)" =~ ^(idle|mixed|allocated|completing|planned)$ ]]; }
deadline=$((SECONDS + WAIT))
resumed=0
until node_ready; do
    state="$(node_state)"
    # A node left down/drained by an earlier config (e.g. memory mismatch) is fine now: resume it once.
    if ((!resumed)) && [[ $state =~ ^(down|drain|drained|draining) ]] && pid_alive "$SLURMD_PID"; then
        scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
        resumed=1
    fi
    if ((SECONDS >= deadline)); then
        sinfo -N -l >&2 || true
        die "node $HOST not idle after ${WAIT}s (state: ${state:-unknown})" \
            "$SLURM_LOG/slurmd.log" "$SLURM_LOG/slurmctld.log"
    fi
    sleep 0.5
done

sacct_ok() { sacct -n -X --starttime now-1minute -o JobID >/dev/null; }
wait_for "sacct" "$SLURM_LOG/slurmdbd.log" sacct_ok

printf 'slurm-up: cluster %s ready in %ds: node %s %s CPUs=%s RealMemory=%sMB, partition debug, accounting via slurmdbd, logs in %s\n' \
    "$CLUSTER" "$((SECONDS - START_TIME))" "$HOST" "$(node_state)" "$CPUS" "$REAL_MEM" "$SLURM_LOG"
