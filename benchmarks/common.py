"""What every benchmark shares: the model, the data, the timing protocol, how to launch W ranks.

The model is the 784-256-10 relu MLP with softmax cross-entropy in float32, trained with SGD
(lr 0.05, momentum 0.9) on Fashion-MNIST's 60,000 training images (MNIST's shape) when Debian's
dataset-fashion-mnist is installed, else on random MNIST-shaped images (speed does not depend on the
pixel values).  Every system reads the same uint8 images and scales them to float32 / 255 per batch.

Importable from every venv (NumPy 1 or 2; no ddp_edf import here: peers must not depend on it).
"""

from __future__ import annotations

import gzip
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

N_IN, N_HIDDEN, N_CLASSES = 784, 256, 10
# What ddp_edf sums over ranks each step: the parameters plus its 2 flag slots (814 KB in float32)
GRADIENT = N_IN * N_HIDDEN + N_HIDDEN + N_HIDDEN * N_CLASSES + N_CLASSES + 2
LR, MOMENTUM = 0.05, 0.9
FASHION = Path("/usr/share/datasets/fashion-mnist")
ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _read_idx_gz(path: Path):
    import numpy as np
    data = gzip.decompress(path.read_bytes())
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * k: 8 + 4 * k], "big") for k in range(ndim))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_split(split="train"):
    """(images uint8 (n, 784), labels int64 (n,)): Fashion-MNIST if installed, else random (60k / 10k)."""
    import numpy as np
    prefix = "train" if split == "train" else "t10k"
    images, labels = FASHION / f"{prefix}-images-idx3-ubyte.gz", FASHION / f"{prefix}-labels-idx1-ubyte.gz"
    if images.exists() and labels.exists():
        return _read_idx_gz(images).reshape(-1, N_IN), _read_idx_gz(labels).astype(np.int64)
    n = 60000 if split == "train" else 10000
    rng = np.random.default_rng(0 if split == "train" else 1)
    return rng.integers(0, 256, (n, N_IN), dtype=np.uint8), rng.integers(0, N_CLASSES, n).astype(np.int64)


def data_source() -> str:
    return "fashion-mnist" if FASHION.is_dir() else "random MNIST-shaped images"


def shard(n: int, rank: int, world: int):
    """Contiguous part [start, stop) of n items for one rank (sizes differ by at most one)."""
    q, m = divmod(n, world)
    start = rank * q + min(rank, m)
    return start, start + q + (rank < m)


# -- The same training, checked ------------------------------------------------------------------
# A speed ratio means something only between systems that compute the same thing.  Before timing,
# compare_torch_ddp.py has every system train CHECK_STEPS steps of the benchmark's own batches from
# one initialisation, and compares where each lands with reference_training(): the same model,
# loss (mean over the GLOBAL batch), data, batch and momentum SGD written once more, plainly, in
# float64.  float32 systems land within ~1e-6 of it; a learning rate 1% off moves "moved" by ~1%,
# a sum instead of a mean over ranks or a missing bias by far more.

CHECK_STEPS = 10
CHECK_EXAMPLES = 2000   # the check's loss: the mean over the first training images
CHECK_RTOL = 1e-4
PARAMETER_NAMES = ("W1", "b1", "W2", "b2")   # W in (inputs, outputs) layout, as in x W + b


def initial_parameters(seed: int = 0) -> dict:
    """One initialisation for every system's check, float32 (biases non-zero, so a lost bias shows)."""
    import numpy as np
    rng = np.random.default_rng(seed)
    return {"W1": (rng.standard_normal((N_IN, N_HIDDEN)) * np.sqrt(2 / N_IN)).astype(np.float32),
            "b1": (0.1 * rng.standard_normal(N_HIDDEN)).astype(np.float32),
            "W2": (rng.standard_normal((N_HIDDEN, N_CLASSES)) * np.sqrt(2 / N_HIDDEN)).astype(np.float32),
            "b2": (0.1 * rng.standard_normal(N_CLASSES)).astype(np.float32)}


def save_initial(path, params: dict):
    import numpy as np
    np.savez(path, **params)


