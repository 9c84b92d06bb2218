#!/usr/bin/env bash
# A Slurm cluster of N "hosts" on this one machine: each node is a network namespace with its own
# hostname (a UTS namespace), a veth link to a bridge (the switch) and an address only on that link;
# slurmctld and munged run on the bridge's address, one slurmd per node inside the node's namespaces.
# Every node sees the same filesystem (like a shared home).  Needs root (Debian: slurm + munge; the
# packages are installed when missing).  Used by tests/test_multihost.py; usable by hand:
#
#   tests/cluster/netns_cluster.sh up [N]      build N nodes (2-4; default 2), start the daemons, wait
#                                              until every node is idle, print "ready" and the SLURM_CONF
#   tests/cluster/netns_cluster.sh down        stop what 'up' started (by pid), remove links, namespaces,
#                                              mounts and files; safe to run after a failed 'up'
#   tests/cluster/netns_cluster.sh status      sinfo, and the bytes each node's link carried
#   tests/cluster/netns_cluster.sh shape RATE  shape every link to RATE (1gbit, 500mbit, ...) or off
#   tests/cluster/netns_cluster.sh on NODE CMD run CMD on a node (its network and hostname)
#
# CLUSTER_RATE=1gbit shapes each link at 'up' (tbf on the bridge side: every flow between nodes passes one
# shaper; tbf shapes the rate only, so latency is what veths have).  Traffic stays on 10.211.0.0/24:
# the namespaces have no other interface and no default route.  MPI note: with the mpich wheel,
# inter-node data goes over the links only with MPICH_CH4_NETMOD=ofi (its default UCX transports see
# one machine and use shared memory); the tests set it for jobs on several nodes and count the bytes.
set -Eeuo pipefail    # -E: the ERR trap of `up` fires inside functions too

BASE=${CLUSTER_BASE:-/tmp/ddp_edf_cluster}
CONF=$BASE/slurm.conf
BRIDGE=ddpbr0
NET=10.211.0
UTSDIR=/run/ddp_edf_cluster_uts
CTLPORT=6927; SLURMDPORT=6928               # not Slurm's defaults: a one-node cluster may also run
CTL_HOST=$(hostname -s)                     # slurmctld must be named after the host it runs on
RATE=${CLUSTER_RATE:-}

log() { echo "[cluster] $*" >&2; }
nodes() { cat "$BASE/nodes" 2>/dev/null || true; }
on() { local n=$1; shift; ip netns exec "$n" nsenter --uts="$UTSDIR/$n" -- "$@"; }

check_base() {   # munged runs as user munge and needs its socket under BASE: every folder above must be enterable
  local dir=$BASE
  while [ ! -e "$dir" ]; do dir=$(dirname "$dir"); done
  while [ "$dir" != / ]; do
    [[ $(stat -c %A "$dir") =~ ^d........[xt] ]] || {
      echo "netns_cluster.sh: CLUSTER_BASE=$BASE is under $dir ($(stat -c %A "$dir")), which the munge and Slurm" \
           "daemons cannot enter: choose a CLUSTER_BASE under a folder every user may enter (e.g. /tmp/ddp_edf_cluster)" >&2
      return 1; }
    dir=$(dirname "$dir")
  done
}

install_packages() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null && return
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurmctld slurmd slurm-client munge
}

network_up() {
  ip link add "$BRIDGE" type bridge
  ip addr add "$NET.1/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  mkdir -p "$UTSDIR"
  mountpoint -q "$UTSDIR" || { mount --bind "$UTSDIR" "$UTSDIR"; mount --make-private "$UTSDIR"; }
  local i=0
  for n in $(nodes); do
    i=$((i + 1))
    ip netns add "$n"
    ip link add "ddp-$n" type veth peer name "ddp-$n-in"
    ip link set "ddp-$n-in" netns "$n"
    ip -n "$n" link set "ddp-$n-in" name eth0
    ip -n "$n" addr add "$NET.$((10 + i))/24" dev eth0
    ip -n "$n" link set lo up
    ip -n "$n" link set eth0 up
    ip link set "ddp-$n" master "$BRIDGE"
    ip link set "ddp-$n" up
    touch "$UTSDIR/$n"
    unshare --uts="$UTSDIR/$n" hostname "$n"
    mkdir -p "/etc/netns/$n"
  done
  for n in $(nodes); do    # /etc/hosts as the node sees it (ip netns exec mounts /etc/netns/NODE/hosts)
    { echo "127.0.0.1 localhost"; echo "$NET.1 $CTL_HOST"
      i=0; for m in $(nodes); do i=$((i + 1)); echo "$NET.$((10 + i)) $m"; done; } > "/etc/netns/$n/hosts"
  done
}

