"""Whole jobs under mpiexec: faults end the job (never a hang), and real-data accuracy matches one process.

These tests start mpiexec themselves (from the same venv as this Python), each under a deadline.
"""

import json
import re
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from idx_files import write_dataset

ROOT = Path(__file__).resolve().parents[1]
MPIEXEC = str(Path(sys.executable).parent / "mpiexec")
if not os.path.exists(MPIEXEC):
    pytest.skip("mpiexec is not in this venv: pip install mpich", allow_module_level=True)


@pytest.fixture
def job_args(isolated_data):
    write_dataset(isolated_data / "d", n_train=450, n_test=50)
    return ["--set", f"data.dataset=idx:{isolated_data / 'd'}", "--set", "data.dev_size=50",
            "--set", "model.hidden=[8]", "--set", "train.global_batch=10", "--set", "train.seed=1",
            "--set", "train.epochs=50"]


def clean_env():
    return {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "PMIX_", "MPI_LOCAL"))}


def run_job(ranks, script_args, timeout=60):
    start = time.monotonic()
    result = subprocess.run([MPIEXEC, "-n", str(ranks), sys.executable, *script_args], capture_output=True,
                            text=True, cwd=ROOT, timeout=timeout, env=clean_env())
    return result, time.monotonic() - start


def injected(mode, rank, step, out, job_args, *extra):
    return ["tests/fault_injection.py", mode, str(rank), str(step), "--", "--out", str(out), *job_args, *extra]


def test_one_rank_raising_aborts_the_job_with_its_traceback(job_args, tmp_path):
    result, seconds = run_job(4, injected("raise", 2, 7, tmp_path / "r", job_args))
    assert result.returncode != 0
    assert seconds < 10
    assert "[rank 2] RuntimeError: injected failure on rank 2 at step 7" in result.stderr, result.stderr[-3000:]
    assert "[rank 2] Traceback" in result.stderr, result.stderr[-3000:]


def test_diverged_parameters_are_detected(job_args, tmp_path):
    result, _ = run_job(3, injected("diverge", 1, 4, tmp_path / "r", job_args, "--set", "dist.check_every=5"))
    assert result.returncode != 0
    assert "parameters diverged at step 5: rank 1 differs from rank 0 first in 'fc1.b'" in result.stderr, result.stderr[-3000:]


def test_stuck_rank_fires_the_watchdog(job_args, tmp_path):
    result, seconds = run_job(2, injected("hang", 1, 3, tmp_path / "r", job_args, "--set", "dist.timeout_s=2"))
    assert result.returncode != 0
    assert seconds < 20
    assert "ddp_edf: error: watchdog: waited" in result.stderr, result.stderr[-3000:]
    assert "in Allreduce (Trainer.fit > Trainer._loop > DataParallel.step > Allreduce.reduce" in result.stderr
    assert "faulty_step" in result.stderr       # the waiting rank's stack was dumped


