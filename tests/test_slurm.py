"""launch/slurm.sbatch on a real one-node Slurm cluster: a smoke job, and a job preempted twice.

The cluster: one that already answers `sinfo` is used as it is; otherwise, as root with apt-get (CI),
tests/slurm/cluster.sh installs and starts slurmctld + slurmd + munge, and stops them afterwards.
Elsewhere the tests are skipped with the reason.  The data is the real Fashion-MNIST (configs/smoke.toml).
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "tests/slurm/cluster.sh"
SBATCH = ROOT / "launch/slurm.sbatch"
FAILED_STATES = {"FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}
pytestmark = pytest.mark.timeout(900)


def slurm_answers() -> bool:
    if not shutil.which("sinfo"):
        return False
    result = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    return result.returncode == 0 and bool(re.search(r"idle|mixed|alloc", result.stdout))


@pytest.fixture(scope="module")
def slurm():
    if not Path("/usr/share/datasets/fashion-mnist").is_dir() and not os.environ.get("DDP_EDF_DATA"):
        pytest.skip("needs Fashion-MNIST: apt-get install dataset-fashion-mnist")
    if slurm_answers():
        yield "existing"
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("Slurm is not running and cannot be started here (needs root and apt-get, as in CI); "
                    "start one with tests/slurm/cluster.sh start")
    started = subprocess.run(["bash", str(CLUSTER), "start"], capture_output=True, text=True, timeout=600)
    assert started.returncode == 0, f"could not start Slurm:\n{started.stdout}\n{started.stderr}"
    try:
        yield "started"
    finally:
        subprocess.run(["bash", str(CLUSTER), "stop"], capture_output=True, timeout=60)


def submit(out, log, *train_args, ntasks=2):
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable}
    result = subprocess.run(["sbatch", "--parsable", f"--ntasks={ntasks}", "--time=00:10:00", f"--output={log}",
                             str(SBATCH), "configs/smoke.toml", *train_args],
                            capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().split(";")[0]


def job_field(job_id, field):
    shown = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=30)
    match = re.search(rf"\b{field}=(\S+)", shown.stdout)
    return match.group(1) if match else None


def wait_for(predicate, what, timeout, log=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    output = Path(log).read_text() if log and Path(log).exists() else ""
    pytest.fail(f"timed out after {timeout} s waiting for {what}\n{output}")


def wait_until_done(job_id, log, timeout=300):
    def finished():
        state = job_field(job_id, "JobState")
        if state in FAILED_STATES:
            pytest.fail(f"job {job_id} ended {state}:\n{Path(log).read_text() if Path(log).exists() else ''}")
        return state == "COMPLETED"
    wait_for(finished, f"job {job_id} to complete", timeout, log)


def records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def checkpoints(out):
    folder = out / "checkpoints"
    return sorted(int(p.name[5:13]) for p in folder.glob("step-*.npz")) if folder.is_dir() else []


def test_smoke_job_on_two_tasks(slurm, tmp_path):
    out, log = tmp_path / "smoke", tmp_path / "smoke.out"
    job = submit(out, log)
    wait_until_done(job, log)
    text = log.read_text()
    assert "ranks: 2 (mpi)" in text, text
    test = [r for r in records(out) if r["split"] == "test"]
    assert len(test) == 1 and test[0]["step"] == 60 and test[0]["error"] < 0.3, test
    assert (out / "model.npz").exists() and checkpoints(out) == [60]


def test_preempted_job_requeues_and_ends_equal_to_an_uninterrupted_run(slurm, tmp_path):
    args = ["--set", "model.hidden=[1024, 1024]", "--set", "train.epochs=30", "--set", "checkpoint.every_steps=50",
            "--set", "log.every=50"]
    out, log = tmp_path / "preempted", tmp_path / "preempted.out"
    job = submit(out, log, *args)
    # 1: scancel --signal=USR1 reaches the ranks (srun forwards), as Slurm's preemption does.
    wait_for(lambda: checkpoints(out), "the first checkpoint", 120, log)
    subprocess.run(["scancel", "--signal=USR1", job], check=True, timeout=30)
    wait_for(lambda: "restart 1" in log.read_text(), "the requeued job to start", 240, log)
    first_stop = max(checkpoints(out))
    # 2: to the batch script only, as --signal=B:USR1@120 does before the time limit; its trap forwards it.
    wait_for(lambda: max(checkpoints(out)) > first_stop, "a checkpoint after the restart", 120, log)
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], check=True, timeout=30)
    wait_for(lambda: "restart 2" in log.read_text(), "the second requeue", 240, log)
    wait_until_done(job, log)
    text = log.read_text()
    assert text.count("checkpoint written; requeueing") == 2 and "USR1 received" in text, text
    assert len(re.findall(r"resumed from \S+ at step \d+", text)) == 2, text
    assert job_field(job, "Restarts") == "2"

    reference = tmp_path / "reference"
    mpiexec = str(Path(sys.executable).parent / "mpiexec")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "SLURM_", "MPI_LOCAL"))}
    run = subprocess.run([mpiexec, "-n", "2", sys.executable, "-m", "ddp_edf.train", "--config", "configs/smoke.toml",
                          "--out", str(reference), *args], capture_output=True, text=True, cwd=ROOT, env=env,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    with np.load(reference / "model.npz") as expected, np.load(out / "model.npz") as resumed:
        for name in expected.files:
            np.testing.assert_array_equal(resumed[name], expected[name], err_msg=name)
    assert [r["loss"] for r in records(out) if r["split"] == "test"] == \
           [r["loss"] for r in records(reference) if r["split"] == "test"]