def load_initial(path) -> dict:
    """The check's initial parameters from an .npz (never unpickled), float32, (inputs, outputs) layout."""
    import numpy as np
    with np.load(path, allow_pickle=False) as archive:
        return {name: np.array(archive[name], dtype=np.float32) for name in PARAMETER_NAMES}


def _forward(params: dict, images):
    """x = pixels / 255, pre = x W1 + b1, h = relu(pre), scores = h W2 + b2, all in float64."""
    import numpy as np
    p = {name: np.asarray(v, dtype=np.float64) for name, v in params.items()}
    x = images.astype(np.float64) / 255.0
    pre = x @ p["W1"] + p["b1"]
    h = np.maximum(pre, 0.0)
    return x, pre, h, h @ p["W2"] + p["b2"]


def mean_cross_entropy(params: dict, images, labels) -> float:
    """L = (1/N) sum_n -log softmax(relu(x_n W1 + b1) W2 + b2)[y_n], x = pixels / 255, in float64."""
    import numpy as np
    scores = _forward(params, images)[3]
    scores -= scores.max(axis=1, keepdims=True)
    log_probs = scores - np.log(np.exp(scores).sum(axis=1, keepdims=True))
    return float(-log_probs[np.arange(len(labels)), labels].mean())


def check_record(params: dict, initial: dict, images, labels) -> dict:
    """Where a check run landed: the loss on the first CHECK_EXAMPLES training images and how far
    the parameters moved from the initialisation (Euclidean norm over all of them), in float64."""
    import numpy as np
    moved = sum(float(np.sum((np.asarray(params[k], np.float64) - np.asarray(initial[k], np.float64)) ** 2))
                for k in PARAMETER_NAMES)
    return {"loss": mean_cross_entropy(params, images[:CHECK_EXAMPLES], labels[:CHECK_EXAMPLES]),
            "moved": moved ** 0.5}


def reference_training(initial: dict, images, labels, batch: int, steps: int = CHECK_STEPS,
                       lr: float = LR, momentum: float = MOMENTUM) -> dict:
    """The independent reference: float64 NumPy, the whole global batch in one piece (no ranks).

        g = dL/dtheta of the batch mean,  v <- momentum v + g,  theta <- theta - lr v
    """
    import numpy as np
    theta = {k: np.asarray(v, np.float64).copy() for k, v in initial.items()}
    velocity = {k: np.zeros_like(v) for k, v in theta.items()}
    batches = global_batches(len(labels), batch)
    for _ in range(steps):
        idx = next(batches)
        grads = reference_gradient(theta, images[idx], labels[idx])
        for k in theta:
            velocity[k] = momentum * velocity[k] + grads[k]
            theta[k] = theta[k] - lr * velocity[k]
    return check_record(theta, initial, images, labels)


def reference_gradient(theta: dict, images, labels) -> dict:
    """d mean_cross_entropy(theta, images, labels) / d theta, float64 (tested by finite differences)."""
    import numpy as np
    x, pre, h, scores = _forward(theta, images)
    q = np.exp(scores - scores.max(axis=1, keepdims=True))
    q /= q.sum(axis=1, keepdims=True)
    d_scores = (q - np.eye(N_CLASSES)[labels]) / len(labels)   # dL/ds of the mean over the batch
    d_pre = (d_scores @ theta["W2"].T) * (pre > 0)
    return {"W1": x.T @ d_pre, "b1": d_pre.sum(axis=0), "W2": h.T @ d_scores, "b2": d_scores.sum(axis=0)}


def check_mismatch(record: dict, reference: dict, rtol: float = CHECK_RTOL) -> str | None:
    """None if a check record agrees with the reference, else what differs."""
    off = [f"{k} {record[k]:.7g} vs {reference[k]:.7g}" for k in ("loss", "moved")
           if abs(record[k] - reference[k]) > rtol * abs(reference[k])]
    return "; ".join(off) or None


def worker_arguments(description: str = ""):
    """The options every throughput worker takes: --batch (global), --seconds (timed), --warmup (steps)."""
    import argparse
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--check-init", metavar="NPZ",
                        help="instead of timing: train --check-steps steps from these parameters "
                             "(initial_parameters() saved by save_initial) and report check_record()")
    parser.add_argument("--check-steps", type=int, default=CHECK_STEPS)
    return parser


