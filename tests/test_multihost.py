"""Several hosts for real: a Slurm cluster of network namespaces on this machine (tests/cluster/
netns_cluster.sh), each node its own host name, network link and slurmd.

As root with network namespaces (CI), the module starts two nodes and tears them down afterwards;
elsewhere it is skipped with the reason.  Inter-node MPI data must cross the links: the tests set
MPICH_CH4_NETMOD=ofi for jobs on several nodes (the mpich wheel's default UCX transports see one
machine and move the data through shared memory) and check the bytes the links carried.  Jobs are
started by srun (Slurm's PMI) and by the venv's mpiexec with a hostfile inside the allocation.
"""

import hashlib
import itertools
import json
import re
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from idx_files import write_dataset

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "tests/cluster/netns_cluster.sh"
NODES = ("ddpn1", "ddpn2")
ACROSS_HOSTS = {"MPICH_CH4_NETMOD": "ofi"}     # inter-node MPI data over the links
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def can_make_namespaces() -> str | None:
    """None if this process can build the cluster, else why not."""
    if os.geteuid() != 0:
        return "needs root to make network namespaces"
    for tool in ("ip", "unshare", "nsenter"):
        if not shutil.which(tool):
            return f"needs {tool} (iproute2, util-linux)"
    subprocess.run(["ip", "netns", "del", "ddp_edf_probe"], capture_output=True)    # left by a killed run
    probe = subprocess.run(["ip", "netns", "add", "ddp_edf_probe"], capture_output=True, text=True)
    subprocess.run(["ip", "netns", "del", "ddp_edf_probe"], capture_output=True)
    return None if probe.returncode == 0 else f"cannot make a network namespace here: {probe.stderr.strip()}"


def require_namespaces():
    """Skip (fail on CI, which runs as root) unless this process can make network namespaces."""
    reason = can_make_namespaces()
    if reason and os.environ.get("CI"):
        pytest.fail(f"CI runs as root and must build the cluster: {reason}")
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def cluster():
    require_namespaces()
    if not shutil.which("slurmctld") and not shutil.which("apt-get"):
        pytest.skip("needs Slurm (apt-get install slurmctld slurmd slurm-client munge)")
    base = Path("/tmp/ddp_edf_cluster")    # munged (user munge) must reach it: not under pytest's 0700 tmp
    env = {**os.environ, "CLUSTER_BASE": str(base)}
    subprocess.run(["bash", str(CLUSTER), "down"], capture_output=True, env=env, timeout=120)   # a leftover
    try:
        started = subprocess.run(["bash", str(CLUSTER), "up", "2"], capture_output=True, text=True, env=env,
                                 timeout=600)
        assert started.returncode == 0 and "ready: 2 nodes" in started.stdout, started.stdout + started.stderr
        first_job = int(re.search(r"FirstJobId=(\d+)", (base / "slurm.conf").read_text()).group(1))
        yield {**env, "SLURM_CONF": str(base / "slurm.conf")}
        for job, step, node in itertools.product(range(first_job, first_job + 100), range(16), range(len(NODES))):
            mpich_segment(job, step, node).unlink(missing_ok=True)     # left by the ranks the tests killed
    finally:
        subprocess.run(["bash", str(CLUSTER), "down"], capture_output=True, env=env, timeout=120)


def link_bytes() -> int:
    """Bytes delivered to the nodes over their links so far (each byte between nodes counted once)."""
    return sum(int(Path(f"/sys/class/net/ddp-{n}/statistics/tx_bytes").read_text()) for n in NODES)


