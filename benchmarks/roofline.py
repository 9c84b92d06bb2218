"""How close ddp_edf gets to the machine: the sgemm bound on samples/s, the cost of the gradient sum.

    .venv/bin/python benchmarks/roofline.py [--batch 256] [--world 2] [--runs 5]

1. FLOPs per training sample of the 784-256-10 MLP, counting the GEMMs a step needs:
   forward x W0 and h W1, backward dW0 = x^T dh, dW1 = h^T ds and dh = ds W1^T (no gradient for the
   images: nobody needs it).  Elementwise work (bias, relu, softmax, update) is < 1% of the FLOPs.
2. NumPy's sustained float32 GEMM rate at exactly those shapes for a shard of B/W rows, one BLAS
   thread: once on one core alone, once on every core at the same time (W processes), which is what
   a W-rank step sees.  With OpenBLAS's own kernels and with those ddp_edf picks (ddp_edf/blas.py);
   the bound uses the faster, so picking kernels cannot flatter the fraction.  Bound on samples/s = shard rows / time of the step's GEMMs, summed over ranks.
3. The gradient sum between W ranks on this host: MPI Allreduce latency (8 bytes) and time for the
   gradient (203,530 float32 + 3 flags), and the shared-memory reduction of ddp_edf.
4. ddp_edf's measured throughput (the real training loop, median of --runs) as a fraction of the bound.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

I, J, K = common.N_IN, common.N_HIDDEN, common.N_CLASSES


def flops_per_sample() -> int:
    forward = 2 * (I * J + J * K)
    backward = 2 * I * J + 2 * J * K + 2 * J * K
    return forward + backward


def gemm_seconds(rows: int, repeats: int = 200) -> float:
    """Median time of one step's five GEMMs for a shard of `rows` examples (one BLAS thread)."""
    import numpy as np
    rng = np.random.default_rng(0)
    x, W0, W1 = (rng.random(s, dtype=np.float32) for s in ((rows, I), (I, J), (J, K)))
    h, ds, dh = np.empty((rows, J), np.float32), rng.random((rows, K), dtype=np.float32), np.empty((rows, J), np.float32)
    s, dW0, dW1 = np.empty((rows, K), np.float32), np.empty((I, J), np.float32), np.empty((J, K), np.float32)

    def step():
        np.matmul(x, W0, out=h)
        np.matmul(h, W1, out=s)
        np.matmul(ds, W1.T, out=dh)
        np.matmul(h.T, ds, out=dW1)
        np.matmul(x.T, dh, out=dW0)
    for _ in range(20):
        step()
    times = []
    for _ in range(7):
        start = time.perf_counter()
        for _ in range(repeats):
            step()
        times.append((time.perf_counter() - start) / repeats)
    return statistics.median(times)


