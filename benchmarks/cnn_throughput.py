"""The CNN's training step: ddp_edf against ChainerMN and PyTorch DDP, the GEMM bound, and where the time goes.

    benchmarks/setup_peers.sh                       # once: .bench/torch and .bench/chainer
    .venv/bin/python benchmarks/cnn_throughput.py [--worlds 1 2] [--batch 128] [--rounds 5]

The model: conv3x3-32, relu, 2x2 max pool, conv3x3-64, relu, 2x2 max pool, fc128, relu, fc10, softmax
cross-entropy, momentum SGD, on Fashion-MNIST's training images (28x28), float32, one BLAS / intra-op
thread per rank.  Systems (each skipped, with the reason, when not installed):
  ddp_edf     DataParallel.step with Allreduce, build_model("cnn")       (workers/cnn_ddp_edf.py)
  chainermn   Chainer 7.8.1 + ChainerMN: its CPU convolution is NumPy im2col + GEMM, the fair peer
  torch_ddp   PyTorch DDP (gloo): oneDNN convolution kernels, the ceiling
Each round runs every system once per world size in a rotating order; ratios are taken within a round.
The GEMM bound: the step's GEMMs alone (for each conv: forward, weight gradient, input gradient except
the first's; for each fc: forward, weight gradient, input gradient), timed at the shapes ddp_edf gives
NumPy for a shard of B / W examples, one thread; summed over W ranks (cores).  Then ddp_edf's time per
op in one process.  Results: --json (default benchmarks/results/cnn_throughput.json).
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from compare_torch_ddp import done, print_table, time_rounds  # noqa: E402

WORKERS = common.BENCH / "workers"
# (name, C, O, H of the input, padding 1): the two 3x3 convolutions; then the fc layers (I, J)
CONVS = (("conv0", 1, 32, 28), ("conv1", 32, 64, 14))
FCS = (("fc0", 64 * 7 * 7, 128), ("fc1", 128, 10))


def systems_available():
    systems, missing = {}, {}
    systems["ddp_edf"] = lambda world, arguments: common.launch_mpi(
        sys.executable, str(WORKERS / "cnn_ddp_edf.py"), world, arguments)
    chainer = common.venv_python("chainer")
    if chainer:
        systems["chainermn"] = lambda world, arguments: common.launch_mpi(
            chainer, str(WORKERS / "cnn_chainermn.py"), world, arguments)
    else:
        missing["chainermn"] = "not installed: benchmarks/setup_peers.sh chainer"
    torch = common.venv_python("torch")
    if torch:
        torchrun = str(Path(torch).parent / "torchrun")
        systems["torch_ddp"] = lambda world, arguments: common.run_worker(
            [torchrun, "--standalone", f"--nproc_per_node={world}", str(WORKERS / "cnn_torch.py"),
             *map(str, arguments)], threads=1)
    else:
        missing["torch_ddp"] = "not installed: benchmarks/setup_peers.sh torch"
    return systems, missing


def gemm_seconds(rows: int) -> dict:
    """Median seconds of each layer's GEMMs for a shard of ``rows`` examples (one thread, float32)."""
    import numpy as np
    rng = np.random.default_rng(0)
    timings = {}
    for name, C, O, H in CONVS:
        pixels, patch = rows * H * H, C * 9
        cols, K, g = (rng.random(s, dtype=np.float32) for s in ((pixels, patch), (O, patch), (pixels, O)))
        calls = [lambda: cols @ K.T, lambda: g.T @ cols] + ([lambda: g @ K] if name != "conv0" else [])
        timings[name] = sum(common.median_duration(call, 7) for call in calls)
    for name, I, J in FCS:
        x, W, g = (rng.random(s, dtype=np.float32) for s in ((rows, I), (I, J), (rows, J)))
        timings[name] = sum(common.median_duration(call, 15) for call in (lambda: x @ W, lambda: x.T @ g,
                                                                          lambda: g @ W.T))
    return timings


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4.0, help="timed seconds per run (after warm-up)")
    parser.add_argument("--systems", nargs="+", help="a subset of the systems")
    parser.add_argument("--json", default=str(common.BENCH / "results" / "cnn_throughput.json"))
    args = parser.parse_args()
    args.warmup = 5
    systems, missing = systems_available()
    systems = {k: v for k, v in systems.items() if not args.systems or k in args.systems}
    for name, why in missing.items():
        print(f"skipping {name}: {why}")
    failures = []
    rates, ratios = time_rounds(systems, args, failures)
    print(f"\n{common.machine_summary()}; data: {common.data_source()}; global batch {args.batch}; "
          f"1 thread per rank; median [min-max] of {args.rounds} rounds\n")
    print_table(list(systems), args.worlds, rates, ratios)
    bound = {}
    for world in args.worlds:
        per_layer = gemm_seconds(-(-args.batch // world))
        bound[world] = {"samples_per_s": world * (args.batch / world) / sum(per_layer.values()),
                        "ms_per_layer": {k: 1000 * v for k, v in per_layer.items()}}
        measured = statistics.median(done(rates[("ddp_edf", world)]))
        print(f"GEMM bound at W = {world}: {bound[world]['samples_per_s']:,.0f} samples/s; ddp_edf reaches "
              f"{measured / bound[world]['samples_per_s']:.0%} of it")
    profile = common.launch_mpi(sys.executable, str(WORKERS / "cnn_ddp_edf.py"), 1,
                                ["--batch", args.batch, "--profile"])["profile_ms"]
    total = sum(profile.values())
    print(f"\nddp_edf, one process, batch {args.batch}: {total:.1f} ms in the ops per step")
    print("| op | ms per step | share |\n|---|--:|--:|")
    for name, ms in profile.items():
        if ms >= 0.01 * total:
            print(f"| {name} | {ms:.1f} | {ms / total:.0%} |")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({
        "machine": common.machine_summary(), "data": common.data_source(), "batch": args.batch,
        "rounds": args.rounds, "missing": missing, "failures": failures,
        "rates": {f"{n}@{w}": v for (n, w), v in rates.items()},
        "ratios": {f"ddp_edf/{n}@{w}": v for (n, w), v in ratios.items()},
        "gemm_bound": bound, "profile_ms": profile}, indent=1))


if __name__ == "__main__":
    main()
