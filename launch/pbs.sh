#!/bin/bash
# ddp_edf as a PBS Pro / OpenPBS job (an example: unlike launch/slurm.sbatch, this script is not
# tested on a real scheduler).
#
# Usage:  qsub -v CONFIG=configs/fashion_mlp.toml,TRAIN_ARGS="--set train.epochs=10" launch/pbs.sh
# Environment: CONFIG (default configs/digits_mlp.toml), TRAIN_ARGS, OUT (default runs/pbs-<job id>),
#   PYTHON (default $PBS_O_WORKDIR/.venv/bin/python).
# PBS sends SIGTERM on qdel and preemption (then SIGKILL after kill_delay): the trainer finishes its step,
# checkpoints and exits with 75, and this script reruns the job (qrerun; -r y makes it rerunnable), which
# continues in the same OUT with --resume auto.
#PBS -N ddp_edf
#PBS -l select=1:ncpus=2:mpiprocs=2
#PBS -l walltime=01:00:00
#PBS -r y
#PBS -j oe
set -uo pipefail

cd "${PBS_O_WORKDIR:-.}"
python="${PYTHON:-$PWD/.venv/bin/python}"
out="${OUT:-runs/pbs-${PBS_JOBID%%.*}}"
ranks=$(wc -l < "${PBS_NODEFILE:-/dev/null}" 2>/dev/null || echo 1)
ranks=$(( ranks > 0 ? ranks : 1 ))
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

# shellcheck disable=SC2086  # TRAIN_ARGS is a list of arguments
"$(dirname "$python")/mpiexec" -n "$ranks" -f "${PBS_NODEFILE}" "$python" -m ddp_edf.train \
  --config "${CONFIG:-configs/digits_mlp.toml}" --out "$out" --resume auto ${TRAIN_ARGS:-} &
ranks_pid=$!
trap 'kill -TERM "$ranks_pid" 2>/dev/null' TERM
wait "$ranks_pid"; status=$?
while [ "$status" -gt 128 ]; do wait "$ranks_pid"; again=$?; [ "$again" -eq 127 ] && break; status=$again; done
if [ "$status" -eq 75 ]; then
  echo "pbs.sh: checkpoint written; rerunning ${PBS_JOBID:-?} to continue in $out"
  qrerun "$PBS_JOBID"
fi
exit "$status"
