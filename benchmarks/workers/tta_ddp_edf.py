"""Time to accuracy, ddp_edf: train with a config; after every epoch, pause the clock and measure test accuracy.

    [mpiexec -n W] python benchmarks/workers/tta_ddp_edf.py --config configs/fashion_tta.toml

Prints (rank 0) the training wall time at the end of each epoch (from the first step, test
evaluations excluded, everything else included: data, steps, the per-epoch dev evaluation) and the
test accuracy there.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402
from ddp_edf_worker import CapturingReporter  # noqa: E402

from ddp_edf.config import load_config  # noqa: E402
from ddp_edf.dist.comm import make_comm  # noqa: E402
from ddp_edf.dist.threads import configure_blas_threads  # noqa: E402
from ddp_edf.trainer import Trainer, evaluate  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default=str(common.ROOT / "configs" / "fashion_tta.toml"))
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()
    comm = make_comm("auto")
    configure_blas_threads(comm.local_size)
    config = load_config(args.config, ["log.every=1000000000", "dist.check_every=0", *args.set])
    trainer = Trainer(config, comm, CapturingReporter())
    curve, clock = [], {"paused": 0.0}

    def test_accuracy(epoch):
        paused = time.perf_counter()
        elapsed = paused - clock["start"] - clock["paused"]
        test = evaluate(trainer.model, trainer.dataset.test, comm, trainer.loader, config.eval.batch)
        curve.append({"epoch": epoch + 1, "seconds": elapsed, "accuracy": 1.0 - test["error"]})
        clock["paused"] += time.perf_counter() - paused

    trainer.on_epoch_end = test_accuracy
    comm.barrier()
    clock["start"] = time.perf_counter()
    trainer.run()
    if comm.is_root:
        common.emit({"system": "ddp_edf", "world": comm.world_size, "curve": curve})


if __name__ == "__main__":
    main()
