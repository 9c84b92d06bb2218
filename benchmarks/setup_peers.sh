#!/usr/bin/env bash
# Virtualenvs for the systems ddp_edf is compared with (kept apart from .venv, which they would bloat or,
# for Chainer, downgrade): .bench/torch (PyTorch, CPU) and .bench/chainer (Chainer 7.8.1 + ChainerMN).
# Usage: benchmarks/setup_peers.sh [torch] [chainer]      (default: both; an existing venv is kept)
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
wanted=("$@"); [ ${#wanted[@]} -eq 0 ] && wanted=(torch chainer)
for system in "${wanted[@]}"; do
  venv=".bench/$system"
  [ -f "$venv/.installed" ] && { echo "$venv: ready"; continue; }
  "$python" -m venv "$venv"
  case "$system" in
    torch)
      # Where a local wheel directory holds the CPU wheel, pip takes it from there (find-links).  Elsewhere the
      # default Linux wheel brings CUDA libraries (GBs): set TORCH_INDEX to PyTorch's CPU-only wheel
      # index where it is reachable.
      "$venv/bin/pip" install -q numpy
      "$venv/bin/pip" install -q "torch==2.13.0" ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} ;;
    chainer)
      # Chainer 7.8.1 predates NumPy 2 and setuptools 70; ChainerMN talks MPI through mpi4py.
      "$venv/bin/pip" install -q 'setuptools<70' wheel 'numpy<2' mpi4py mpich
      "$venv/bin/pip" install -q --no-build-isolation chainer==7.8.1 ;;
    *) echo "unknown system $system (torch, chainer)" >&2; exit 2 ;;
  esac
  touch "$venv/.installed"
  echo "$venv: installed"
done
