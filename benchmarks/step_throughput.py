"""One process, one training step: ddp_edf's engine against the lecture's EDF transcription.

    .venv/bin/python benchmarks/step_throughput.py [--batches 64 256 1024] [--runs 5] [--seconds 1] [--threads 1]

A step is forward + backward + SGD update (lr 0.1) of the 784-256-10 relu MLP with softmax
cross-entropy in float32, on MNIST-shaped data (random pixels in [0, 1), random labels: speed does
not depend on the values).  Both systems start from the same parameters (ddp_edf.mlp's
initialisation) and compute the same update:

  engine    ddp_edf.Graph of ddp_edf.mlp's loss, backward seeded with 1/B, SGD.step on the flat buffer
  lecture   benchmarks/lecture_edf.py, the slides' code (Affine's weight gradient as a (B, I, J) product)

No data loading and no communication: the engine alone (benchmarks/throughput.py times the Trainer).
Each batch size is timed in --runs runs of at least --seconds after a warm-up pass, the systems
alternating run by run so machine drift affects both alike.  Printed: the median [min-max]
samples/s of each, and the median of the per-run ratios engine / lecture.
"""

import argparse
import json
import os
import statistics
import sys
import time

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per system and batch (median reported)")
    parser.add_argument("--seconds", type=float, default=1.0, help="minimum duration of one timed run")
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads (set before NumPy loads)")
    parser.add_argument("--json", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                       "step_throughput.json"))
    return parser.parse_args(argv)


if __name__ == "__main__":   # BLAS reads its thread count when NumPy loads: set it first
    ARGS = parse_args()
    for variable in THREAD_VARIABLES:
        os.environ[variable] = str(ARGS.threads)

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lecture_edf  # noqa: E402

from ddp_edf import SGD, Graph, mlp  # noqa: E402

N_IN, N_HIDDEN, N_CLASSES, LR = 784, 256, 10, 0.1
NAMES = ("fc0.W", "fc0.b", "fc1.W", "fc1.b")


def make_data(batch, n_batches=8, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.random((batch, N_IN), dtype=np.float32), rng.integers(0, N_CLASSES, batch))
            for _ in range(n_batches)]


def initial_parameters(seed=0) -> dict:
    """ddp_edf.mlp's initialisation in float32, keyed by name (fc0.W is (inputs, outputs))."""
    return Graph([mlp(N_IN, [N_HIDDEN], N_CLASSES, seed=seed).loss]).state_dict()


def engine_stepper(initial):
    """(step(x, y), parameters()) of the engine: the loss's graph only (no error metric), plain SGD."""
    model = mlp(N_IN, [N_HIDDEN], N_CLASSES)
    graph = Graph([model.loss])
    graph.load_state_dict(initial)
    optimizer = SGD(LR)

    def step(x, y):
        model.x.value, model.y.value = x, y
        graph.forward()
        graph.backward(model.loss, 1.0 / len(y))
        optimizer.step(graph.params, graph.grads)
    return step, graph.state_dict


def lecture_stepper(initial):
    """(step(x, y), parameters()) of the lecture's EDF (its global node lists are reset here)."""
    edf = lecture_edf
    edf.reset()
    edf.learning_rate = LR
    Phi1 = edf.Package(initial["fc0.W"].copy(), initial["fc0.b"].copy())
    Phi2 = edf.Package(initial["fc1.W"].copy(), initial["fc1.b"].copy())
    x, y = edf.Input(), edf.Input()
    L1 = edf.Relu(edf.Affine(Phi1, x))
    Q = edf.Softmax(edf.Affine(Phi2, L1))
    ell = edf.LogLoss(Q, y)

    def step(xs, ys):
        x.value, y.value = xs, ys
        edf.nBatch = len(ys)
        edf.Forward()
        edf.Backward(ell)
        edf.SGD()

    def parameters():
        return {name: p.value.copy() for name, p in zip(NAMES, (Phi1.W, Phi1.B, Phi2.W, Phi2.B))}
    return step, parameters


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


def main(args):
    print(f"784-{N_HIDDEN}-10 relu MLP, float32, {args.threads} BLAS thread(s), numpy {np.__version__}, "
          f"{args.runs} runs each, median [min-max] samples/s")
    print(f"{'batch':>6} {'engine':>26} {'lecture EDF':>26} {'ratio':>7}")
    initial = initial_parameters()
    rows = []
    for batch in args.batches:
        data = make_data(batch)
        engine, lecture = engine_stepper(initial)[0], lecture_stepper(initial)[0]
        results = {"engine": [], "lecture": []}
        for _ in range(args.runs):  # alternate the systems run by run
            results["engine"].append(timed_run(engine, data, args.seconds))
            results["lecture"].append(timed_run(lecture, data, args.seconds))
        ratios = [e / l for e, l in zip(results["engine"], results["lecture"])]

        def show(values):
            return f"{statistics.median(values):9.0f} [{min(values):6.0f}-{max(values):6.0f}]"
        print(f"{batch:>6} {show(results['engine']):>26} {show(results['lecture']):>26} "
              f"{statistics.median(ratios):6.1f}x", flush=True)
        rows.append({"batch": batch, **results, "ratios": ratios})
    with open(args.json, "w") as handle:
        json.dump({"threads": args.threads, "numpy": np.__version__, "results": rows}, handle, indent=1)


if __name__ == "__main__":
    main(ARGS)
