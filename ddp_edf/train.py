"""python -m ddp_edf.train [--config PATH] [--set section.key=value ...] [--out DIR] [--init PATH] [--resume auto|PATH]

Runs in one process, or on every rank under mpirun / mpiexec / srun (detected; --dist forces).
A thin layer: it builds the data, model and optimizer a config describes (ddp_edf/build.py) and hands
them to the same Trainer a Python script uses, with the config as its options.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import sys
from pathlib import Path

from .build import dataset_of, model_of
from .config import ConfigError, describe_keys, load_config, optimizer_of, to_toml
from .data import DataError
from .errors import OptionError
from .parallel.agreement import OutOfSyncError, check_agreement, root_decides
from .parallel.faults import launch
from .parallel.threads import configure_blas_threads
from .data.atomic import write_atomically
from .training.errors import EXIT_PREEMPTED, CheckpointError, Preempted, RunFolderError, TrainingError, disk_error
from .training.run_folder import what_run
from .training.trainer import Trainer

# Raised alike on every rank (rank 0 decided, or all saw the same): printed once, by rank 0
# (by another rank too if rank 0 did not meet it: see run_or_abort).
COLLECTIVE_ERRORS = (ConfigError, DataError, TrainingError, OutOfSyncError, CheckpointError, RunFolderError,
                     OptionError)
EXPECTED_ERRORS = COLLECTIVE_ERRORS


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m ddp_edf.train", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train an EDF model, in one process or data-parallel over MPI ranks.",
        epilog="config keys (defaults = configs/digits_mlp.toml):\n" + describe_keys())
    parser.add_argument("--config", help="TOML file of overrides (see configs/)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one key, e.g. --set optim.lr=0.05 (repeatable)")
    parser.add_argument("--out", help="output folder (default: a new folder under runs/)")
    parser.add_argument("--init", help="start from parameters in an .npz keyed by name (fc0.W, ...)")
    parser.add_argument("--resume", metavar="auto|PATH",
                        help="continue from the newest valid checkpoint in OUT (auto; none: start fresh) "
                             "or from the checkpoint file PATH")
    parser.add_argument("--dist", choices=("auto", "mpi", "serial"), default="auto",
                        help="communicator: MPI when launched by mpirun/mpiexec/srun (auto), or forced")
    return parser.parse_args(argv)


def choose_out_dir(requested, config_path, comm) -> str:
    """Rank 0 picks OUT (a fresh folder under runs/ by default) and tells the others."""
    out = requested
    if comm.is_root and not out:
        stem = Path(config_path).stem if config_path else "digits_mlp"
        out = base = os.path.join("runs", f"{datetime.datetime.now():%Y%m%d-%H%M%S}-{stem}")
        suffix = 1
        while os.path.exists(out):
            suffix += 1
            out = f"{base}-{suffix}"
    return comm.broadcast_obj(out)


def write_config(out, config, seed, comm):
    """OUT/config.toml: the resolved config with the data-order seed actually used (rank 0 writes)."""
    text = to_toml(dataclasses.replace(config, train=dataclasses.replace(config.train, seed=seed))).encode()
    path = Path(out) / "config.toml"

    def write():
        try:
            write_atomically(path, lambda handle: handle.write(text))
        except OSError as error:
            raise disk_error(error, path) from None
    root_decides(comm, write)


def build_trainer(config, comm, out=None) -> Trainer:
    """The Trainer of ``config``: its data, model, optimizer and schedule, with the config as its options."""
    comm.set_timeout(config.dist.timeout_s)
    comm.blas_note = configure_blas_threads(comm.local_size, 1 if config.dist.deterministic else 0)
    dataset = dataset_of(config, comm)
    model = model_of(config, dataset)
    optimizer, schedule = optimizer_of(config.optim)
    return Trainer(model.loss, (model.x, model.y), dataset.train, errors=model.errors, dev=dataset.dev,
                   test=dataset.test, optimizer=optimizer, schedule=schedule, out=out, comm=comm, options=config)


def run(args, comm) -> int:
    config = load_config(args.config, args.set)
    check_agreement(comm, {"--init": args.init, "--resume": args.resume, "--out": args.out, **config.flat()})  # DDP
    out = choose_out_dir(args.out, args.config, comm)
    trainer = build_trainer(config, comm, out)
    with trainer.folder.claimed():                 # rank 0 holds OUT's lock from here on (fit takes it again)
        if root_decides(comm, lambda: not what_run(out)):   # a new run: its config (and seed) before the first step
            write_config(out, config, trainer.seed, comm)
        try:
            result = trainer.fit(config.train.epochs, config.train.max_steps, resume=args.resume, init=args.init)
        except Preempted:
            write_config(out, config, trainer.seed, comm)
            return EXIT_PREEMPTED
        if not result.get("already_finished"):
            write_config(out, config, trainer.seed, comm)
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    return launch(args.dist, lambda comm: run(args, comm), EXPECTED_ERRORS, COLLECTIVE_ERRORS)


if __name__ == "__main__":
    sys.exit(main())
