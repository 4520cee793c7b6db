#!/usr/bin/env bash
# Start a throw-away single-node SLURM cluster on this machine (for tests/workflow/test_slurm.py).
#
#   tests/workflow/slurm/start_cluster.sh [STATE_DIR]
#
# STATE_DIR (default: $SLURM_TEST_DIR, else /tmp/cxrtransfer-slurm) receives everything:
# slurm.conf, gres.conf, the munge key/socket, spool and state dirs, pid files and logs.
# Daemons and clients read $STATE_DIR/slurm.conf through the SLURM_CONF environment
# variable, which callers should export:
#
#   export SLURM_CONF=$STATE_DIR/slurm.conf
#   sinfo; sbatch ...; squeue
#
# The only change outside STATE_DIR: /etc/slurm/slurm.conf becomes a symlink to
# $STATE_DIR/slurm.conf (removed again by stop_cluster.sh), because Snakemake's
# slurm-jobstep executor strips all SLURM_* variables, SLURM_CONF included, from the
# environment of the `srun` it runs inside each job, so srun only finds the default path.
# The script refuses to run if /etc/slurm/slurm.conf exists and is not such a symlink.
#
# Must run as root (it installs Debian's slurm-wlm and munge if missing, and starts munged
# as user munge, slurmctld and slurmd as root). Stale daemons from an earlier run with the
# same STATE_DIR are stopped first. Stop with tests/workflow/slurm/stop_cluster.sh STATE_DIR.
#
# Environment knobs: SLURM_TEST_CTLD_PORT (6817), SLURM_TEST_SLURMD_PORT (6818),
# SLURM_TEST_GPUS (fake GPUs on the node; default: as many as CPUs),
# SLURM_TEST_WAIT (seconds to wait for the node to become idle; default 60).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STATE="${1:-${SLURM_TEST_DIR:-/tmp/cxrtransfer-slurm}}"
CTLD_PORT="${SLURM_TEST_CTLD_PORT:-6817}"
SLURMD_PORT="${SLURM_TEST_SLURMD_PORT:-6818}"
WAIT="${SLURM_TEST_WAIT:-60}"

log() { echo "[start_cluster] $*" >&2; }
die() {
    log "ERROR: $*"
    for f in "$STATE/log/slurmctld.log" "$STATE/log/slurmd.log" "$STATE/munge/munged.log"; do
        if [[ -f "$f" ]]; then
            echo "----- last lines of $f -----" >&2
            tail -n 40 "$f" >&2 || true
        fi
    done
    exit 1
}

[[ "$(id -u)" == 0 ]] || { echo "start_cluster.sh must run as root" >&2; exit 1; }
mkdir -p "$STATE"
STATE="$(cd "$STATE" && pwd)"

# --- 1. packages ---------------------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
    || ! command -v sinfo >/dev/null || ! command -v munged >/dev/null; then
    log "installing slurm-wlm and munge with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2
    apt-get install -y -q --no-install-recommends slurm-wlm munge >&2
fi
for cmd in slurmctld slurmd sinfo squeue sbatch scontrol munged munge unmunge; do
    command -v "$cmd" >/dev/null || die "$cmd not found after installing slurm-wlm and munge"
done

# --- 2. stop stale daemons of this state dir, reset state ----------------------------------
"$HERE/stop_cluster.sh" "$STATE" >&2 || true
rm -rf "$STATE/ctld" "$STATE/slurmd" "$STATE/run" "$STATE/log" "$STATE/munge" "$STATE/dev"
mkdir -p "$STATE/ctld" "$STATE/slurmd" "$STATE/run" "$STATE/log" "$STATE/dev"
chmod 755 "$STATE"

# --- 3. munge: private key, socket, pid and log under $STATE/munge --------------------------
install -d -o munge -g munge -m 0755 "$STATE/munge"
if command -v mungekey >/dev/null; then
    mungekey --create --keyfile="$STATE/munge/munge.key" --force
else
    dd if=/dev/urandom of="$STATE/munge/munge.key" bs=1024 count=1 status=none
fi
chown munge:munge "$STATE/munge/munge.key"
chmod 0400 "$STATE/munge/munge.key"
MUNGE_SOCKET="$STATE/munge/munge.socket"
runuser -u munge -- munged \
    --socket="$MUNGE_SOCKET" \
    --key-file="$STATE/munge/munge.key" \
    --pid-file="$STATE/munge/munged.pid" \
    --log-file="$STATE/munge/munged.log" \
    --seed-file="$STATE/munge/munged.seed" \
    || die "munged did not start"
