#!/usr/bin/env bash
# A real single-node Slurm cluster on this machine, for testing lus' Slurm scripts: munged,
# slurmctld and slurmd on localhost, every file (config, key, state, logs, sockets) under DIR.
#
#     experiments/slurm/local-cluster.sh start DIR   # then: export SLURM_CONF=DIR/slurm.conf
#     experiments/slurm/local-cluster.sh stop DIR
#
# Needs Debian's slurm-wlm and munge packages (apt-get install slurm-wlm munge) and root (slurmd
# starts job steps as the submitting user). Nothing outside DIR is touched: the system's
# /etc/slurm and /etc/munge stay as they are, and another cluster on the machine is not seen
# (ports are picked free). `start` waits until the node is idle, or fails with the logs.
set -euo pipefail

usage() { echo "usage: $0 start|stop DIR" >&2; exit 2; }
[[ $# -eq 2 ]] || usage
action=$1
dir=$(mkdir -p "$2" && cd "$2" && pwd)

stop() {
    for pidfile in slurmd.pid slurmctld.pid munged.pid; do
        if [[ -s $dir/$pidfile ]]; then
            kill "$(cat "$dir/$pidfile")" 2>/dev/null || true
        fi
    done
    # Wait for them to exit (slurmctld saves its state first).
    for _ in $(seq 50); do
        alive=0
        for pidfile in slurmd.pid slurmctld.pid munged.pid; do
            if [[ -s $dir/$pidfile ]] && kill -0 "$(cat "$dir/$pidfile")" 2>/dev/null; then
                alive=1
            fi
        done
        [[ $alive -eq 0 ]] && break
        sleep 0.2
    done
    rm -f "$dir"/{slurmd,slurmctld,munged}.pid
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

logs() {
    for f in munged.log slurmctld.log slurmd.log; do
        [[ -f $dir/$f ]] && { echo "--- $dir/$f (last 30 lines)"; tail -n 30 "$dir/$f"; }
    done
}

start() {
    for tool in munged slurmctld slurmd sinfo python3; do
        command -v "$tool" >/dev/null || [[ -x /usr/sbin/$tool ]] || {
            echo "$0: $tool not found (apt-get install slurm-wlm munge)" >&2
            exit 3
        }
    done
    export PATH=$PATH:/usr/sbin
    stop
    mkdir -p "$dir"/{state,spool,munge}
    chmod 700 "$dir/munge"
    # A fresh key for this cluster only.
    head -c 1024 /dev/urandom > "$dir/munge/munge.key"
    chmod 400 "$dir/munge/munge.key"
    munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
        --pid-file="$dir/munged.pid" --log-file="$dir/munged.log" \
        --seed-file="$dir/munge/munge.seed"
    host=$(hostname -s)
    cpus=$(nproc)
    mem_mb=$(awk '/MemTotal/ { printf "%d", $2 / 1024 * 0.9 }' /proc/meminfo)
    cat > "$dir/slurm.conf" <<CONF
ClusterName=lus-local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=30
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
    export SLURM_CONF=$dir/slurm.conf
    slurmctld -f "$dir/slurm.conf"
    slurmd -f "$dir/slurm.conf"
    for _ in $(seq 100); do
        state=$(sinfo -h -N -o '%T' 2>/dev/null | head -n 1 || true)
        if [[ $state == idle ]]; then
            echo "local Slurm up in $dir: node $host, $cpus CPUs, ${mem_mb} MB (export SLURM_CONF=$dir/slurm.conf)"
            return 0
        fi
        sleep 0.3
    done
    echo "$0: the node did not become idle (state: ${state:-none})" >&2
    logs >&2
    stop
    exit 1
}

case $action in
    start) start ;;
    stop) stop ;;
    *) usage ;;
esac
