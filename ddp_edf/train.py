"""python -m ddp_edf.train [--config PATH] [--set section.key=value ...] [--out DIR] [--init PATH] [--resume auto|PATH]

Runs in one process, or on every rank under mpirun / mpiexec / srun (detected; --dist forces).
A thin layer: it builds the model, the data and the optimizer a config describes and hands them to
the same Trainer a Python script uses (ddp_edf.Trainer).
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path

from .config import ConfigError, describe_keys, load_config, to_dict, to_toml
from .data import DataError, load_dataset, prepare_dataset
from .engine.models import build_model
from .engine.optim import SGD, Adam, Schedule
from .parallel.data_parallel import OutOfSyncError, check_agreement, root_decides
from .parallel.faults import WatchdogFired, launch
from .training.checkpoint import CheckpointError, write_atomically
from .training.errors import EXIT_PREEMPTED, Preempted, TrainingError
from .training.run_folder import RunFolderError, what_run
from .training.trainer import Trainer

EXPECTED_ERRORS = (ConfigError, DataError, TrainingError, OutOfSyncError, CheckpointError, RunFolderError,
                   WatchdogFired)
# Raised alike on every rank (rank 0 decided, or all saw the same): printed once, by rank 0
# (by another rank too if rank 0 did not meet it: see run_or_abort).
COLLECTIVE_ERRORS = (ConfigError, DataError, TrainingError, OutOfSyncError, CheckpointError, RunFolderError)


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


def build_optimizer(o):
    if o.name == "sgd":
        return SGD(o.lr, o.momentum, o.nesterov, o.weight_decay)
    return Adam(o.lr, (o.beta1, o.beta2), o.eps, o.weight_decay)


def build_trainer(config, comm, out=None, echo=True) -> Trainer:
    """The model, data and optimizer ``config`` describes, handed to the Trainer."""
    data, m, o, t = config.data, config.model, config.optim, config.train
    if comm.is_root:   # DDP: one rank downloads and decompresses while the others wait
        prepare_dataset(data.dataset, data.dir, data.download)
    comm.barrier()
    dataset = load_dataset(data.dataset, data.dir, False, data.dev_size, data.train_limit)
    try:
        model = build_model(m.kind, dataset.num_features, dataset.num_classes, m.hidden, m.activation, m.init_seed)
        return Trainer(
            model.loss, (model.x, model.y), dataset.train, errors=model.errors, dev=dataset.dev, test=dataset.test,
            optimizer=build_optimizer(o), schedule=Schedule(o.schedule, o.warmup_steps, o.step_size, o.gamma, o.min_lr),
            global_batch=t.global_batch, micro_batches=t.micro_batches, drop_last=t.drop_last, seed=t.seed,
            out=out, checkpoint_every=config.checkpoint.every_steps, keep_checkpoints=config.checkpoint.keep,
            log_every=config.log.every, eval_every=config.eval.every, eval_batch=config.eval.batch,
            check_every=config.dist.check_every, timeout_s=config.dist.timeout_s, nonfinite=config.dist.nonfinite,
            max_skipped=config.dist.max_skipped, deterministic=config.dist.deterministic, chunk=config.dist.chunk,
            comm=comm, echo=echo, run_config=to_dict(config),
            trajectory={"model": to_dict(config)["model"], "data.dataset": data.dataset,
                        "data.dev_size": len(dataset.dev), "data.train_limit": data.train_limit})
    except MemoryError:
        raise ConfigError(f"not enough memory for the model (model.hidden = {m.hidden} on {dataset.num_features} "
                          f"inputs): give smaller widths") from None


def write_config(out, config, seed, comm):
    """OUT/config.toml: the resolved config with the data-order seed actually used (rank 0)."""
    config.train.seed = seed
    if comm.is_root:
        os.makedirs(out, exist_ok=True)
        write_atomically(Path(out) / "config.toml", lambda handle: handle.write(to_toml(config).encode()))


def run(args, comm) -> int:
    config = load_config(args.config, args.set)
    check_agreement(comm, {"--init": args.init, "--resume": args.resume, "--out": args.out,   # DDP: one command
                           **{f"{section}.{key}": value for section, values in to_dict(config).items()
                              for key, value in values.items()}})
    out = choose_out_dir(args.out, args.config, comm)
    trainer = build_trainer(config, comm, out)
    with trainer.folder.claimed(fresh=not args.resume) as note:   # rank 0 holds OUT's lock from here on
        if note and comm.is_root:
            print(note)
        # --resume auto in a folder holding no run starts one; a resumed run keeps its parameters and config
        fresh = not args.resume or root_decides(comm, lambda: args.resume == "auto" and not what_run(out))
        if args.init and fresh:
            trainer.load_parameters(args.init)
        elif args.init and comm.is_root:
            print(f"note: --init {args.init} is not used: the run resumes from its checkpoint")
        if fresh:    # a new run's config (and seed) before the first step
            write_config(out, config, trainer.seed, comm)
        try:
            trainer.fit(config.train.epochs, config.train.max_steps, resume=args.resume)
        except Preempted:
            write_config(out, config, trainer.seed, comm)
            return EXIT_PREEMPTED
        write_config(out, config, trainer.seed, comm)
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    return launch(args.dist, lambda comm: run(args, comm), EXPECTED_ERRORS, COLLECTIVE_ERRORS)


if __name__ == "__main__":
    sys.exit(main())

