"""Does overlapping the gradient Allreduce with backward pay on this machine?  (issue 6, lever "overlap")

    mpiexec -n 2 .venv/bin/python benchmarks/overlap_probe.py [--batch 256] [--chunks 4] [--rounds 7]

In the 784-256-10 MLP the last gradient that backward produces is fc0.W's (784 x 256, 99% of the
buffer): only the tiny fc1 gradient is final earlier.  So the only way to overlap is to split fc0.W's
GEMM, dW[rows] = x[:, rows]^T dh, into row chunks and start a non-blocking Iallreduce of each chunk as
soon as it is computed, driving MPI progress with Testall between chunks (DDP's bucketing, here on
the one big tensor).  Compared in the same run, alternating, with:
  blocking   the whole backward, then one Allreduce of the flat buffer (ddp_edf with dist.reduction=allreduce)
  overlap    chunked GEMM + Iallreduce per chunk + Testall between chunks, Waitall at the end
Prints ms per step (median of the rounds) for both and their ratio; results in docs/performance.md.
"""

import argparse
import statistics
import time

import numpy as np
from mpi4py import MPI

from ddp_edf import build_model

comm = MPI.COMM_WORLD


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--chunks", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    shard = args.batch // comm.Get_size()
    model = build_model("mlp", 784, 10, hidden=[256], seed=0)
    graph = model.graph
    rng = np.random.default_rng(comm.Get_rank())
    x = rng.random((shard, 784), dtype=np.float32)
    y = rng.integers(0, 10, shard)
    model.x.value, model.y.value = x, y
    fc0 = graph.parameter("fc0.W")
    hidden_grad = graph.comp_nodes[0]            # Affine fc0: its .grad is dh after backward
    rows = np.array_split(np.arange(784), args.chunks)

    def blocking():
        graph.forward()
        graph.backward(model.loss, 1.0 / args.batch)
        comm.Allreduce(MPI.IN_PLACE, graph.grads, op=MPI.SUM)

    def overlap():
        graph.forward()
        graph.backward(model.loss, 1.0 / args.batch)   # computes dW too; we recompute it in chunks below
        requests = [comm.Iallreduce(MPI.IN_PLACE, graph.grads[fc0.value.size:], op=MPI.SUM)]
        dh = hidden_grad.grad
        for part in rows:
            block = fc0.grad[part[0]:part[-1] + 1]
            np.matmul(x[:, part[0]:part[-1] + 1].T, dh, out=block)
            requests.append(comm.Iallreduce(MPI.IN_PLACE, block, op=MPI.SUM))
            MPI.Request.Testall(requests)          # let MPI progress while the next chunk computes
        MPI.Request.Waitall(requests)

    def timed(step):
        comm.Barrier()
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        comm.Barrier()
        return (time.perf_counter() - start) / args.steps * 1e3

    def backward_only():
        graph.forward()
        graph.backward(model.loss, 1.0 / args.batch)

    for step in (blocking, overlap, backward_only):
        timed(step)
    results = {"blocking": [], "overlap": [], "no_reduction": []}
    for _ in range(args.rounds):
        results["blocking"].append(timed(blocking))
        results["overlap"].append(timed(overlap))
        results["no_reduction"].append(timed(backward_only))
    if comm.Get_rank() == 0:
        med = {k: statistics.median(v) for k, v in results.items()}
        # the overlap variant computes fc0.W's GEMM twice (once in backward, once in chunks):
        # subtract one GEMM, timed alone, to compare like with like
        start = time.perf_counter()
        for _ in range(args.steps):
            np.matmul(x.T, hidden_grad.grad, out=fc0.grad)
        gemm = (time.perf_counter() - start) / args.steps * 1e3
        print(f"W={comm.Get_size()} batch {args.batch}, {args.chunks} chunks, median of {args.rounds} rounds (ms/step, "
              f"forward+backward+reduction):")
        print(f"  blocking Allreduce after backward   {med['blocking']:.3f}")
        print(f"  chunked Iallreduce during backward  {med['overlap'] - gemm:.3f}   "
              f"({med['overlap']:.3f} minus the duplicated fc0.W GEMM, {gemm:.3f} timed alone)")
        print(f"  no reduction at all                 {med['no_reduction']:.3f}")
        print(f"  overlap / blocking: {(med['overlap'] - gemm) / med['blocking']:.3f}")


if __name__ == "__main__":
    main()
