"""Time to accuracy, ddp_edf: train with a config; after every epoch, pause the clock and measure test accuracy.

    [mpiexec -n W] python benchmarks/workers/tta_ddp_edf.py --config configs/fashion_tta.toml [--set KEY=VALUE ...]
                                                            [--stop-at ACCURACY]

The trainer is the one ``python -m ddp_edf.train`` builds from the config (ddp_edf.train.build_trainer),
with no output folder.  Trainer.fit runs one epoch at a time, the schedule's horizon set to the whole
run (Schedule.total_steps), so the steps are exactly those of one fit over every epoch.  Between two fits the clock
pauses while the test accuracy is measured.  Rank 0 prints, for each epoch, the training wall time
from the first step (test evaluations excluded; everything else included: data, steps, the
per-epoch dev evaluation) and the test accuracy there.  --stop-at ends the run after the first epoch
whose test accuracy reaches it (the schedule keeps the whole run's horizon).
"""

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402

from ddp_edf.config import load_config  # noqa: E402
from ddp_edf.parallel.comm import make_comm  # noqa: E402
from ddp_edf.train import build_trainer  # noqa: E402


def fit_by_epoch(trainer, epochs: int, max_steps: int = 0, after_epoch=lambda epoch: False):
    """trainer.fit(epochs, max_steps), one epoch per call, ``after_epoch(epoch)`` (from 1) after each; it
    returns True to stop there."""
    per_epoch = trainer.steps_per_epoch
    total = min(epochs * per_epoch, max_steps or epochs * per_epoch)
    trainer.schedule = dataclasses.replace(trainer.schedule, total_steps=total)   # the horizon of the whole run
    while trainer.step < total:
        epoch = trainer.step // per_epoch + 1
        trainer.fit(epochs, max_steps=min(epoch * per_epoch, total))
        if after_epoch(epoch):
            return


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(common.ROOT / "configs" / "fashion_tta.toml"))
    parser.add_argument("--set", action="append", default=[], help="config override, e.g. train.epochs=5")
    parser.add_argument("--stop-at", type=float, default=2.0, help="stop once the test accuracy reaches this")
    args = parser.parse_args()
    comm = make_comm("auto")
    config = load_config(args.config, ["log.every=1000000000", "log.echo=false", "dist.check_every=0", *args.set])
    trainer = build_trainer(config, comm, out=None)
    test, trainer.test = trainer.test, None   # measured here, clock paused, not in fit's own time
    curve, clock = [], {"paused": 0.0}

    def test_accuracy(epoch):
        paused = time.perf_counter()
        elapsed = paused - clock["start"] - clock["paused"]
        curve.append({"epoch": epoch, "seconds": elapsed, "accuracy": 1.0 - trainer.evaluate(test)["error"]})
        clock["paused"] += time.perf_counter() - paused
        return curve[-1]["accuracy"] >= args.stop_at

    comm.barrier()
    clock["start"] = time.perf_counter()
    fit_by_epoch(trainer, config.train.epochs, config.train.max_steps, test_accuracy)
    if comm.is_root:
        common.emit({"system": "ddp_edf", "world": comm.world_size, "curve": curve})


if __name__ == "__main__":
    main()
