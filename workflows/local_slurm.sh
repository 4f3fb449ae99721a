#!/usr/bin/env bash
# A single-node Slurm on 127.0.0.1 (munge + slurmctld + slurmd), for tests and trying the
# Slurm chain on one machine. Needs Debian's packages (apt-get install slurm-wlm munge) and
# root (slurmd runs jobs as their user).
#
#   workflows/local_slurm.sh up [DIR]     # start; prints `export SLURM_CONF=DIR/slurm.conf`
#   workflows/local_slurm.sh down [DIR]   # stop the daemons and remove what `up` made in DIR
#   workflows/local_slurm.sh status [DIR]
#
# DIR defaults to /tmp/simgan-slurm. The one partition, `debug`, holds this machine's CPUs
# and memory. Everything lives in DIR; nothing in /etc/slurm is touched.
set -euo pipefail

cmd=${1:-}
dir=${2:-${SIMGAN_SLURM_DIR:-/tmp/simgan-slurm}}
conf="$dir/slurm.conf"

die() { echo "local_slurm: $*" >&2; exit 2; }

# `up` marks DIR as its own; `down` removes only what `up` made, and only from a marked DIR
MARK=.simgan-local-slurm
OWNED=(state spool log munge slurm.conf slurmctld.pid slurmd.pid "$MARK")

need() {
    for exe in munged slurmctld slurmd sinfo sbatch; do
        command -v "$exe" >/dev/null || die "$exe not found: install Debian's slurm-wlm and munge (apt-get install slurm-wlm munge)"
    done
    [ "$(id -u)" = 0 ] || die "needs root (slurmd starts jobs as their user)"
}

write_conf() {
    local host cpus mem
    host=$(hostname -s)
    cpus=$(getconf _NPROCESSORS_ONLN)  # (nproc follows OMP_NUM_THREADS)
    mem=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
    mkdir -p "$dir/state" "$dir/spool" "$dir/log" "$dir/munge"
    cat > "$conf" <<EOF
ClusterName=simgan
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket
CryptoType=crypto/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=300
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

up() {
    need
    if [ -f "$dir/slurmctld.pid" ] && kill -0 "$(cat "$dir/slurmctld.pid")" 2>/dev/null; then
        echo "export SLURM_CONF=$conf"
        return 0
    fi
    if [ -e "$dir" ] && [ ! -f "$dir/$MARK" ] && [ -n "$(ls -A "$dir" 2>/dev/null)" ]; then
        die "$dir holds files that are not a local Slurm's (no $dir/$MARK): choose an empty or new DIR"
    fi
    write_conf
    touch "$dir/$MARK"
    # munge: its own key and socket in DIR, so a system munged (if any) is left alone
    [ -f "$dir/munge/munge.key" ] || { dd if=/dev/urandom bs=1 count=1024 of="$dir/munge/munge.key" 2>/dev/null; }
    chmod 700 "$dir/munge"; chmod 400 "$dir/munge/munge.key"
    munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
        --pid-file="$dir/munge/munged.pid" --log-file="$dir/log/munged.log" --seed-file="$dir/munge/munged.seed"
    export SLURM_CONF="$conf"
    slurmctld -f "$conf"
    slurmd -f "$conf"
    for _ in $(seq 120); do
        if sinfo -h -o "%t" 2>/dev/null | grep -qE "^(idle|mix|alloc)"; then
            echo "export SLURM_CONF=$conf"
            return 0
        fi
        sleep 1
    done
    echo "local_slurm: the node did not come up; logs in $dir/log" >&2
    tail -n 20 "$dir"/log/*.log >&2 || true
    down
    exit 1
}

down() {
    [ -f "$dir/$MARK" ] || die "$dir is not a local Slurm made by \`up\` (no $dir/$MARK): nothing stopped or removed"
    for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid" "$dir/munge/munged.pid"; do
        if [ -f "$pidfile" ]; then
            kill "$(cat "$pidfile")" 2>/dev/null || true
        fi
    done
    sleep 1
    local f
    for f in "${OWNED[@]}"; do rm -rf "${dir:?}/$f"; done
    rmdir "$dir" 2>/dev/null || echo "local_slurm: left $dir in place (it holds other files)" >&2
}

status() {
    [ -f "$conf" ] || die "no local Slurm in $dir"
    SLURM_CONF="$conf" sinfo
}

case "$cmd" in
    up) up ;;
    down) down ;;
    status) status ;;
    *) die "usage: $0 up|down|status [DIR]" ;;
esac