def test_sigint_to_mpiexec_ends_every_rank_with_130(job_args, tmp_path):
    """Ctrl-C: mpiexec forwards SIGINT to the ranks, each ends at once (even inside an MPI call) with 130."""
    out = tmp_path / "sigint-run"
    process = subprocess.Popen([MPIEXEC, "-n", "3", sys.executable, "-m", "ddp_edf.train", "--out", str(out),
                                *job_args, "--set", "train.epochs=100000"], cwd=ROOT, env=clean_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not (out / "metrics.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert (out / "metrics.jsonl").exists(), "the job did not start"
    process.send_signal(signal.SIGINT)
    try:
        _, stderr = process.communicate(timeout=15)
    finally:
        process.kill()
    time.sleep(0.5)
    survivors = subprocess.run(["pgrep", "-f", str(out)], capture_output=True, text=True).stdout.split()
    assert process.returncode == 130 and not survivors, stderr
    assert stderr.count("ddp_edf: interrupted (Ctrl-C): every rank stops now") == 1, stderr
    assert "Traceback" not in stderr and "BAD TERMINATION" not in stderr, stderr


FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.slow
@pytest.mark.skipif(not FASHION.is_dir() and not os.environ.get("CI"), reason="dataset-fashion-mnist not installed")
def test_two_ranks_reach_single_process_accuracy_on_fashion_mnist(tmp_path):
    figures = {}
    for ranks in (1, 2):
        out = tmp_path / f"w{ranks}"
        command = ["-m", "ddp_edf.train", "--config", "configs/fashion_mlp.toml", "--out", str(out)]
        if ranks == 1:
            result = subprocess.run([sys.executable, *command], capture_output=True, text=True, cwd=ROOT,
                                    env=clean_env(), timeout=300)
        else:
            result, _ = run_job(2, command, timeout=300)
        assert result.returncode == 0, result.stderr
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        figures[ranks] = [r for r in records if r["split"] == "test"][-1]
    assert figures[1]["epoch"] == figures[2]["epoch"] == 1
    accuracy = {w: 1 - f["error"] for w, f in figures.items()}
    assert accuracy[2] >= 0.85 and abs(accuracy[2] - accuracy[1]) <= 0.005, accuracy


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_preemption_signal_checkpoints_and_the_run_resumes(job_args, tmp_path, signum):
    out = tmp_path / "preempted"
    process = subprocess.Popen([MPIEXEC, "-n", "2", sys.executable, "-m", "ddp_edf.train", "--out", str(out),
                                *job_args, "--set", "train.epochs=100000"], cwd=ROOT, env=clean_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 30
    while not (out / "metrics.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    process.send_signal(signum)
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 75, output
    checkpoints = sorted((out / "checkpoints").glob("step-*.npz"))
    assert len(checkpoints) == 1 and "stopped by a signal" in output
    step = int(checkpoints[0].stem.split("-")[1])
    result, _ = run_job(2, ["-m", "ddp_edf.train", "--out", str(out), "--resume", "auto", *job_args,
                            "--set", "train.epochs=100000", "--set", f"train.max_steps={step + 20}"])
    assert result.returncode == 0, result.stderr
    assert f"resumed from {checkpoints[0]} at step {step}" in result.stdout
    assert (out / f"checkpoints/step-{step + 20:08d}.npz").exists() and (out / "model.npz").exists()


def test_resume_at_another_world_size_stays_within_tolerance(job_args, tmp_path):
    import numpy as np
    common = [*job_args, "--set", "train.epochs=2", "--set", "optim.lr=0.05"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    serial = [sys.executable, "-m", "ddp_edf.train", "--dist", "serial"]
    assert subprocess.run([*serial, "--out", str(whole), *common], cwd=ROOT, env=clean_env()).returncode == 0
    assert subprocess.run([*serial, "--out", str(parts), *common, "--set", "train.max_steps=33"], cwd=ROOT,
                          env=clean_env()).returncode == 0
    result, _ = run_job(3, ["-m", "ddp_edf.train", "--out", str(parts), "--resume", "auto", *common])
    assert result.returncode == 0, result.stderr
    with np.load(whole / "model.npz") as a, np.load(parts / "model.npz") as b:
        for name in a.files:
            difference = np.linalg.norm(b[name] - a[name]) / np.linalg.norm(a[name])
            assert difference <= 1e-5, (name, difference)


API_SCRIPT = """
import sys, numpy as np
from ddp_edf import (SGD, Affine, Allreduce, DataParallel, EvalOptions, Input, LogOptions, Options, Parameter,
                     SoftmaxCrossEntropy, Trainer, TrainOptions, communicator)
mode = sys.argv[1]
comm = communicator(timeout_s=2)
if mode == "raise" and comm.rank == 1:
    np.load("/nonexistent/data.npy")                  # fails before any Trainer exists
n = 300 if mode != "uneven" or comm.rank == 0 else 240
X, Y = np.ones((n, 4), np.float32), np.zeros(n, np.int64)
if mode == "other" and comm.rank == 1:
    X[7, 2] = 0.5                                     # the same shapes, one value differs
x, y = Input("x"), Input("y")
loss = SoftmaxCrossEntropy(Affine(x, Parameter("W", np.zeros((4, 2))), Parameter("b", np.zeros(2))), y)
if mode == "step on rank 0":
    dp = DataParallel(loss, (x, y), Allreduce(comm))
    if comm.rank == 0:
        dp.step((X, Y), np.arange(10), SGD())
    sys.exit(0)
if mode == "trainer on rank 0" and comm.rank != 0:
    sys.exit(0)                                       # rank 1 leaves: rank 0 builds a Trainer alone
options = Options(train=TrainOptions(global_batch=10), log=LogOptions(echo=comm.rank == 0),     # echo may differ
                  eval=EvalOptions(batch=7 if mode == "other eval batch" and comm.rank == 1 else 1000))
out = sys.argv[2] if mode != "out on rank 0" or comm.rank == 0 else None
trainer = Trainer(loss, (x, y), (X, Y), optimizer=SGD(), comm=comm, options=options, out=out)
if mode == "fit on rank 0" and comm.rank != 0:
    sys.exit(0)                                       # rank 1 returns: only rank 0 calls fit
trainer.fit(epochs=1)
"""


@pytest.mark.parametrize("mode,expected", [
    ("raise", "[rank 1] FileNotFoundError"),
    ("uneven", "rank 1 has train_examples = 240 where rank 0 has 300"),
    ("other", "rank 1 has data CRC-32 = {'train': "),
    ("other eval batch", "rank 1 has eval.batch = 7 where rank 0 has 1000"),
    ("out on rank 0", "rank 1 has out = None where rank 0 has '")])
def test_a_script_failing_on_one_rank_or_with_other_data_ends_the_job(tmp_path, mode, expected):
    """Through the Python API: a rank that raises before the Trainer exists, or ranks given different
    data (other sizes, or other values), end the whole job at once with the reason (no hang until some timeout)."""
    script = tmp_path / "script.py"
    script.write_text(API_SCRIPT)
    result, seconds = run_job(2, [str(script), mode, tmp_path / "out"], timeout=60)
    assert result.returncode != 0 and seconds < 20
    assert expected in result.stderr, result.stderr[-3000:]
    if mode == "uneven":     # the same script with the same data trains (echo on rank 0 only is no difference)
        result, _ = run_job(2, [str(script), "fine", tmp_path / "fine"], timeout=60)
        assert result.returncode == 0 and (tmp_path / "fine" / "model.npz").exists(), result.stderr[-3000:]


@pytest.mark.parametrize("mode,call", [
    ("fit on rank 0", "in allgather (Trainer.fit > check_agreement"),
    ("trainer on rank 0", "in allgather (Trainer.__init__ > DataParallel.__init__ > check_agreement"),
    ("step on rank 0", "in Allreduce (DataParallel.step > Allreduce.reduce")])
def test_a_collective_one_rank_skips_ends_the_job_within_the_timeout_naming_the_call(tmp_path, mode, call):
    """Through the Python API, rank 1 skips a call rank 0 makes (and exits): rank 0 waits in that call's
    collective until communicator(timeout_s=2) ends the job, naming the call and the script's line."""
    script = tmp_path / "script.py"
    script.write_text(API_SCRIPT)
    result, seconds = run_job(2, [str(script), mode, tmp_path / "out"], timeout=60)
    assert result.returncode != 0 and seconds < 20, (seconds, result.stderr[-2000:])
    assert re.search(r"\[rank 0\] ddp_edf: error: watchdog: waited [23] s " + re.escape(call), result.stderr), \
        result.stderr[-3000:]
    assert "from script.py:" in result.stderr and "which the other ranks did not join" in result.stderr


@pytest.mark.parametrize("rank0,rank1,expected", [
    (["--set", "train.max_steps=5"], ["--set", "train.max_steps=6"], "rank 1 has train.max_steps = 6 where rank 0 has 5"),
    (["--init", "INIT"], [], "rank 1 has --init = None where rank 0 has"),
    ([], ["--set", "optim.lr=-1"], "[rank 1] ddp_edf: error: optim.lr = -1.0 must be > 0")])
def test_ranks_given_different_options_stop_with_one_clear_line(job_args, tmp_path, rank0, rank1, expected):
    """mpiexec's MPMD form gives each rank its own command line: the ranks compare their setup first, and
    a config error met by one rank only is printed by that rank."""
    np.savez(tmp_path / "init.npz", x=np.ones(1))
    rank0 = [str(tmp_path / "init.npz") if a == "INIT" else a for a in rank0]
    command = [sys.executable, "-m", "ddp_edf.train", "--out", str(tmp_path / "r"), *job_args]
    result = subprocess.run([MPIEXEC, "-n", "1", *command, *rank0, ":", "-n", "1", *command, *rank1],
                            capture_output=True, text=True, cwd=ROOT, timeout=60, env=clean_env())
    assert result.returncode != 0
    assert expected in result.stderr, result.stderr[-3000:]
    assert "Message truncated" not in result.stderr and "Traceback" not in result.stderr


def test_a_checkpoint_of_another_size_is_refused_before_any_collective(job_args, tmp_path):
    out = tmp_path / "r"
    result, _ = run_job(2, ["-m", "ddp_edf.train", "--out", str(out), *job_args, "--set", "train.max_steps=3"])
    assert result.returncode == 0, result.stderr[-2000:]
    path = next((out / "checkpoints").glob("*.npz"))
    with np.load(path) as archive:
        arrays = {k: archive[k] for k in archive.files}
    arrays["params"] = np.ones(7, np.float32)
    np.savez(path, **arrays)
    result, seconds = run_job(2, ["-m", "ddp_edf.train", "--out", str(out), *job_args, "--resume", str(path)])
    assert result.returncode != 0 and seconds < 30
    assert "'params' holds (7,) float32 values" in result.stderr and "do not match" not in result.stderr
    assert result.stderr.count("ddp_edf: error:") == 1, result.stderr[-3000:]


def test_dist_serial_under_mpiexec_ends_the_job_with_one_line(job_args, tmp_path):
    result, seconds = run_job(2, ["-m", "ddp_edf.train", "--dist", "serial", "--out", str(tmp_path / "r"), *job_args])
    assert result.returncode != 0 and seconds < 20
    assert "--dist serial in a job of 2 processes" in result.stderr, result.stderr[-3000:]