for _ in $(seq 1 50); do
    if munge -n -S "$MUNGE_SOCKET" 2>/dev/null | unmunge -S "$MUNGE_SOCKET" >/dev/null 2>&1; then
        break
    fi
    sleep 0.2
done
munge -n -S "$MUNGE_SOCKET" | unmunge -S "$MUNGE_SOCKET" >/dev/null 2>&1 \
    || die "munge round trip through $MUNGE_SOCKET failed"

# --- 4. slurm.conf / gres.conf -------------------------------------------------------------
HOST="$(hostname -s)"
HW="$(slurmd -C | head -n 1)"
hw() { sed -n "s/.*[[:space:]]$1=\([0-9]*\).*/\1/p" <<<"$HW"; }
CPUS="$(hw CPUs)"
BOARDS="$(hw Boards)"
SOCKETS="$(hw SocketsPerBoard)"
CORES="$(hw CoresPerSocket)"
THREADS="$(hw ThreadsPerCore)"
MACHINE_MEM="$(hw RealMemory)"
[[ -n "$CPUS" && -n "$MACHINE_MEM" ]] || die "could not parse 'slurmd -C': $HW"
: "${BOARDS:=1}" "${SOCKETS:=1}" "${CORES:=$CPUS}" "${THREADS:=1}"
# A bit under the machine's memory: slurmd drains a node that has less than configured.
MEM=$((MACHINE_MEM * 9 / 10))
DEF_MEM_PER_CPU=$((MEM / CPUS / 2))
((DEF_MEM_PER_CPU > 2048)) && DEF_MEM_PER_CPU=2048
GPUS="${SLURM_TEST_GPUS:-$CPUS}"

# Fake GPU "devices": slurmd only needs files it can stat (no GPU is used by anything).
: >"$STATE/gres.conf"
for ((i = 0; i < GPUS; i++)); do
    : >"$STATE/dev/fakegpu$i"
    echo "Name=gpu File=$STATE/dev/fakegpu$i" >>"$STATE/gres.conf"
done

sed -e "s|@HOST@|$HOST|g" -e "s|@STATE@|$STATE|g" \
    -e "s|@CTLD_PORT@|$CTLD_PORT|g" -e "s|@SLURMD_PORT@|$SLURMD_PORT|g" \
    -e "s|@CPUS@|$CPUS|g" -e "s|@BOARDS@|$BOARDS|g" -e "s|@SOCKETS@|$SOCKETS|g" \
    -e "s|@CORES@|$CORES|g" -e "s|@THREADS@|$THREADS|g" -e "s|@MEM@|$MEM|g" \
    -e "s|@DEF_MEM_PER_CPU@|$DEF_MEM_PER_CPU|g" -e "s|@GPUS@|$GPUS|g" \
    "$HERE/slurm.conf.in" >"$STATE/slurm.conf"
export SLURM_CONF="$STATE/slurm.conf"
ETC_CONF=/etc/slurm/slurm.conf
if [[ -e "$ETC_CONF" || -L "$ETC_CONF" ]] && [[ "$(readlink "$ETC_CONF" || true)" != */slurm.conf ]]; then
    die "$ETC_CONF exists and is not a symlink left by this script; not touching it"
fi
mkdir -p /etc/slurm
ln -sfn "$SLURM_CONF" "$ETC_CONF"

# --- 5. slurmctld, slurmd ------------------------------------------------------------------
slurmctld -i >>"$STATE/log/slurmctld.stdout" 2>&1 || die "slurmctld did not start"
ok=""
for _ in $(seq 1 $((WAIT * 2))); do
    if scontrol ping 2>/dev/null | grep -q "is UP"; then ok=1; break; fi
    sleep 0.5
done
[[ -n "$ok" ]] || die "slurmctld does not answer 'scontrol ping' after ${WAIT}s"

slurmd -N "$HOST" >>"$STATE/log/slurmd.stdout" 2>&1 || die "slurmd did not start"

# --- 6. wait until the node is idle in both partitions -------------------------------------
state=""
for _ in $(seq 1 $((WAIT * 2))); do
    state="$(sinfo -h -N -n "$HOST" -o '%t' 2>/dev/null | sort -u | tr '\n' ' ')"
    if [[ "$state" == "idle " ]]; then
        log "cluster up: SLURM_CONF=$SLURM_CONF"
        sinfo >&2
        echo "$SLURM_CONF"
        exit 0
    fi
    sleep 0.5
done
scontrol show node "$HOST" >&2 || true
die "node $HOST is not idle after ${WAIT}s (sinfo state: '${state}')"
