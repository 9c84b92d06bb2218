"""Does overlapping the gradient Allreduce with backward pay on this machine?  (issue 6, lever "overlap")

    .venv/bin/python benchmarks/overlap_probe.py [--world 2] [--batch 256] [--chunks 4] [--rounds 3]
                                                 [--blocks 4] [--steps 200] [--json FILE]

In the 784-256-10 MLP the last gradient backward produces is fc0.W's (784 x 256, 99% of the buffer):
only the tiny fc1 gradients are final earlier.  So the only way to overlap is DDP's bucketing applied
to the one big tensor: split fc0.W's GEMM, dW[rows] = x[:, rows]^T dh, into row chunks and start a
non-blocking Iallreduce of each chunk as soon as it is computed.  In one W-rank job, blocks of steps
alternate among three loops on every rank (forward and backward of the rank's shard in each):

  blocking  backward, then one Allreduce of the flat gradient (ddp_edf with dist.reduction=allreduce)
  overlap   backward without fc0.W's gradient; an Iallreduce of the other gradients; then fc0.W's
            gradient GEMM in row chunks, an Iallreduce of each chunk as soon as it is written and
            Testall after it (MPI progresses only inside MPI calls unless it has a thread of its
            own); Waitall at the end
  none      backward, no reduction: the floor both would reach if communication were free

Every job first checks that blocking and overlap sum the same gradient.  MPI can progress in two
ways, and MPICH reads which at start-up, so each is its own job, the two alternating over rounds:

  test      MPICH's default: the application's MPI calls (Testall above) drive progress
  thread    MPICH_ASYNC_PROGRESS=1: a progress thread per rank (needs MPI_THREAD_MULTIPLE, which
            mpi4py asks for), i.e. the "async progress thread" Horovod and some MPI setups use

Prints ms per step (median over the blocks of every round) per mode and loop, and overlap / blocking.
ddp_edf's default on one host, the shared-memory reduction, is not in it: the question here is only
whether a non-blocking Allreduce hides behind backward.  Results in docs/performance.md.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

LOOPS = ("blocking", "overlap", "none")
MODES = {"test": {}, "thread": {"MPICH_ASYNC_PROGRESS": "1"}}


def mpi_job(batch: int, chunks: int, blocks: int, steps: int):
    """Under mpiexec: the three loops in alternating blocks; rank 0 emits per-block step times."""
    sys.path.insert(0, str(common.ROOT))
    import ddp_edf  # noqa: F401  (picks the BLAS kernels before NumPy loads)
    import numpy as np
    from mpi4py import MPI

    from ddp_edf import build_model

    comm = MPI.COMM_WORLD
    rank, world = comm.Get_rank(), comm.Get_size()
    lo, hi = common.shard(batch, rank, world)
    model = build_model("mlp", common.N_IN, common.N_CLASSES, hidden=[common.N_HIDDEN], seed=0)
    graph = model.graph
    rng = np.random.default_rng(rank)
    model.x.value = rng.random((hi - lo, common.N_IN), dtype=np.float32)   # speed does not depend on pixels
    model.y.value = rng.integers(0, common.N_CLASSES, hi - lo)
    fc0 = graph.parameter("fc0.W")
    hidden = next(node for node in graph.comp_nodes if getattr(node, "W", None) is fc0)   # Affine: .grad is dh
    k = graph.parameters.index(fc0)
    start, stop = int(graph.offsets[k]), int(graph.offsets[k + 1])
    others = [part for part in (graph.grads[:start], graph.grads[stop:]) if part.size]   # fc1's, fc0.b
    bounds = [(int(rows[0]), int(rows[-1]) + 1) for rows in np.array_split(np.arange(common.N_IN), chunks)]
    all_parameters = graph.parameters
    scale = 1.0 / batch

    def forward_backward():
        graph.forward()
        graph.backward(model.loss, scale)

    def blocking():
        forward_backward()
        comm.Allreduce(MPI.IN_PLACE, graph.grads, op=MPI.SUM)

    def overlap():
        # backward without fc0.W: the graph skips a parameter that needs no gradient (and does not
        # zero-fill one it does not list), so fc0.W's GEMM runs only once, in chunks below
        fc0.needs_grad, graph.parameters = False, [p for p in all_parameters if p is not fc0]
        try:
            forward_backward()
        finally:
            del fc0.needs_grad                       # back to Parameter's class attribute, True
            graph.parameters = all_parameters
        requests = [comm.Iallreduce(MPI.IN_PLACE, part, op=MPI.SUM) for part in others]
        x, dh = model.x.value, hidden.grad
        for first, last in bounds:
            block = fc0.grad[first:last]
            np.matmul(x[:, first:last].T, dh, out=block)     # dW[i,j] = x[b,i] dh[b,j] for these rows i
            requests.append(comm.Iallreduce(MPI.IN_PLACE, block, op=MPI.SUM))
            MPI.Request.Testall(requests)                  # let MPI progress while the next chunk computes
        MPI.Request.Waitall(requests)

    loops = {"blocking": blocking, "overlap": overlap, "none": forward_backward}

    # the same gradient both ways (the GEMM blocked by rows sums each element over the same b)
    blocking()
    reference = graph.grads.copy()
    graph.grads.fill(np.nan)
    overlap()
    same = bool(np.allclose(graph.grads, reference, rtol=1e-5, atol=1e-7))
    same = comm.allreduce(same, op=MPI.LAND)

    def timed(loop):
        comm.Barrier()
        begin = time.perf_counter()
        for _ in range(steps):
            loop()
        comm.Barrier()
        return (time.perf_counter() - begin) / steps

    for loop in loops.values():                    # warm-up: buffers, MPI's connections
        timed(loop)
    times = {name: [] for name in LOOPS}
    probes = []
    probe_buffer = np.zeros(common.GRADIENT, np.float32)
    for block in range(blocks):
        probes.append(common.allreduce_probe(comm, probe_buffer, MPI))
        order = LOOPS[block % len(LOOPS):] + LOOPS[:block % len(LOOPS)]   # rotate who goes first
        for name in order:
            times[name].append(timed(loops[name]))
    if rank == 0:
        common.emit({"times": times, "probes": probes, "same_gradient": same,
                     "thread_level": MPI.Query_thread(), "thread_multiple": MPI.THREAD_MULTIPLE})


def summary(jobs: dict) -> dict:
    """Median ms per step per mode and loop over every block of every job, and overlap / blocking."""
    result = {}
    for mode, runs in jobs.items():
        if not runs:
            continue
        med = {name: 1e3 * statistics.median(t for run in runs for t in run["times"][name]) for name in LOOPS}
        result[mode] = {"median_ms": med, "overlap_vs_blocking": med["overlap"] / med["blocking"]}
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--chunks", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3, help="jobs per progress mode, alternating")
    parser.add_argument("--blocks", type=int, default=4, help="blocks of each loop per job")
    parser.add_argument("--steps", type=int, default=200, help="steps per block")
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--json", default=str(common.BENCH / "results" / "overlap_probe.json"))
    parser.add_argument("--mpi-job", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mpi_job:
        return mpi_job(args.batch, args.chunks, args.blocks, args.steps)
    if args.world < 2:
        parser.error("--world must be >= 2: there is nothing to reduce in one process")
    if args.batch < args.world:
        parser.error(f"--batch must be >= --world ({args.world}): every rank needs rows")
    if not 1 <= args.chunks <= common.N_IN:
        parser.error(f"--chunks must be in 1..{common.N_IN} (fc0.W's rows)")

    jobs = {mode: [] for mode in args.modes}
    for round_ in range(args.rounds):
        order = args.modes if round_ % 2 == 0 else args.modes[::-1]
        for mode in order:
            run = common.launch_mpi(sys.executable, __file__, args.world,
                                    ["--mpi-job", "--batch", args.batch, "--chunks", args.chunks,
                                     "--blocks", args.blocks, "--steps", args.steps],
                                    threads=1, extra_env=MODES[mode])
            if not run["same_gradient"]:
                raise SystemExit(f"overlap_probe: in the {mode} job the overlapped reduction summed a different "
                                 "gradient than the blocking one: the probe is wrong, not the machine")
            if run["thread_level"] != run["thread_multiple"]:
                print(f"note: MPI gave thread level {run['thread_level']}, not THREAD_MULTIPLE, in the {mode} job")
            jobs[mode].append(run)
            print(f"round {round_ + 1} {mode:6s}: " + ", ".join(
                f"{name} {1e3 * statistics.median(run['times'][name]):.3f}" for name in LOOPS)
                + f" ms/step (probes {', '.join(f'{1e3 * p:.2f}' for p in run['probes'])} ms)", flush=True)

    result = summary(jobs)
    print(f"\n{common.machine_summary()}; W = {args.world} ranks x 1 BLAS thread, global batch {args.batch}, "
          f"fc0.W in {args.chunks} chunks; median ms per step over {args.rounds} jobs x {args.blocks} blocks of "
          f"{args.steps} steps per mode (the same gradient both ways: checked in every job)\n")
    print("| MPI progress | blocking Allreduce after backward | chunked Iallreduce during backward | no reduction "
          "| overlap / blocking |\n|---|--:|--:|--:|--:|")
    for mode, row in result.items():
        m = row["median_ms"]
        print(f"| {mode} | {m['blocking']:.3f} | {m['overlap']:.3f} | {m['none']:.3f} | "
              f"{row['overlap_vs_blocking']:.3f}x |")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({
        "machine": common.machine_summary(), "world": args.world, "batch": args.batch, "chunks": args.chunks,
        "steps": args.steps, "summary": result, "jobs": jobs}, indent=1))


if __name__ == "__main__":
    main()
