"""The same model, data, batch and learning rate in Chainer 7.8.1 with ChainerMN on CPU (mpi4py).

    mpiexec -n W .bench/chainer/bin/python benchmarks/workers/chainermn_worker.py --batch 256

ChainerMN's documented CPU set-up: the 'naive' communicator and create_multi_node_optimizer, which
averages the gradients over the ranks in update().
"""

import sys
from pathlib import Path

import chainer
import chainer.functions as F
import chainer.links as L
import chainermn
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402


class MLP(chainer.Chain):
    def __init__(self):
        super().__init__()
        with self.init_scope():
            self.l1 = L.Linear(common.N_IN, common.N_HIDDEN)
            self.l2 = L.Linear(common.N_HIDDEN, common.N_CLASSES)

    def forward(self, x, y):
        return F.softmax_cross_entropy(self.l2(F.relu(self.l1(x))), y)


def main():
    args = common.worker_arguments(__doc__).parse_args()
    comm = chainermn.create_communicator("naive")
    rank, world = comm.rank, comm.size
    images, labels = common.load_split("train")
    labels = labels.astype(np.int32)
    model = MLP()
    initial = common.load_initial(args.check_init) if args.check_init else None
    if initial:   # Chainer's Linear holds W as (outputs, inputs)
        for layer, w, b in ((model.l1, "W1", "b1"), (model.l2, "W2", "b2")):
            layer.W.array[...] = initial[w].T
            layer.b.array[...] = initial[b]
    optimizer = chainermn.create_multi_node_optimizer(
        chainer.optimizers.MomentumSGD(lr=common.LR, momentum=common.MOMENTUM), comm)
    optimizer.setup(model)
    shards = common.shard_indices(len(labels), args.batch, rank, world)

    def step():
        idx = next(shards)
        x = images[idx].astype(np.float32) / np.float32(255)
        optimizer.update(model, x, labels[idx])   # forward, backward, mean of gradients over ranks, update

    if initial:   # the same training as every other system? (compare_torch_ddp.py checks)
        optimizer.update()   # ChainerMN's first update() only broadcasts rank 0's parameters: take it
        for _ in range(args.check_steps):   # without a batch, so that every step below is an update
            step()
        if rank == 0:
            params = {"W1": model.l1.W.array.T, "b1": model.l1.b.array, "W2": model.l2.W.array.T, "b2": model.l2.b.array}
            common.emit({"system": "chainermn", "world": world,
                         "check": common.check_record(params, initial, images, labels)})
        return

    mpi = comm.mpi_comm
    steps, seconds = common.StepTimer(args.warmup, args.seconds).run(step, lambda n: mpi.bcast(n, root=0), mpi.Barrier)
    if rank == 0:
        common.emit({"system": "chainermn", "world": world, "batch": args.batch, "steps": steps,
                     "samples_per_s": steps * args.batch / seconds, "chainer": chainer.__version__})


if __name__ == "__main__":
    main()
