"""ddp_edf's Trainer.fit on W ranks, the model built from ops through the Python API; rank 0 prints samples/s.

    [mpiexec -n W] python benchmarks/workers/ddp_edf_worker.py --batch 256 [--seconds 2] [--warmup 30] [--deterministic]

The rate is samples over the wall time of ``Trainer.fit`` for the timed steps: the loop users run
(data, forward, backward, the one Allreduce of gradients and flags, the optimizer, the epoch order),
with no evaluation split and no output folder.
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402

from ddp_edf import (SGD, Affine, DistOptions, ErrorRate, Input, LogOptions, Options, Parameter, Relu,  # noqa: E402
                     SoftmaxCrossEntropy, Trainer, TrainOptions)
from ddp_edf.data import ImageSplit  # noqa: E402
from ddp_edf.parallel.faults import communicator  # noqa: E402

# ddp_edf's names for the benchmark's parameters (W is (inputs, outputs), as in common)
NAMES = {"W1": "fc0.W", "b1": "fc0.b", "W2": "fc1.W", "b2": "fc1.b"}


def build_trainer(initial: dict, batch: int, comm, deterministic: bool = False, chunk: int = 32) -> Trainer:
    """The benchmark's MLP written with ddp_edf's ops, trained by the Trainer a user's script gets."""
    p = {k: Parameter(NAMES[k], v) for k, v in initial.items()}
    x, y = Input("x"), Input("y")
    scores = Affine(Relu(Affine(x, p["W1"], p["b1"])), p["W2"], p["b2"])
    images, labels = common.load_split("train")
    options = Options(train=TrainOptions(global_batch=batch, drop_last=True, seed=0), log=LogOptions(10**9, echo=False),
                      dist=DistOptions(check_every=0, deterministic=deterministic, chunk=chunk))
    return Trainer(SoftmaxCrossEntropy(scores, y), (x, y), ImageSplit(images, labels), errors=ErrorRate(scores, y),
                   optimizer=SGD(common.LR, common.MOMENTUM), comm=comm, options=options)


def main():
    parser = common.worker_arguments(__doc__)
    parser.add_argument("--deterministic", action="store_true", help="the same bits on any number of ranks")
    parser.add_argument("--chunk", type=int, default=32, help="--deterministic: examples per fixed chunk")
    args = parser.parse_args()
    comm = communicator(blas_threads=1 if args.deterministic else 0)
    initial = common.load_initial(args.check_init) if args.check_init else common.initial_parameters()
    trainer = build_trainer(initial, args.batch, comm, args.deterministic, args.chunk)
    if args.check_init:   # the same training as every other system? (compare_torch_ddp.py checks)
        batches = common.global_batches(len(trainer.train), args.batch)
        for _ in range(args.check_steps):
            trainer.dp.step(trainer.train, next(batches), trainer.optimizer)
        if comm.is_root:
            images, labels = common.load_split("train")
            state = trainer.graph.state_dict()
            common.emit({"system": "ddp_edf", "world": comm.world_size, "check": common.check_record(
                {k: state[name] for k, name in NAMES.items()}, initial, images, labels)})
        return
    epochs = 10**6
    start = time.perf_counter()
    trainer.fit(epochs, max_steps=args.warmup)
    warm_rate = args.warmup * args.batch / (time.perf_counter() - start)
    steps = comm.broadcast_obj(max(20, int(args.seconds * warm_rate / args.batch)))
    comm.barrier()
    start = time.perf_counter()
    trainer.fit(epochs, max_steps=args.warmup + steps)
    seconds = time.perf_counter() - start
    if comm.is_root:
        common.emit({"system": "ddp_edf", "world": comm.world_size, "batch": args.batch, "steps": steps,
                     "deterministic": args.deterministic, "chunk": args.chunk,
                     "samples_per_s": steps * args.batch / seconds})


if __name__ == "__main__":
    main()
