"""What dist.deterministic costs, and how accurate its exact sum is.

    .venv/bin/python benchmarks/deterministic.py [--worlds 1 2 4] [--batches 64 256 1024] [--runs 3]
                                                 [--chunk 32] [--accuracy-steps 200]

Cost: Trainer.fit of the 784-256-10 MLP (benchmarks/workers/ddp_edf_worker.py, one BLAS thread per
rank, Fashion-MNIST or random images) in the default and the deterministic mode, the two modes and
all configurations interleaved run by run; printed: median [min-max] samples/s of --runs runs and
the ratio of step times, deterministic / default, per (W, B).  W = 4 shares 2 cores.

Accuracy: one process trains the same MLP (global batch 256, chunks of 32) on real gradients, and at
every step compares with the float64 gradient of the whole batch (a float64 copy of the graph):
  default        two shards of 128 (W = 2), each a float32 backward, summed in float32
  deterministic  eight chunks of 32, each a float32 backward, summed by ExactSum
and, for the combining step alone, each sum of the same float32 chunk gradients against their exact
(float64) sum.  Printed: median and max over steps of ||g - g_64|| / ||g_64||.
Results: --json (default benchmarks/results/deterministic.json).
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

WORKER = str(common.BENCH / "workers" / "ddp_edf_worker.py")


def cost(worlds, batches, runs, seconds, chunk):
    configs = [(w, b, d) for b in batches for w in worlds for d in (False, True)]
    rates = {c: [] for c in configs}
    for run in range(runs):
        for world, batch, deterministic in configs:
            flags = ["--batch", batch, "--seconds", seconds] + (["--deterministic", "--chunk", chunk] if deterministic else [])
            rate = common.launch_mpi(sys.executable, WORKER, world, flags)["samples_per_s"]
            rates[(world, batch, deterministic)].append(rate)
            print(f"run {run + 1}: W={world} B={batch} deterministic={deterministic}: {rate:,.0f} samples/s", flush=True)
    print(f"\n{common.machine_summary()}; data: {common.data_source()}; median [min-max] of {runs} runs\n")
    print(f"| W | global batch | default samples/s | deterministic (chunks of {chunk}) samples/s | "
          f"step time, deterministic / default |")
    print("|--:|--:|--:|--:|--:|")
    table = []
    for world, batch, _ in configs[::2]:
        default, exact = rates[(world, batch, False)], rates[(world, batch, True)]
        ratio = statistics.median(default) / statistics.median(exact)
        table.append({"world": world, "batch": batch, "default": default, "deterministic": exact, "ratio": ratio})
        print(f"| {world} | {batch} | {common.fmt_rate(default)} | {common.fmt_rate(exact)} | {ratio:.2f}x |")
    return table


def mlp(initial, dtype):
    from ddp_edf import Affine, Input, Parameter, Relu, SoftmaxCrossEntropy
    from ddp_edf.engine.graph import Graph
    names = {"W1": "fc0.W", "b1": "fc0.b", "W2": "fc1.W", "b2": "fc1.b"}
    p = {k: Parameter(names[k], v) for k, v in initial.items()}
    x, y = Input("x"), Input("y")
    loss = SoftmaxCrossEntropy(Affine(Relu(Affine(x, p["W1"], p["b1"])), p["W2"], p["b2"]), y)
    return Graph([loss], dtype=dtype), loss, x, y


def gradient(graph, loss, x, y, images, labels, scale):
    x.value, y.value = (images / np.float32(255)).astype(graph.dtype), labels
    graph.forward()
    graph.backward(loss, grad_scale=scale)
    return graph.grads.copy()


def accuracy(steps, batch=256, chunk=32):
    from threadpoolctl import threadpool_limits
    from ddp_edf import ExactSum
    from ddp_edf.parallel.comm import SerialComm
    initial = common.initial_parameters()
    g32, loss32, x32, y32 = mlp(initial, np.float32)
    g64, loss64, x64, y64 = mlp(initial, np.float64)
    with threadpool_limits(limits=1, user_api="blas"):      # what the exact sum requires
        exact = ExactSum(SerialComm(), chunk=chunk)
    summed = exact.gradient_buffer(g32.num_params)
    images, labels = common.load_split("train")
    batches = common.global_batches(len(labels), batch)
    errors = {"default": [], "deterministic": [], "float32 sum of the chunks": [], "exact sum of the chunks": []}

    def relative(g, reference):
        return float(np.linalg.norm(g.astype(np.float64) - reference) / np.linalg.norm(reference))

    for _ in range(steps):
        index = next(batches)
        g64.params[:] = g32.params
        reference = gradient(g64, loss64, x64, y64, images[index], labels[index], 1 / batch)
        halves = [gradient(g32, loss32, x32, y32, images[part], labels[part], 1 / batch)
                  for part in np.array_split(index, 2)]
        chunks = [gradient(g32, loss32, x32, y32, images[index[c:c + chunk]], labels[index[c:c + chunk]], 1 / batch)
                  for c in range(0, batch, chunk)]
        combined = np.zeros(g32.num_params, np.float32)
        exact.pieces(batch)                               # this batch's chunks: all of them, on one rank
        for term in chunks:
            summed[:] = term
            exact.add(summed, 0.0, 0.0)
            combined += term
        exact.reduce(stop=False)                          # summed <- the exact sum of the chunks
        chunks_exact = np.sum(np.array(chunks, np.float64), axis=0)
        errors["default"].append(relative(halves[0] + halves[1], reference))
        errors["deterministic"].append(relative(summed, reference))
        errors["float32 sum of the chunks"].append(relative(combined, chunks_exact))
        errors["exact sum of the chunks"].append(relative(summed, chunks_exact))
        g32.params -= np.float32(common.LR) * summed     # plain SGD on the exact gradient
    print(f"\nrelative error of the gradient, ||g - g_64|| / ||g_64||, over {steps} steps (B = {batch}, chunks of "
          f"{chunk}; {common.data_source()})\n")
    print("| gradient | median | max |\n|---|--:|--:|")
    for name, values in errors.items():
        print(f"| {name} | {statistics.median(values):.2e} | {max(values):.2e} |")
    return {name: {"median": statistics.median(v), "max": max(v)} for name, v in errors.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--chunk", type=int, default=32, help="examples per chunk in the deterministic mode")
    parser.add_argument("--accuracy-steps", type=int, default=200)
    parser.add_argument("--json", default=str(common.BENCH / "results" / "deterministic.json"))
    args = parser.parse_args()
    result = {"machine": common.machine_summary(), "data": common.data_source(),
              "accuracy": accuracy(args.accuracy_steps), "chunk": args.chunk,
              "cost": cost(args.worlds, args.batches, args.runs, args.seconds, args.chunk)}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
