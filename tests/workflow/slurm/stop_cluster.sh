#!/usr/bin/env bash
# Stop the test cluster started by tests/workflow/slurm/start_cluster.sh STATE_DIR.
#
#   tests/workflow/slurm/stop_cluster.sh [STATE_DIR]
#
# Stops slurmd, slurmctld and munged by the pid files under STATE_DIR (default:
# $SLURM_TEST_DIR, else /tmp/cxrtransfer-slurm), checking that each pid still belongs to
# the expected program. Jobs still running are cancelled first. Logs stay in STATE_DIR/log.
# Removes the /etc/slurm/slurm.conf symlink start_cluster.sh made.
set -uo pipefail

STATE="${1:-${SLURM_TEST_DIR:-/tmp/cxrtransfer-slurm}}"
[[ -d "$STATE" ]] || exit 0
STATE="$(cd "$STATE" && pwd)"
log() { echo "[stop_cluster] $*" >&2; }

if [[ -f "$STATE/slurm.conf" ]] && command -v scancel >/dev/null; then
    SLURM_CONF="$STATE/slurm.conf" timeout 10 scancel --full --quiet --user=root 2>/dev/null || true
fi

# stop NAME PIDFILE: SIGTERM the pid if it runs NAME, wait up to 10 s, then SIGKILL.
stop() {
    local name="$1" pidfile="$2" pid comm
    [[ -f "$pidfile" ]] || return 0
    pid="$(tr -dc '0-9' <"$pidfile")"
    if [[ -z "$pid" ]] || [[ ! -e "/proc/$pid" ]]; then
        rm -f "$pidfile"
        return 0
    fi
    comm="$(cat "/proc/$pid/comm" 2>/dev/null || true)"
    if [[ "$comm" != "$name" ]]; then
        log "pid $pid in $pidfile is '$comm', not $name: leaving it alone"
        rm -f "$pidfile"
        return 0
    fi
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
        [[ -e "/proc/$pid" ]] || break
        # a zombie is gone for our purposes
        [[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" == Z ]] && break
        sleep 0.2
    done
    if [[ -e "/proc/$pid" ]] && [[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]]; then
        log "$name (pid $pid) ignored SIGTERM, sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
}

stop slurmd "$STATE/run/slurmd.pid"
stop slurmctld "$STATE/run/slurmctld.pid"
stop munged "$STATE/munge/munged.pid"
# the symlink start_cluster.sh made, if it still points into this state dir
if [[ -L /etc/slurm/slurm.conf ]] && [[ "$(readlink /etc/slurm/slurm.conf)" == "$STATE/slurm.conf" ]]; then
    rm -f /etc/slurm/slurm.conf
fi
exit 0