def global_batches(n: int, batch: int, seed: int = 1):
    """Endless global batches (example indices) of epoch permutations of n examples, full batches only."""
    import numpy as np
    epoch = 0
    while True:
        order = np.random.default_rng([seed, epoch]).permutation(n)
        for t in range(n // batch):
            yield order[t * batch:(t + 1) * batch]
        epoch += 1


def shard_indices(n: int, batch: int, rank: int, world: int, seed: int = 1):
    """global_batches(), each cut to this rank's contiguous shard."""
    for indices in global_batches(n, batch, seed):
        lo, hi = shard(len(indices), rank, world)
        yield indices[lo:hi]


def emit(record: dict):
    """A worker's result: one JSON line on stdout, tagged so launchers can find it among other output."""
    print("RESULT " + json.dumps(record), flush=True)


def parse_result(stdout: str) -> dict:
    lines = [line[len("RESULT "):] for line in stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        raise RuntimeError("the worker printed no RESULT line")
    return json.loads(lines[-1])


def clean_env(threads: int, extra: dict | None = None) -> dict:
    """The environment for a worker: no inherited MPI/launcher state, `threads` BLAS threads per rank."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PMI_", "MPI_LOCAL", "OMPI_", "PMIX_", "SLURM_")) and k not in THREAD_VARIABLES}
    env.update({name: str(threads) for name in THREAD_VARIABLES})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCH), env.get("PYTHONPATH", "")]))
    env.update(extra or {})
    return env


def run_worker(command, threads: int, timeout: float = 600, extra_env=None) -> dict:
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                            env=clean_env(threads, extra_env))
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, command))} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return parse_result(result.stdout)


def mpiexec_for(python: str) -> str:
    candidate = Path(python).parent / "mpiexec"
    return str(candidate) if candidate.exists() else "mpiexec"


def launch_mpi(python: str, script: str, world: int, args, threads: int = 1, timeout: float = 600,
               extra_env=None) -> dict:
    """`mpiexec -n W python script args` (W = 1 runs the script directly, no launcher)."""
    command = [python, script, *map(str, args)]
    if world > 1:
        command = [mpiexec_for(python), "-n", str(world), *command]
    return run_worker(command, threads, timeout, extra_env)


def venv_python(name: str) -> str | None:
    """The interpreter of .bench/<name> (benchmarks/setup_peers.sh), or None if it is not installed."""
    python = ROOT / ".bench" / name / "bin" / "python"
    return str(python) if (python.parent.parent / ".installed").exists() else None


class StepTimer:
    """Steady-state timing inside a worker: `warmup` steps untimed, then at least `seconds` of steps.

    Every rank runs the same number of steps (decided by rank 0 after a fixed probe), so collectives match.
    """

    def __init__(self, warmup: int, seconds: float):
        self.warmup, self.seconds = warmup, seconds

    def run(self, step, agree_int=lambda n: n, barrier=lambda: None) -> tuple[int, float]:
        for _ in range(self.warmup):
            step()
        barrier()
        start = time.perf_counter()
        probe = 10
        for _ in range(probe):
            step()
        barrier()
        per_step = (time.perf_counter() - start) / probe
        remaining = agree_int(max(int(self.seconds / per_step), 10))
        for _ in range(remaining):
            step()
        barrier()
        return probe + remaining, time.perf_counter() - start


def median_duration(call, times: int) -> float:
    """The median wall time of ``times`` calls of ``call()``."""
    durations = []
    for _ in range(times):
        start = time.perf_counter()
        call()
        durations.append(time.perf_counter() - start)
    return statistics.median(durations)


def median_and_range(values):
    return statistics.median(values), min(values), max(values)


def fmt_rate(values) -> str:
    median, low, high = median_and_range(values)
    return f"{median:,.0f} [{low:,.0f}-{high:,.0f}]"


def machine_summary() -> str:
    import numpy as np
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({cpu}), Python {sys.version.split()[0]}, NumPy {np.__version__}"
