"""Single-process training throughput of the engine vs. the lecture's EDF transcription.

    python benchmarks/step_throughput.py [--batches 64 256 1024] [--runs 5] [--threads 1]

One training step = forward + backward + SGD update of the 784-256-10 relu MLP (softmax
cross-entropy) in float32 on MNIST-shaped data (random pixels in [0, 1], random labels: speed does
not depend on the values).  Each configuration is timed in several runs after warm-up, the two
systems alternating run by run so machine drift affects both alike; we print the median and the
min-max of samples/s, and the median ratio engine / lecture.
"""

import argparse
import os
import statistics
import sys
import time


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per system and batch (median reported)")
    parser.add_argument("--seconds", type=float, default=1.0, help="minimum duration of one timed run")
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads (set before NumPy loads)")
    return parser.parse_args()


ARGS = parse_args()
for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[variable] = str(ARGS.threads)

import numpy as np  # noqa: E402  (after the thread variables)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lecture_edf  # noqa: E402

from ddp_edf import SGD, build_model  # noqa: E402

N_IN, N_HIDDEN, N_CLASSES, LR = 784, 256, 10, 0.1


def make_data(batch, n_batches=8, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.random((batch, N_IN), dtype=np.float32), rng.integers(0, N_CLASSES, batch))
            for _ in range(n_batches)]


def engine_stepper(batch):
    model = build_model("mlp", N_IN, N_CLASSES, hidden=[N_HIDDEN], seed=0)
    optimizer = SGD(model.graph.params, model.graph.grads)

    def step(x, y):
        model.x.value, model.y.value = x, y
        model.graph.forward()
        model.graph.backward(model.loss, 1.0 / batch)
        optimizer.step(LR)
    return step


def lecture_stepper(batch):
    edf = lecture_edf
    edf.reset()
    edf.nBatch, edf.learning_rate = batch, LR
    rng = np.random.default_rng(0)
    Phi1 = edf.Package((rng.standard_normal((N_IN, N_HIDDEN)) * np.sqrt(2 / N_IN)).astype(np.float32),
                       np.zeros(N_HIDDEN, np.float32))
    Phi2 = edf.Package((rng.standard_normal((N_HIDDEN, N_CLASSES)) * 0.05).astype(np.float32),
                       np.zeros(N_CLASSES, np.float32))
    x, y = edf.Input(), edf.Input()
    L1 = edf.Relu(edf.Affine(Phi1, x))
    Q = edf.Softmax(edf.Affine(Phi2, L1))
    ell = edf.LogLoss(Q, y)

    def step(xs, ys):
        x.value, y.value = xs, ys
        edf.Forward()
        edf.Backward(ell)
        edf.SGD()
    return step


def timed_run(step, data, min_seconds):
    """samples/s over whole passes through ``data`` lasting at least min_seconds (after one warm-up pass)."""
    for x, y in data:
        step(x, y)
    steps, start = 0, time.perf_counter()
    while True:
        for x, y in data:
            step(x, y)
        steps += len(data)
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return steps * len(data[0][1]) / elapsed


def main():
    print(f"784-{N_HIDDEN}-10 relu MLP, float32, {ARGS.threads} BLAS thread(s), numpy {np.__version__}, "
          f"{ARGS.runs} runs each, median [min-max] samples/s")
    print(f"{'batch':>6} {'engine':>26} {'lecture EDF':>26} {'ratio':>7}")
    for batch in ARGS.batches:
        data = make_data(batch)
        engine, lecture = engine_stepper(batch), lecture_stepper(batch)
        results = {"engine": [], "lecture": []}
        for _ in range(ARGS.runs):  # alternate the systems run by run
            results["engine"].append(timed_run(engine, data, ARGS.seconds))
            results["lecture"].append(timed_run(lecture, data, ARGS.seconds))
        ratios = [e / l for e, l in zip(results["engine"], results["lecture"])]

        def show(values):
            return f"{statistics.median(values):9.0f} [{min(values):6.0f}-{max(values):6.0f}]"
        print(f"{batch:>6} {show(results['engine']):>26} {show(results['lecture']):>26} "
              f"{statistics.median(ratios):6.1f}x", flush=True)


if __name__ == "__main__":
    main()
