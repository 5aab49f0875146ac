#!/usr/bin/env bash
# Stop the local SLURM cluster started by scripts/slurm-up.sh.
#   slurm-down.sh            stop slurmd, slurmctld, slurmdbd (MariaDB and munged keep running)
#   slurm-down.sh slurmdbd   stop only slurmdbd (accounting outage; jobs keep running)
#   slurm-down.sh --all      also stop MariaDB and munged
# scripts/slurm-up.sh starts whatever is stopped again. State and job records are kept.
set -euo pipefail
# The daemons and their tools live in sbin, which a reduced environment (env -i, cron, a non-login
# shell) may leave off PATH: without it slurmdbd was never started again after an accounting outage.
export PATH="$PATH:/usr/sbin:/sbin"

DIR="${LABCTL_SLURM_DIR:-/var/lib/labctl-slurm}"

log() { printf 'slurm-down: %s\n' "$*" >&2; }

# stop PIDFILE NAME: SIGTERM the daemon named in PIDFILE and wait (up to 30 s) for it to exit.
stop() {
    local pidfile=$1 name=$2 pid deadline
    if [[ ! -s $pidfile ]] || ! pid="$(cat "$pidfile")" || ! kill -0 "$pid" 2>/dev/null; then
        log "$name not running"
        return 0
    fi
    log "stopping $name (pid $pid)"
    kill "$pid"
    deadline=$((SECONDS + 30))
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            log "ERROR: $name (pid $pid) still running after 30s"
            return 1
        fi
        sleep 0.2
    done
}

case "${1:-}" in
slurmdbd)
    stop "$DIR/run/slurmdbd.pid" slurmdbd
    ;;
"" | --all)
    stop "$DIR/run/slurmd.pid" slurmd
    stop "$DIR/run/slurmctld.pid" slurmctld
    stop "$DIR/run/slurmdbd.pid" slurmdbd
    if [[ ${1:-} == --all ]]; then
        # mysqld_safe restarts a killed mariadbd; mysqladmin shutdown stops both cleanly.
        if mysqladmin --protocol=socket ping >/dev/null 2>&1; then
            log "stopping MariaDB"
            mysqladmin --protocol=socket shutdown
        fi
        stop /run/munge/munged.pid munged
    fi
    ;;
*)
    echo "usage: $0 [slurmdbd|--all]" >&2
    exit 2
    ;;
esac
