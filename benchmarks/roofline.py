"""How close ddp_edf gets to the machine: the sgemm bound on samples/s, the cost of the gradient sum.

    .venv/bin/python benchmarks/roofline.py [--batch 256] [--world 2] [--runs 5] [--seconds 2]

1. FLOPs per training sample of the 784-256-10 MLP, counting the GEMMs a step needs:
   forward x W0 and h W1, backward dW0 = x^T dh, dW1 = h^T ds and dh = ds W1^T (no gradient for the
   images: nobody needs it).  Elementwise work (bias, relu, softmax, update) is < 1% of the FLOPs.
2. NumPy's sustained float32 GEMM rate at exactly those shapes for a shard of B/W rows, one BLAS
   thread: once on one core alone, once on W processes at the same time (what a W-rank step sees).
   Bound on samples/s = shard rows / time of the step's GEMMs, summed over ranks.
3. The gradient sum between W ranks on this host: MPI Allreduce latency (8 bytes), the time of one
   Allreduce of ddp_edf's buffer (203,530 float32 gradients + 2 flags), and for comparison the same
   sum through an MPI-3 shared-memory window (copy in, sum a part, copy out).
4. ddp_edf's measured throughput (Trainer.fit, benchmarks/workers/ddp_edf_worker.py, median of
   --runs runs) as a fraction of both bounds.  Results: --json (default benchmarks/results/roofline.json).
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
    """Under mpiexec: GEMMs on every rank at once, then the Allreduce timings."""
    import numpy as np
    from mpi4py import MPI
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
    shared = timed(shared_memory_sum(comm, big, MPI)) if comm.Split_type(MPI.COMM_TYPE_SHARED).Get_size() > 1 \
        else None
    if comm.Get_rank() == 0:
        common.emit({"rates": rates, "latency_s": latency, "allreduce_s": allreduce, "shared_memory_s": shared})


def shared_memory_sum(comm, buffer, MPI):
    """The alternative to MPI's Allreduce on one host, for comparison: the ranks' buffers side by side
    in an MPI-3 shared window; copy mine in, barrier, sum my 1/L of the vector over the L copies,
    barrier, copy the whole sum out (what a self-contained reducer behind the same call must do)."""
    import numpy as np
    host = comm.Split_type(MPI.COMM_TYPE_SHARED)
    L, r, n = host.Get_size(), host.Get_rank(), buffer.size
    window = MPI.Win.Allocate_shared((L + 1) * n * 4 if r == 0 else 0, 4, comm=host)
    table = np.ndarray(buffer=window.Shared_query(0)[0], dtype=np.float32, shape=(L + 1, n))
    part = slice(r * n // L, (r + 1) * n // L)

    def call():
        table[r] = buffer
        host.Barrier()
        np.sum(table[:L, part], axis=0, out=table[L, part])
        host.Barrier()
        buffer[...] = table[L]     # the next call's first barrier orders this before the next sum
    return call


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
    if not 1 <= args.world <= args.batch:
        parser.error("needs 1 <= --world <= --batch")
    rows = args.batch // args.world
    flops = flops_per_sample()
    alone = rows / common.run_worker(
        [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(common.BENCH)!r}); "
         f"import roofline, common; common.emit({{'s': roofline.gemm_seconds({rows})}})"], threads=1)["s"]
    probe = common.launch_mpi(sys.executable, __file__, args.world, ["--mpi-probe", rows])
    together = sum(probe["rates"])
    measured = [common.launch_mpi(sys.executable, str(common.BENCH / "workers" / "ddp_edf_worker.py"), args.world,
                                  ["--batch", args.batch, "--seconds", args.seconds])["samples_per_s"]
                for _ in range(args.runs)]
    rate = statistics.median(measured)
    kilobytes = common.GRADIENT * 4 / 1e3
    print(f"{common.machine_summary()}; W = {args.world} ranks x 1 BLAS thread, global batch {args.batch} "
          f"({rows} rows per rank)\n")
    for label, value in (
            ("FLOPs per training sample (GEMMs)", f"{flops:,}"),
            ("sgemm at the step's shapes, one core alone", f"{alone * flops / 1e9:.1f} GFLOP/s = {alone:,.0f} samples/s"),
            (f"sgemm, {args.world} ranks at once (sum over ranks)",
             f"{together * flops / 1e9:.1f} GFLOP/s = {together:,.0f} samples/s"),
            (f"bound = {args.world} x one core alone", f"{args.world * alone:,.0f} samples/s"),
            (f"Allreduce latency (8 B), {args.world} ranks", f"{probe['latency_s'] * 1e6:.1f} us"),
            (f"Allreduce of the gradient ({kilobytes:.0f} KB)",
             f"{probe['allreduce_s'] * 1e3:.3f} ms ({common.GRADIENT * 4 / probe['allreduce_s'] / 1e9:.2f} GB/s)"),
            ("the same sum through shared memory (copies)",
             f"{probe['shared_memory_s'] * 1e3:.3f} ms" if probe["shared_memory_s"] else "- (one rank per host)"),
            (f"ddp_edf, median [min-max] of {args.runs} runs", f"{common.fmt_rate(measured)} samples/s"),
            (f"fraction of {args.world} x one core alone", f"{rate / (args.world * alone):.1%}"),
            ("fraction of the all-ranks-at-once bound", f"{rate / together:.1%}")):
        print(f"{label + ':':48s}{value}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({
        "machine": common.machine_summary(), "batch": args.batch, "world": args.world, "flops_per_sample": flops,
        "one_core_samples_per_s": alone, "all_ranks_samples_per_s": together, "probe": probe,
        "ddp_edf_samples_per_s": measured}, indent=1))


if __name__ == "__main__":
    main()
