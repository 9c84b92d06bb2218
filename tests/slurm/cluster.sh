#!/usr/bin/env bash
# A one-node Slurm cluster on this host for tests/test_slurm.py (root, Debian: slurm-wlm + munge).
# Usage: tests/slurm/cluster.sh start|stop
#   start  installs the packages if missing, writes /etc/slurm/slurm.conf, starts munged, slurmctld
#          and slurmd, and waits until the node is idle; prints which daemons it started.
#   stop   ends the daemons by the pids they wrote at start.
# An /etc/slurm/slurm.conf this script did not write is left alone and used as it is.
# AuthInfo=cred_expire=10: a requeued job waits cred_expire seconds before it may start again
# (Slurm's default is 120 s); 10 s keeps the preemption test short.
set -euo pipefail
case "${1:-start}" in
start)
  if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurmctld slurmd slurm-client munge
  fi
  host=$(hostname); cpus=$(nproc); mem=$(( $(awk '/MemTotal/{print $2}' /proc/meminfo) / 1024 / 2 ))
  mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge
  marker="# written by ddp_edf tests/slurm/cluster.sh"
  if [ -f /etc/slurm/slurm.conf ] && ! grep -q "$marker" /etc/slurm/slurm.conf; then
    echo "cluster.sh: keeping the existing /etc/slurm/slurm.conf (not written by this script)" >&2
  else
  cat > /etc/slurm/slurm.conf <<CONF
$marker
ClusterName=local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
NodeName=$host CPUs=$cpus Sockets=1 CoresPerSocket=$cpus ThreadsPerCore=1 RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
  fi
  [ -f /etc/munge/munge.key ] || mungekey -c
  chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
  chmod 400 /etc/munge/munge.key
  running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }   # by pid file: other clusters may run
  running /run/munge/munged.pid || runuser -u munge -- munged
  running /run/slurmctld.pid || slurmctld
  running /run/slurmd.pid || slurmd
  for _ in $(seq 60); do sinfo -h -o %T 2>/dev/null | grep -q idle && break; sleep 1; done
  sinfo -h -o %T | grep -q idle || { echo "cluster.sh: the node did not become idle" >&2; tail -5 /var/log/slurm/*.log >&2; exit 1; }
  ;;
stop)
  for f in /run/slurmd.pid /run/slurmctld.pid /run/munge/munged.pid; do
    [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
  done
  for _ in $(seq 20); do pgrep -x slurmd >/dev/null || pgrep -x slurmctld >/dev/null || break; sleep 0.5; done
  ;;
*) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
