"""The "no framework" floor: the MLP step written by hand in NumPy + mpi4py, as a competent user would.

    [mpiexec -n W] python benchmarks/workers/handwritten_worker.py --batch 256

Forward and a GEMM-based backward for the two layers (no input gradient), the four gradients packed
into one flat buffer for ONE Allreduce, unpacked, and a momentum-SGD update.  Straightforward NumPy:
temporaries are allocated as expressions need them.
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402

try:
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
except ImportError:  # one process without mpi4py
    comm = None
rank = comm.Get_rank() if comm else 0
world = comm.Get_size() if comm else 1


def main():
    args = common.worker_arguments(__doc__).parse_args()
    images, labels = common.load_split("train")
    initial = common.load_initial(args.check_init) if args.check_init else common.initial_parameters()
    W1, b1, W2, b2 = params = [initial[name].copy() for name in common.PARAMETER_NAMES]
    velocity = [np.zeros_like(p) for p in params]
    if comm:
        for p in params:
            comm.Bcast(p, root=0)
    shards = common.shard_indices(len(labels), args.batch, rank, world)

    def step():
        idx = next(shards)
        x = images[idx].astype(np.float32) / 255.0
        y = labels[idx]
        h_pre = x @ W1 + b1
        h = np.maximum(h_pre, 0)
        s = h @ W2 + b2
        s = s - s.max(axis=1, keepdims=True)
        q = np.exp(s)
        q /= q.sum(axis=1, keepdims=True)
        g = q
        g[np.arange(len(y)), y] -= 1
        g /= args.batch                      # mean over the global batch
        dW2 = h.T @ g
        db2 = g.sum(axis=0)
        dh = (g @ W2.T) * (h_pre > 0)
        dW1 = x.T @ dh
        db1 = dh.sum(axis=0)
        grads = [dW1, db1, dW2, db2]
        flat = np.concatenate([d.ravel() for d in grads])
        if comm:
            comm.Allreduce(MPI.IN_PLACE, flat, op=MPI.SUM)
        offset = 0
        for p, v, d in zip(params, velocity, grads):
            d = flat[offset:offset + d.size].reshape(d.shape)
            offset += d.size
            v *= common.MOMENTUM
            v += d
            p -= common.LR * v

    if args.check_init:   # the same training as every other system? (compare_torch_ddp.py checks)
        for _ in range(args.check_steps):
            step()
        if rank == 0:
            common.emit({"system": "handwritten", "world": world,
                         "check": common.check_record(dict(zip(common.PARAMETER_NAMES, params)), initial, images, labels)})
        return

    timer = common.StepTimer(args.warmup, args.seconds)
    agree = (lambda n: comm.bcast(n, root=0)) if comm else (lambda n: n)
    barrier = comm.Barrier if comm else (lambda: None)
    steps, seconds = timer.run(step, agree, barrier)
    if rank == 0:
        common.emit({"system": "handwritten", "world": world, "batch": args.batch, "steps": steps,
                     "samples_per_s": steps * args.batch / seconds})


if __name__ == "__main__":
    main()
