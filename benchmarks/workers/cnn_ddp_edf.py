"""The benchmark CNN in ddp_edf: DataParallel.step on W ranks; rank 0 prints samples/s (and, with --profile, the
time of each op's forward and backward in one process).

    [mpiexec -n W] python benchmarks/workers/cnn_ddp_edf.py --batch 128 [--seconds 4] [--profile]

The model is build_model("cnn"): conv3x3-32, relu, pool 2, conv3x3-64, relu, pool 2, fc128, relu, fc10 (no
dropout), momentum SGD; the loop is the one the README's own-loop script runs (data, shard, forward, backward,
one Allreduce, update).
"""

import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402

from ddp_edf import SGD, Allreduce, DataParallel, build_model  # noqa: E402
from ddp_edf.data import ImageSplit  # noqa: E402
from ddp_edf.parallel.faults import communicator  # noqa: E402


def profile(dp, data, batches, optimizer, steps=10) -> dict:
    """Milliseconds per step in each op's forward and backward: dp.step as it runs, each op's two methods timed."""
    spent = defaultdict(float)

    def timed(label, method):
        def run():
            start = time.perf_counter()
            method()
            spent[label] += time.perf_counter() - start
        return run
    for node in dp.graph.comp_nodes:
        node.forward = timed(f"{type(node).__name__} {node.name} forward", node.forward)
        node.backward = timed(f"{type(node).__name__} {node.name} backward", node.backward)
    for _ in range(steps):
        dp.step(data, next(batches), optimizer)
    return {name: 1000 * seconds / steps for name, seconds in sorted(spent.items(), key=lambda kv: -kv[1])}


def main():
    parser = common.worker_arguments(__doc__)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    comm = communicator()
    images, labels = common.load_split("train")
    data = ImageSplit(images.reshape(-1, 1, 28, 28), labels)
    model = build_model("cnn", (1, 28, 28), 10, channels=[32, 64], hidden=[128], seed=0)
    dp = DataParallel(model.loss, (model.x, model.y), Allreduce(comm), errors=model.errors)
    optimizer = SGD(lr=common.LR, momentum=common.MOMENTUM)
    batches = common.global_batches(len(data), args.batch)
    if args.profile:
        dp.step(data, next(batches), optimizer)
        common.emit({"system": "ddp_edf", "world": comm.world_size, "profile_ms": profile(dp, data, batches, optimizer)})
        return
    steps, seconds = common.StepTimer(args.warmup, args.seconds).run(
        lambda: dp.step(data, next(batches), optimizer), comm.broadcast_obj, comm.barrier)
    if comm.is_root:
        common.emit({"system": "ddp_edf", "world": comm.world_size, "batch": args.batch, "steps": steps,
                     "samples_per_s": steps * args.batch / seconds})


if __name__ == "__main__":
    main()