def srun(env, *command, nodes=2, per_node=2, timeout=300):
    try:
        result = subprocess.run(["srun", f"--nodes={nodes}", f"--ntasks-per-node={per_node}", "--mpi=pmi2",
                                 "--kill-on-bad-exit=1", "--time=5", *command], capture_output=True, text=True,
                                cwd=ROOT, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        subprocess.run(["scancel", "--user=root"], env=env, timeout=30)   # free the nodes for the next tests
        raise
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout


def mpiexec_in_allocation(env, folder, *command, nodes=2, per_node=2, timeout=300):
    """The venv's mpiexec (Hydra) in a batch job, given a hostfile of the allocation's nodes."""
    folder.mkdir(parents=True, exist_ok=True)
    script, log = folder / "mpiexec.sh", folder / "mpiexec.out"
    script.write_text(f"""#!/bin/bash
scontrol show hostnames "$SLURM_JOB_NODELIST" > {folder}/hostfile
exec {Path(sys.executable).parent / "mpiexec"} -f {folder}/hostfile -ppn {per_node} -n {nodes * per_node} "$@"
""")
    result = subprocess.run(["sbatch", "--wait", f"--nodes={nodes}", f"--ntasks-per-node={per_node}", "--time=5",
                             f"--output={log}", str(script), *command], capture_output=True, text=True, cwd=ROOT,
                            env=env, timeout=timeout)
    output = log.read_text() if log.exists() else ""
    assert result.returncode == 0, output[-3000:] + result.stderr[-2000:]
    assert (folder / "hostfile").read_text().split() == list(NODES[:nodes])
    return output


HOSTS_SCRIPT = str(ROOT / "tests/cluster/mpi_hosts.py")
LAUNCHERS = {"srun": lambda env, folder, *command: srun(env, *command),
             "mpiexec": mpiexec_in_allocation}


def test_mpi_sees_two_hosts_and_its_data_crosses_the_links(cluster, tmp_path):
    """An 8 MB Allreduce between two hosts delivers at least 8 MB to each, whether srun or mpiexec with a
    hostfile starts the ranks; with the mpich wheel's defaults it goes through shared memory and the
    links see almost nothing."""
    crossed = {}
    for name, launcher, env in (("srun, ofi", "srun", {**cluster, **ACROSS_HOSTS}), ("srun, defaults", "srun", cluster),
                                ("mpiexec, ofi", "mpiexec", {**cluster, **ACROSS_HOSTS})):
        before = link_bytes()
        output = LAUNCHERS[launcher](env, tmp_path / launcher, sys.executable, HOSTS_SCRIPT)
        crossed[name] = link_bytes() - before
        facts = json.loads([line for line in output.splitlines() if line.startswith("[{")][-1])
        assert sorted(f["host"] for f in facts) == ["ddpn1", "ddpn1", "ddpn2", "ddpn2"], facts
        assert all(f["shared_group"] == 2 and f["allreduce_ok"] for f in facts), facts
    assert crossed["srun, ofi"] >= 16 << 20 and crossed["mpiexec, ofi"] >= 16 << 20, crossed
    assert crossed["srun, defaults"] < 1 << 20, crossed


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_training_across_two_hosts_is_bit_identical_to_one_process(cluster, tmp_path, launcher):
    write_dataset(tmp_path / "d", n_train=450, n_test=70, seed=3)
    arguments = ["-m", "ddp_edf.train", "--set", f"data.dataset=idx:{tmp_path / 'd'}", "--set", "data.dev_size=50",
                 "--set", "model.hidden=[256]", "--set", "train.global_batch=24", "--set", "dist.chunk=5",
                 "--set", "dist.deterministic=true", "--set", "train.epochs=3", "--set", "train.seed=2",
                 "--set", "dist.timeout_s=60", "--set", "log.every=20"]
    env = {**cluster, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    single = subprocess.run([sys.executable, *arguments, "--out", str(tmp_path / "one")], capture_output=True,
                            text=True, cwd=ROOT, env=env, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    before = link_bytes()
    LAUNCHERS[launcher]({**env, **ACROSS_HOSTS}, tmp_path / "job", sys.executable, *arguments,
                        "--out", str(tmp_path / "two-hosts"))
    crossed = link_bytes() - before
    digests = {name: hashlib.sha256((tmp_path / name / "model.npz").read_bytes()).hexdigest()
               for name in ("one", "two-hosts")}
    assert digests["one"] == digests["two-hosts"]
    parameters = 16 * 256 + 256 + 256 * 10 + 10     # 4x4 images, 256 hidden units, 10 classes
    assert crossed > 3 * 17 * parameters * 8, f"{crossed} bytes crossed the links in 51 steps"   # float64 sums


def mpich_segment(job: str, step: int, node: int = 0) -> Path:
    """The /dev/shm file MPICH maps on a node for a Slurm job step: named after FNV-1a("JOBID.STEP")."""
    digest = 2166136261
    for byte in f"{job}.{step}".encode():
        digest = ((digest ^ byte) * 16777619) & 0xFFFFFFFF
    return Path(f"/dev/shm/mpich_shm_{digest:x}_{node}")


def test_a_job_is_not_hurt_by_shared_memory_its_id_left_in_a_killed_run(cluster, tmp_path):
    """Ranks that are killed leave MPICH's segment in /dev/shm, named after "JOBID.STEP", and a requeued
    job keeps its id: its new ranks would attach to the stale segment and fail in MPI_Init.  A segment
    left by killed ranks, put under the names the next jobs' steps will use, breaks a plain srun job; the
    job of launch/slurm.sbatch removes it first and completes."""
    killed = subprocess.run(["srun", "--nodes=1", "--ntasks=2", "--mpi=pmi2", "--time=2", sys.executable, "-c",
                             "import os; from mpi4py import MPI; MPI.COMM_WORLD.Barrier(); "
                             "print(os.environ['SLURM_JOB_ID'], flush=True); os.kill(os.getpid(), 9)"],
                            capture_output=True, text=True, cwd=ROOT, env=cluster, timeout=120)
    stale = mpich_segment(killed.stdout.split()[0], 0)
    assert stale.exists(), (killed.stdout, killed.stderr, sorted(Path("/dev/shm").iterdir()))

    def held(*command):
        result = subprocess.run(["sbatch", "--parsable", "--hold", "--nodes=1", "--ntasks-per-node=2", "--time=2",
                                 *command], capture_output=True, text=True, cwd=ROOT,
                                env={**cluster, "PYTHON": sys.executable, "OUT": str(tmp_path / "run")}, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip().split(";")[0]

    def release_and_wait(job, log):
        for step in (0, 1):     # the job's first two steps: srun starts the ranks in one of them
            shutil.copyfile(stale, mpich_segment(job, step))
        subprocess.run(["scontrol", "release", job], check=True, env=cluster, timeout=30)
        wait_for(lambda: job_state(cluster, job).get("JobState") in ("COMPLETED", "FAILED", "TIMEOUT", "CANCELLED"),
                 f"job {job} to end", 200, log)
        return job_state(cluster, job)["JobState"]

    plain_log, trainer_log = tmp_path / "plain.out", tmp_path / "trainer.out"
    planted = []
    try:
        plain = held(f"--output={plain_log}", "--wrap", f"srun --mpi=pmi2 --kill-on-bad-exit=1 {sys.executable} {HOSTS_SCRIPT}")
        planted += [mpich_segment(plain, 0), mpich_segment(plain, 1)]
        assert release_and_wait(plain, plain_log) != "COMPLETED", plain_log.read_text()
        arguments = small_run(tmp_path, "--set", "train.epochs=1")
        trainer = held(f"--output={trainer_log}", "launch/slurm.sbatch", "configs/smoke.toml", *arguments)
        planted += [mpich_segment(trainer, 0), mpich_segment(trainer, 1)]
        assert release_and_wait(trainer, trainer_log) == "COMPLETED", trainer_log.read_text()
        assert not any(segment.exists() for segment in planted[2:])
    finally:
        for segment in [stale, *planted]:
            segment.unlink(missing_ok=True)


def small_run(tmp_path, *extra):
    write_dataset(tmp_path / "d", n_train=450, n_test=70, seed=3)
    return ["--set", f"data.dataset=idx:{tmp_path / 'd'}", "--set", "data.dev_size=50", "--set", "model.hidden=[256]",
            "--set", "train.global_batch=24", "--set", "dist.chunk=5", "--set", "dist.deterministic=true",
            "--set", "train.seed=2", "--set", "dist.timeout_s=10", "--set", "log.every=20", *extra]


def one_process(env, tmp_path, arguments):
    out = tmp_path / "one"
    result = subprocess.run([sys.executable, "-m", "ddp_edf.train", "--config", "configs/smoke.toml", "--out", str(out),
                             *arguments], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return hashlib.sha256((out / "model.npz").read_bytes()).hexdigest()


def sbatch(env, out, log, nodes, arguments, *options):
    env = {**env, **(ACROSS_HOSTS if nodes > 1 else {})}
    result = subprocess.run(["sbatch", "--parsable", f"--nodes={nodes}", "--ntasks-per-node=2", "--time=00:10:00", *options,
                             f"--output={log}", "launch/slurm.sbatch", "configs/smoke.toml", *arguments],
                            capture_output=True, text=True, cwd=ROOT, env={**env, "OUT": str(out), "PYTHON": sys.executable},
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().split(";")[0]


def checkpoints(out):
    return sorted(int(p.name[5:13]) for p in (out / "checkpoints").glob("step-*.npz")) if (out / "checkpoints").is_dir() else []


def wait_for(predicate, what, timeout, log):
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout} s waiting for {what}\n{log.read_text() if log.exists() else ''}")


def job_state(env, job):
    shown = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True, env=env, timeout=30)
    return dict(field.split("=", 1) for field in shown.stdout.split() if "=" in field)


def test_a_two_host_job_preempted_twice_resumes_on_one_host_and_ends_as_one_process(cluster, tmp_path):
    """USR1 (as before a time limit) and SIGTERM (as Slurm's preemption) to a 2-node job: each time every
    rank checkpoints and the job requeues itself.  After the second, the requeued job is cancelled and
    the run continues as a 1-node job in the same folder, as a user moving to a smaller allocation does."""
    env = {**cluster, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    arguments = small_run(tmp_path, "--set", "train.epochs=120", "--set", "checkpoint.every_steps=40")
    out, log = tmp_path / "run", tmp_path / "job.out"
    job = sbatch(env, out, log, 2, arguments)
    wait_for(lambda: checkpoints(out), "the first checkpoint", 120, log)
    subprocess.run(["scancel", "--signal=USR1", job], check=True, env=env, timeout=30)
    wait_for(lambda: "restart 1" in log.read_text(), "the requeued job to start", 240, log)
    first_stop = max(checkpoints(out))
    wait_for(lambda: max(checkpoints(out)) > first_stop, "a checkpoint after the restart", 120, log)
    subprocess.run(["scancel", "--signal=TERM", job], check=True, env=env, timeout=30)
    wait_for(lambda: job_state(env, job).get("JobState") == "PENDING", "the job to be requeued", 120, log)
    subprocess.run(["scancel", job], check=True, env=env, timeout=30)
    second_stop = max(checkpoints(out))
    smaller_log = tmp_path / "one-node.out"
    smaller = sbatch(env, out, smaller_log, 1, arguments)
    wait_for(lambda: job_state(env, smaller).get("JobState") in ("COMPLETED", "FAILED", "CANCELLED"),
             "the 1-node job to end", 400, smaller_log)
    text, resumed = log.read_text(), smaller_log.read_text()
    assert job_state(env, smaller)["JobState"] == "COMPLETED", resumed
    assert text.count("checkpoint written; requeueing") == 2 and "(restart 1)" in text, text
    assert re.findall(r"at step (\d+) \(saved by 4 ranks\)", text) == [str(first_stop)], text
    assert f"at step {second_stop} (saved by 4 ranks)" in resumed and "ranks: 2 (mpi)" in resumed, resumed
    digest = hashlib.sha256((out / "model.npz").read_bytes()).hexdigest()
    assert digest == one_process(env, tmp_path, arguments)


def test_a_lost_node_ends_the_job_in_time_and_the_run_resumes_on_the_remaining_node(cluster, tmp_path):
    """ddpn2's link goes down mid-run.  The ranks waiting for it in the Allreduce time out (dist.timeout_s
    = 10) and abort; Slurm marks the node down (SlurmdTimeout = 30) and requeues the job (--requeue),
    which keeps its 4 tasks and so waits for ddpn2.  Cancelled, and the run resubmitted on the remaining
    node, it resumes from the newest checkpoint and ends as one process would."""
    import time
    env = {**cluster, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    arguments = small_run(tmp_path, "--set", "train.epochs=400", "--set", "checkpoint.every_steps=40")
    out, log = tmp_path / "run", tmp_path / "job.out"
    job = sbatch(env, out, log, 2, arguments)
    wait_for(lambda: len(checkpoints(out)) >= 2, "two checkpoints", 120, log)
    subprocess.run(["ip", "link", "set", "ddp-ddpn2", "down"], check=True)
    lost = time.monotonic()
    try:
        wait_for(lambda: job_state(env, job).get("JobState") != "RUNNING", "the job to stop running", 90, log)
        stopped_after, newest = time.monotonic() - lost, max(checkpoints(out))
        wait_for(lambda: job_state(env, job).get("JobState") == "PENDING", "Slurm to requeue the job", 90, log)
        requeued = job_state(env, job)
        assert requeued["NumNodes"] == "2" and requeued["Restarts"] == "1", requeued   # it waits for ddpn2
        subprocess.run(["scancel", job], check=True, env=env, timeout=30)
        resumed_log = tmp_path / "resumed.out"
        resumed = sbatch(env, out, resumed_log, 1, arguments, "--exclude=ddpn2")
        wait_for(lambda: job_state(env, resumed).get("JobState") in ("COMPLETED", "FAILED", "CANCELLED"),
                 "the resumed job to end", 400, resumed_log)
    finally:
        subprocess.run(["ip", "link", "set", "ddp-ddpn2", "up"], check=True)
    text = log.read_text()
    assert stopped_after <= 60, f"the job ran on for {stopped_after:.0f} s after the node was lost\n{text}"
    assert "watchdog: waited" in text and "which the other ranks did not join" in text, text
    assert "DUE TO NODE FAILURE" in text, text
    assert job_state(env, resumed)["JobState"] == "COMPLETED", resumed_log.read_text()
    assert f"at step {newest} (saved by 4 ranks)" in resumed_log.read_text(), resumed_log.read_text()
    digest = hashlib.sha256((out / "model.npz").read_bytes()).hexdigest()
    assert digest == one_process(env, tmp_path, arguments)
