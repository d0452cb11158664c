#!/usr/bin/env bash
# A real single-host SLURM for tests: `scripts/slurm-local.sh start` installs Debian's slurm-wlm and munge
# when missing, writes a one-node configuration, starts munged, slurmctld and slurmd, and waits until the
# node is idle; `scripts/slurm-local.sh stop` stops the daemons. Needs root (CI and these machines run as
# root). State, spool, logs and pid files live in $SLURM_LOCAL_DIR (default /tmp/xfel-redu-slurm).
set -euo pipefail
dir=${SLURM_LOCAL_DIR:-/tmp/xfel-redu-slurm}
host=$(hostname)

stop() {
  for p in "$dir/slurmd.pid" "$dir/slurmctld.pid"; do
    [ -f "$p" ] && kill "$(cat "$p")" 2>/dev/null || true
  done
  pkill -x slurmd 2>/dev/null || true
  pkill -x slurmctld 2>/dev/null || true
}

start() {
  if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
  fi
  stop
  mkdir -p "$dir/state" "$dir/spool" /etc/munge /etc/slurm /run/munge /var/log/munge /var/lib/munge
  if [ ! -s /etc/munge/munge.key ]; then
    head -c 1024 /dev/urandom >/etc/munge/munge.key
  fi
  chown root:root /etc/munge/munge.key /run/munge /var/log/munge /var/lib/munge /etc/munge
  chmod 400 /etc/munge/munge.key
  pgrep -x munged >/dev/null || munged --force
  munge -n | unmunge | grep -q "STATUS: *Success"
  mem=$(awk '/MemTotal/ { print int($2 / 1024 * 0.9) }' /proc/meminfo)
  cat >/etc/slurm/slurm.conf <<EOF
ClusterName=xfelredu
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
NodeName=$host CPUs=$(nproc) RealMemory=$mem State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  slurmctld
  slurmd
  for _ in $(seq 60); do
    if sinfo -h -o %T 2>/dev/null | grep -qx idle; then
      echo "slurm-local: node $host idle"
      return 0
    fi
    sleep 1
  done
  echo "slurm-local: the node did not become idle" >&2
  sinfo >&2 || true
  tail -n 20 "$dir/slurmctld.log" "$dir/slurmd.log" >&2 || true
  return 1
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
