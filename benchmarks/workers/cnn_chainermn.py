"""The benchmark CNN in Chainer 7.8.1 + ChainerMN on CPU (its convolution: NumPy im2col and a GEMM).

    mpiexec -n W .bench/chainer/bin/python benchmarks/workers/cnn_chainermn.py --batch 128
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


class CNN(chainer.Chain):
    def __init__(self):
        super().__init__()
        with self.init_scope():
            self.c1, self.c2 = L.Convolution2D(1, 32, 3, pad=1), L.Convolution2D(32, 64, 3, pad=1)
            self.l1, self.l2 = L.Linear(64 * 7 * 7, 128), L.Linear(128, 10)

    def forward(self, x, y):
        h = F.max_pooling_2d(F.relu(self.c1(x)), 2)
        h = F.max_pooling_2d(F.relu(self.c2(h)), 2)
        return F.softmax_cross_entropy(self.l2(F.relu(self.l1(h))), y)


def main():
    args = common.worker_arguments(__doc__).parse_args()
    comm = chainermn.create_communicator("naive")
    images, labels = common.load_split("train")
    images, labels = images.reshape(-1, 1, 28, 28), labels.astype(np.int32)
    model = CNN()
    optimizer = chainermn.create_multi_node_optimizer(
        chainer.optimizers.MomentumSGD(lr=common.LR, momentum=common.MOMENTUM), comm)
    optimizer.setup(model)
    shards = common.shard_indices(len(labels), args.batch, comm.rank, comm.size)

    def step():
        idx = next(shards)
        optimizer.update(model, images[idx].astype(np.float32) / np.float32(255), labels[idx])

    mpi = comm.mpi_comm
    steps, seconds = common.StepTimer(args.warmup, args.seconds).run(step, lambda n: mpi.bcast(n, root=0), mpi.Barrier)
    if comm.rank == 0:
        common.emit({"system": "chainermn", "world": comm.size, "batch": args.batch, "steps": steps,
                     "samples_per_s": steps * args.batch / seconds, "chainer": chainer.__version__})


if __name__ == "__main__":
    main()
