#!/usr/bin/env bash
# Run ddp_edf on this machine with N MPI ranks.
#
# Usage:  launch/local.sh [-n RANKS] [-t THREADS_PER_RANK] [-c CONFIG] [-o OUT] [-b BIND] [-- TRAIN_ARGS...]
#   -n RANKS             MPI ranks (default: $NPROC, else the number of cores)
#   -t THREADS_PER_RANK  BLAS threads per rank (default: cores / RANKS, at least 1)
#   -c CONFIG            TOML config (default: the built-in defaults = configs/digits_mlp.toml)
#   -o OUT               run folder, resumed from its newest checkpoint if it has one (--resume auto)
#   -b BIND              process binding passed to MPICH's mpiexec as -bind-to BIND (core, socket,
#                        none; default: none). With Open MPI use --bind-to via MPIEXEC_ARGS instead.
#   TRAIN_ARGS           anything else for python -m ddp_edf.train, e.g. --set optim.lr=0.05
# Environment: PYTHON (default: .venv/bin/python, else python3), MPIEXEC (default: the mpiexec next to
#   PYTHON, else the one on PATH), MPIEXEC_ARGS (extra launcher options, e.g. "-hosts a,b").
#
# Examples:
#   launch/local.sh -n 4 -c configs/fashion_mlp.toml
#   launch/local.sh -n 2 -t 1 -b core -o runs/exp1 -- --set train.epochs=5
#   launch/local.sh -n 1 -c configs/smoke.toml          # one rank: plain python, no mpiexec
#
# Exit code: the trainer's (0 done, 75 preempted by SIGTERM/SIGUSR1 with a checkpoint written; run the
# same command again to resume, 1 error).
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
cores="$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN)"
ranks="${NPROC:-$cores}"
threads=""
config=""
out=""
bind="none"
while getopts "n:t:c:o:b:h" option; do
  case "$option" in
    n) ranks="$OPTARG" ;;
    t) threads="$OPTARG" ;;
    c) config="$OPTARG" ;;
    o) out="$OPTARG" ;;
    b) bind="$OPTARG" ;;
    h) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "launch/local.sh: see launch/local.sh -h" >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[ "${1:-}" = "--" ] && shift

case "$ranks" in ''|*[!0-9]*|0) echo "launch/local.sh: -n $ranks must be a positive integer" >&2; exit 2 ;; esac
[ -z "$threads" ] && threads=$(( cores / ranks > 0 ? cores / ranks : 1 ))
case "$threads" in ''|*[!0-9]*|0) echo "launch/local.sh: -t $threads must be a positive integer" >&2; exit 2 ;; esac
case "$bind" in core|socket|none) ;; *) echo "launch/local.sh: -b $bind must be core, socket or none" >&2; exit 2 ;; esac
if [ -n "$config" ] && [ ! -f "$config" ]; then
  echo "launch/local.sh: config $config not found (see configs/)" >&2; exit 2
fi

python="${PYTHON:-}"
if [ -z "$python" ]; then
  if [ -x "$here/.venv/bin/python" ]; then python="$here/.venv/bin/python"; else python="python3"; fi
fi
mpiexec="${MPIEXEC:-$(dirname "$(command -v "$python")")/mpiexec}"
[ -x "$mpiexec" ] || mpiexec="$(command -v mpiexec || true)"

# Every BLAS library reads one of these; the trainer leaves user-set values alone.
export OMP_NUM_THREADS="$threads" OPENBLAS_NUM_THREADS="$threads" MKL_NUM_THREADS="$threads"

train_args=()
[ -n "$config" ] && train_args+=(--config "$config")
if [ -n "$out" ]; then
  train_args+=(--out "$out" --resume auto)  # no checkpoint in OUT yet: starts fresh
fi
train_args+=("$@")

echo "launch/local.sh: $ranks rank(s) x $threads BLAS thread(s), bind=$bind" >&2
if [ "$ranks" -eq 1 ]; then
  exec "$python" -m ddp_edf.train "${train_args[@]}"
fi
if [ -z "$mpiexec" ]; then
  echo "launch/local.sh: no mpiexec found; pip install mpich (or: make venv), or run with -n 1" >&2
  exit 2
fi
bind_args=()
[ "$bind" != "none" ] && bind_args=(-bind-to "$bind")
# shellcheck disable=SC2086  # MPIEXEC_ARGS is a list of options
exec "$mpiexec" -n "$ranks" "${bind_args[@]}" ${MPIEXEC_ARGS:-} "$python" -m ddp_edf.train "${train_args[@]}"