def mpi_probe(rows: int):
    """Under mpiexec: GEMMs on every rank at once, then Allreduce and shared-memory reduction timings."""
    import numpy as np
    from mpi4py import MPI
    sys.path.insert(0, str(common.ROOT))
    from ddp_edf.dist.comm import MPIComm
    from ddp_edf.dist.reduce import SharedMemoryAllreduce
    comm = MPI.COMM_WORLD
    comm.Barrier()
    seconds = gemm_seconds(rows)
    rates = comm.gather(rows / seconds, root=0)

    def timed(call, repeats=500):
        for _ in range(50):
            call()
        values = []
        for _ in range(5):
            comm.Barrier()
            start = time.perf_counter()
            for _ in range(repeats):
                call()
            values.append((time.perf_counter() - start) / repeats)
        return statistics.median(values)
    small, big = np.zeros(2, np.float32), np.zeros(common.GRADIENT, np.float32)
    latency = timed(lambda: comm.Allreduce(MPI.IN_PLACE, small, op=MPI.SUM))
    allreduce = timed(lambda: comm.Allreduce(MPI.IN_PLACE, big, op=MPI.SUM))
    shared = SharedMemoryAllreduce(MPIComm(), common.GRADIENT, np.float32)
    shared_time = timed(shared.reduce)
    shared.close()
    if comm.Get_rank() == 0:
        common.emit({"rates": rates, "latency_s": latency, "allreduce_s": allreduce, "shared_s": shared_time})


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--mpi-probe", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--json", default=str(common.BENCH / "results" / "roofline.json"))
    args = parser.parse_args()
    if args.mpi_probe:
        return mpi_probe(args.mpi_probe)
    rows = args.batch // args.world
    flops = flops_per_sample()
    # The bound uses the faster of OpenBLAS's own kernels and those ddp_edf picks (ddp_edf/blas.py).
    kernel = common.ddp_edf_blas_kernel()
    kernels = {"native": {}, **({kernel: {"OPENBLAS_CORETYPE": kernel}} if kernel else {})}
    alone_by_kernel = {name: rows / common.run_worker(
        [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(common.BENCH)!r}); "
         f"import roofline, common; common.emit({{'s': roofline.gemm_seconds({rows})}})"], threads=1, extra_env=env)["s"]
        for name, env in kernels.items()}
    best = max(alone_by_kernel, key=alone_by_kernel.get)
    alone = alone_by_kernel[best]
    probe = common.run_worker([common.mpiexec_for(sys.executable), "-n", str(args.world), sys.executable, __file__,
                               "--mpi-probe", str(rows)], threads=1, extra_env=kernels[best])
    together = sum(probe["rates"])
    measured = [common.launch_mpi(sys.executable, str(common.BENCH / "workers" / "ddp_edf_worker.py"), args.world,
                                  ["--batch", args.batch, "--seconds", args.seconds])["samples_per_s"]
                for _ in range(args.runs)]
    rate = statistics.median(measured)
    print(f"{common.machine_summary()}; W = {args.world} ranks x 1 BLAS thread, global batch {args.batch} "
          f"({rows} rows per rank)\n")
    print(f"FLOPs per training sample (GEMMs):              {flops:,}")
    for name, value in alone_by_kernel.items():
        print(f"sgemm, one core alone, {name + ' kernels:':18s}   {value * flops / 1e9:.1f} GFLOP/s = {value:,.0f} samples/s")
    print(f"sgemm at the step's shapes, one core alone:      {alone * flops / 1e9:.1f} GFLOP/s = {alone:,.0f} samples/s "
          f"({best} kernels, the faster)")
    print(f"sgemm, {args.world} ranks at once (sum over ranks):      {together * flops / 1e9:.1f} GFLOP/s = "
          f"{together:,.0f} samples/s")
    print(f"bound = {args.world} x one core alone:                   {args.world * alone:,.0f} samples/s")
    print(f"Allreduce latency (8 B), {args.world} ranks:                {probe['latency_s'] * 1e6:.1f} us")
    print(f"Allreduce of the gradient ({common.GRADIENT * 4 / 1e3:.0f} KB):          {probe['allreduce_s'] * 1e3:.3f} ms "
          f"({common.GRADIENT * 4 / probe['allreduce_s'] / 1e9:.2f} GB/s)")
    print(f"shared-memory reduction of the same buffer:     {probe['shared_s'] * 1e3:.3f} ms")
    print(f"ddp_edf, median [min-max] of {args.runs} runs:            {common.fmt_rate(measured)} samples/s")
    print(f"fraction of {args.world} x one core alone:                {rate / (args.world * alone):.1%}")
    print(f"fraction of the all-ranks-at-once bound:        {rate / together:.1%}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({
        "machine": common.machine_summary(), "batch": args.batch, "world": args.world, "flops_per_sample": flops,
        "one_core_samples_per_s": alone, "one_core_by_kernel": alone_by_kernel, "bound_kernels": best,
        "all_ranks_samples_per_s": together, "probe": probe,
        "ddp_edf_samples_per_s": measured}, indent=1))


if __name__ == "__main__":
    main()
