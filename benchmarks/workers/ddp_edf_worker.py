"""ddp_edf's real training loop (Trainer.run) on W ranks; rank 0 prints samples/s and the step breakdown.

    [mpiexec -n W] python benchmarks/workers/ddp_edf_worker.py --batch 256 [--seconds 2] [--warmup 30]

The rate is the trainer's own: samples over the wall time of the timed steps, measured by the loop
that users run (data, forward, backward, Allreduce, optimizer, the per-step stop-signal agreement),
summed over every interval the trainer reports (one per epoch, and the last one).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402

from ddp_edf.config import load_config  # noqa: E402
from ddp_edf.dist.comm import make_comm  # noqa: E402
from ddp_edf.dist.threads import configure_blas_threads  # noqa: E402
from ddp_edf.trainer import StepTimes, Totals, Trainer  # noqa: E402

import numpy as np  # noqa: E402  (after ddp_edf, which picks the BLAS kernels before NumPy loads)


class CapturingReporter:
    """The Reporter interface, keeping metric records in memory instead of writing files."""

    def __init__(self):
        self.records = []

    def log(self, message):
        pass

    def metrics(self, record):
        self.records.append(record)

    def start_progress(self, total_steps, on_tty=None):
        pass

    def advance(self, steps=1):
        pass

    def elapsed(self):
        return 0.0

    def close(self):
        pass


def dataset_name() -> str:
    """fashion-mnist when installed, else an IDX copy of common.load_split's random images."""
    if common.FASHION.is_dir():
        return "fashion-mnist"
    folder = common.ROOT / ".bench" / "random-idx"
    if not (folder / "t10k-labels-idx1-ubyte").exists():
        folder.mkdir(parents=True, exist_ok=True)
        for split, prefix in (("train", "train"), ("test", "t10k")):
            images, labels = common.load_split(split)
            header = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in (len(images), 28, 28))
            (folder / f"{prefix}-images-idx3-ubyte").write_bytes(header + images.tobytes())
            header = bytes([0, 0, 8, 1]) + len(labels).to_bytes(4, "big")
            (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(header + labels.astype("uint8").tobytes())
    return f"idx:{folder}"


def benchmark_config(dataset: str, batch: int, *overrides: str):
    """The benchmark's model, optimizer and batch as a ddp_edf config (plus ``overrides``, e.g. levers)."""
    return load_config(None, [f"data.dataset={dataset}", "data.dev_size=0", "model.kind=mlp",
                              f"model.hidden=[{common.N_HIDDEN}]", "model.activation=relu", "optim.name=sgd",
                              f"optim.lr={common.LR}", f"optim.momentum={common.MOMENTUM}",
                              f"train.global_batch={batch}", "train.seed=0", "train.epochs=1000",
                              "train.drop_last=true",  # every step a full batch, as in the peers' loops
                              "log.every=1000000000", "dist.check_every=0", "checkpoint.every_steps=0",
                              *overrides])


# ddp_edf's names for the check's parameters (models.affine_layer: fc<k>.W is (inputs, outputs))
DDP_EDF_NAMES = {"W1": "fc0.W", "b1": "fc0.b", "W2": "fc1.W", "b2": "fc1.b"}


def check_run(args, comm, config):
    """--check-init: train args.check_steps steps of common.global_batches from the given parameters
    with Trainer.train_step (the step Trainer.run takes), then report where they landed."""
    initial = common.load_initial(args.check_init)
    keyed = Path(args.check_init).with_suffix(".ddp_edf.npz")   # the Trainer's --init: keyed by its names
    if comm.is_root:
        np.savez(keyed, **{DDP_EDF_NAMES[k]: v for k, v in initial.items()})
    trainer = Trainer(config, comm, CapturingReporter(), init_path=str(keyed))
    batches = common.global_batches(len(trainer.dataset.train), args.batch)
    for _ in range(args.check_steps):
        trainer.train_step(next(batches), StepTimes(), Totals())
    if comm.is_root:
        state = trainer.graph.state_dict()
        images, labels = common.load_split("train")
        common.emit({"system": "ddp_edf", "world": comm.world_size, "check": common.check_record(
            {k: state[name] for k, name in DDP_EDF_NAMES.items()}, initial, images, labels)})


def main():
    parser = common.worker_arguments(__doc__)
    parser.add_argument("--set", action="append", default=[], help="extra config overrides (levers)")
    args = parser.parse_args()
    comm = make_comm("auto")
    if comm.is_root:
        name = dataset_name()
    name = comm.broadcast_obj(name if comm.is_root else None)
    threads = configure_blas_threads(comm.local_size)
    config = benchmark_config(name, args.batch, *args.set)
    if args.check_init:
        return check_run(args, comm, config)
    reporter = CapturingReporter()
    trainer = Trainer(config, comm, reporter)
    trainer.total_steps = args.warmup
    trainer.run()
    warm = reporter.records[-2]  # the last train record (the last record is the test evaluation)
    steps = comm.broadcast_obj(max(20, int(args.seconds * warm["samples_per_s"] / args.batch)))
    trainer.total_steps = args.warmup + steps
    first = len(reporter.records)
    trainer.run()
    # The trainer reports at every epoch's end and after the last step: each train record is the
    # rate over its interval.  Over all timed steps: samples / the sum of the intervals' times.
    intervals, step = [], args.warmup
    for record in reporter.records[first:]:
        if record["split"] == "train":
            intervals.append((record["step"] - step, record))
            step = record["step"]
    seconds = sum(n * args.batch / r["samples_per_s"] for n, r in intervals)
    breakdown = {k[:-3]: sum(n * r[k] for n, r in intervals) / steps for k in intervals[-1][1] if k.endswith("_ms")}
    rotating = sum(n * r.get("ring_rotating", 0.0) for n, r in intervals) / steps   # the ring tuner's share
    if comm.is_root:
        common.emit({"system": "ddp_edf", "world": comm.world_size, "batch": args.batch, "steps": steps,
                     "samples_per_s": steps * args.batch / seconds, "threads": threads,
                     "blas": common.blas_kernel(), "breakdown_ms": breakdown,
                     "ring_rotating": rotating})


if __name__ == "__main__":
    main()