munge_up() {   # its socket is a path on the shared filesystem: reachable from every namespace
  [ -f /etc/munge/munge.key ] || { mungekey -c; chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
  mkdir -p "$BASE/munge"; chown munge:munge "$BASE/munge"; chmod 755 "$BASE/munge"
  runuser -u munge -- munged --socket="$BASE/munge/socket" --pid-file="$BASE/munge/munged.pid" \
    --log-file="$BASE/munge/munged.log" --seed-file="$BASE/munge/munged.seed"
}

write_conf() {
  mkdir -p "$BASE"/{state,log,run}
  for n in $(nodes); do mkdir -p "$BASE/spool/$n"; done
  # ip netns exec remounts /sys, hiding /sys/fs/cgroup; slurmd starts with the v1 plugin named
  echo "CgroupPlugin=cgroup/v1" > "$BASE/cgroup.conf"
  # Job ids differ from those of earlier clusters (each gets 100), as on a real cluster: MPICH names its
  # /dev/shm segments after the job id, and a segment left by a killed rank must not meet a new job.
  cat > "$CONF" <<CONF
ClusterName=ddpedf
FirstJobId=$(( $(date +%s) % 600000 * 100 + 1 ))
SlurmctldHost=$CTL_HOST($NET.1)
SlurmctldPort=$CTLPORT
SlurmdPort=$SLURMDPORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$BASE/munge/socket,cred_expire=10
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool/%n
SlurmdPidFile=$BASE/run/slurmd-%n.pid
SlurmdLogFile=$BASE/log/slurmd-%n.log
SlurmctldPidFile=$BASE/run/slurmctld.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=pmi2
SlurmdTimeout=30
InactiveLimit=30
KillWait=5
CONF
  local i=0
  for n in $(nodes); do
    i=$((i + 1))
    echo "NodeName=$n NodeAddr=$NET.$((10 + i)) NodeHostname=$n CPUs=2 RealMemory=2000 State=UNKNOWN" >> "$CONF"
  done
  echo "PartitionName=ddpedf Nodes=$(nodes | paste -sd,) Default=YES MaxTime=INFINITE State=UP" >> "$CONF"
}

slurm_up() {
  slurmctld -f "$CONF"
  for n in $(nodes); do on "$n" slurmd -f "$CONF" -N "$n"; done
  local want; want=$(nodes | wc -w)
  for _ in $(seq 90); do
    [ "$(SLURM_CONF=$CONF sinfo -h -N -t idle -o %N 2>/dev/null | sort -u | wc -l)" -eq "$want" ] && return
    sleep 1
  done
  log "the nodes did not all become idle:"; SLURM_CONF=$CONF sinfo -N >&2 || true
  tail -n 5 "$BASE"/log/*.log >&2 || true
  return 1
}

links_up() {   # node to node, over the bridge: TCP to each other node's slurmd (ping may be absent)
  local first; first=$(nodes | head -1)
  local i=0
  for n in $(nodes); do
    i=$((i + 1))
    [ "$n" = "$first" ] && continue
    on "$first" timeout 5 bash -c "exec 3<>/dev/tcp/$NET.$((10 + i))/$SLURMDPORT" \
      || { log "$first cannot reach $n over the bridge (a firewall on bridged traffic?)"; return 1; }
  done
}

shape() {   # RATE (e.g. 1gbit, 500mbit) or off, on every node's link
  local rate=$1 bits
  case "$rate" in
    off) ;;
    *gbit) bits=$(( ${rate%gbit} * 1000000000 )) ;;
    *mbit) bits=$(( ${rate%mbit} * 1000000 )) ;;
    *) echo "netns_cluster.sh: rate $rate: use off, Ngbit or Nmbit" >&2; return 2 ;;
  esac
  for n in $(nodes); do
    tc qdisc del dev "ddp-$n" root 2>/dev/null || true
    # tbf on the bridge side shapes what the node receives.  Its bucket (0.5 ms at the rate, at least
    # 64 KiB: a veth's GSO packets) fills while the link idles and then passes at once: a small one
    # keeps a link that rested during backward close to a real link of that rate.
    [ "$rate" = off ] || tc qdisc add dev "ddp-$n" root tbf rate "$rate" \
      burst $(( bits / 16000 > 65536 ? bits / 16000 : 65536 )) latency 50ms
  done
}

status() {
  SLURM_CONF=$CONF sinfo -N || true
  for n in $(nodes); do
    echo "ddp-$n rx_bytes=$(cat "/sys/class/net/ddp-$n/statistics/rx_bytes") tx_bytes=$(cat "/sys/class/net/ddp-$n/statistics/tx_bytes")"
  done
}

down() {
  set +e
  [ -f "$CONF" ] && SLURM_CONF=$CONF scancel --full --quiet $(SLURM_CONF=$CONF squeue -h -o %i 2>/dev/null) 2>/dev/null
  # ours only: the daemons started with this cluster's config or munge socket (pid files may be gone)
  for p in $(pgrep -f "(slurmctld|slurmd) -f $CONF" 2>/dev/null) $(pgrep -f "munged --socket=$BASE/munge" 2>/dev/null); do
    kill "$p" 2>/dev/null
    for _ in $(seq 20); do kill -0 "$p" 2>/dev/null || break; sleep 0.25; done
    kill -9 "$p" 2>/dev/null
  done
  for n in $(nodes) $(ip netns list 2>/dev/null | awk '/^ddpn[0-9]/{print $1}'); do
    pids=$(ip netns pids "$n" 2>/dev/null)
    [ -n "$pids" ] && { kill $pids 2>/dev/null; sleep 0.5; kill -9 $pids 2>/dev/null; }
    ip link del "ddp-$n" 2>/dev/null
    ip netns del "$n" 2>/dev/null
    umount "$UTSDIR/$n" 2>/dev/null; rm -f "$UTSDIR/$n"
    rm -rf "/etc/netns/$n"
  done
  rmdir /etc/netns 2>/dev/null
  umount "$UTSDIR" 2>/dev/null; rmdir "$UTSDIR" 2>/dev/null
  ip link del "$BRIDGE" 2>/dev/null
  rm -rf "$BASE"
  log "down"
  return 0
}

case "${1:-}" in
  up)
    count=${2:-2}
    [[ "$count" =~ ^[2-4]$ ]] || { echo "netns_cluster.sh: N must be 2, 3 or 4" >&2; exit 2; }
    ip link show "$BRIDGE" >/dev/null 2>&1 && { echo "netns_cluster.sh: already up; run '$0 down' first" >&2; exit 1; }
    [ "$(id -u)" -eq 0 ] || { echo "netns_cluster.sh: needs root (network namespaces)" >&2; exit 1; }
    check_base || exit 2
    # down turns errexit off: the trap must end the script itself, with a failure
    trap 'log "up failed: tearing down"; down; exit 1' ERR
    install_packages
    mkdir -p "$BASE"; seq -f "ddpn%g" 1 "$count" > "$BASE/nodes"
    network_up; write_conf; munge_up; slurm_up; links_up
    [ -z "$RATE" ] || shape "$RATE"
    trap - ERR
    echo "ready: $count nodes ($(nodes | paste -sd' ')); export SLURM_CONF=$CONF" ;;
  down)   down ;;
  status) status ;;
  shape)  shape "${2:?usage: $0 shape RATE|off}" ;;
  on)     shift; on "$@" ;;
  *)      echo "usage: $0 up [N] | down | status | shape RATE|off | on NODE CMD..." >&2; exit 2 ;;
esac
