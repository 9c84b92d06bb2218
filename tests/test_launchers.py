"""launch/local.sh: ranks, threads per rank, config, OUT (resumed when it holds a checkpoint), bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOCAL = ROOT / "launch/local.sh"


def local(*args, timeout=120):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PMI_", "MPI_LOCAL", "OMPI_")) and k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    env["PYTHON"] = sys.executable
    return subprocess.run(["bash", str(LOCAL), *args], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=timeout)


@pytest.fixture
def idx_args(isolated_data):
    from idx_files import write_dataset
    write_dataset(isolated_data / "d", n_train=300, n_test=40)
    return ["--set", f"data.dataset=idx:{isolated_data / 'd'}", "--set", "data.dev_size=40", "--set",
            "model.hidden=[8]", "--set", "train.global_batch=20", "--set", "train.seed=4"]


def test_two_ranks_one_thread_each_then_resume_longer(idx_args, tmp_path):
    out = tmp_path / "run"
    first = local("-n", "2", "-t", "1", "-o", str(out), "--", *idx_args, "--set", "train.epochs=1")
    assert first.returncode == 0, first.stderr
    log = (out / "train.log").read_text()
    assert "ranks: 2 (mpi)" in log and "OPENBLAS_NUM_THREADS=1" in log
    again = local("-n", "2", "-o", str(out), "--", *idx_args, "--set", "train.epochs=2")
    assert again.returncode == 0, again.stderr
    log = (out / "train.log").read_text()
    assert "resumed from" in log and "at step 13" in log
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 26


def test_one_rank_runs_without_mpiexec(idx_args, tmp_path):
    result = local("-n", "1", "-o", str(tmp_path / "one"), "--", *idx_args, "--set", "train.epochs=1")
    assert result.returncode == 0, result.stderr
    assert "ranks: 1 (serial)" in (tmp_path / "one/train.log").read_text()


@pytest.mark.parametrize("args, message", [(["-n", "0"], "-n 0 must be a positive integer"),
                                           (["-t", "x"], "-t x must be a positive integer"),
                                           (["-c", "nope.toml"], "config nope.toml not found")])
def test_bad_arguments_are_one_line_errors(args, message):
    result = local(*args)
    assert result.returncode == 2 and message in result.stderr
