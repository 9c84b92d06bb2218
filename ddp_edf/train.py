"""python -m ddp_edf.train [--config PATH] [--set section.key=value ...] [--out DIR] [--init PATH]

Runs in one process, or on every rank under mpirun / mpiexec / srun (detected; --dist forces).
"""

from __future__ import annotations

import argparse
import datetime
import os
import signal
import sys
from pathlib import Path

import numpy as np

from . import BLAS_KERNEL_NOTE
from .blas import loaded_kernel
from .checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, write_atomically
from .config import ConfigError, describe_keys, load_config, to_toml
from .data import DataError
from .dist.data_parallel import OutOfSyncError
from .dist.faults import Watchdog, launch
from .dist.threads import configure_blas_threads
from .report import Reporter
from .trainer import Preempted, Trainer, TrainingError

EXPECTED_ERRORS = (ConfigError, DataError, TrainingError, OutOfSyncError, CheckpointError)
COLLECTIVE_ERRORS = (ConfigError, TrainingError, OutOfSyncError)
# Exit code after SIGTERM/SIGUSR1: the step finished, a checkpoint was written; rerun with --resume auto.
EXIT_PREEMPTED = 75


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m ddp_edf.train", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train an EDF model, in one process or data-parallel over MPI ranks.",
        epilog="config keys (defaults = configs/mnist_mlp.toml):\n" + describe_keys())
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


def choose_out_dir(requested, config_path, comm, resuming=False) -> str:
    """Rank 0 picks OUT (a fresh folder under runs/ by default) and tells the others."""
    out = None
    if comm.is_root:
        if requested:
            out = requested
        else:
            stem = Path(config_path).stem if config_path else "mnist_mlp"
            stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
            out = os.path.join("runs", f"{stamp}-{stem}")
            suffix = 1
            while os.path.exists(out):
                suffix += 1
                out = os.path.join("runs", f"{stamp}-{stem}-{suffix}")
        if not resuming and os.path.exists(os.path.join(out, "metrics.jsonl")):
            out = ConfigError(f"--out {out} already holds a run (metrics.jsonl); choose another --out "
                              f"so nothing saved there is overwritten, or continue it with --resume auto")
    out = comm.broadcast_obj(out)
    if isinstance(out, Exception):
        raise out
    return out


def save_parameters(path, state: dict):
    """An .npz keyed by parameter name, written atomically (never half-written)."""
    write_atomically(path, lambda handle: np.savez(handle, **state))


def find_resume_checkpoint(args, out, comm, reporter):
    """Rank 0's checkpoint to resume from (None: start fresh; always None on other ranks)."""
    if not args.resume or not comm.is_root:
        return None
    if args.resume == "auto":
        return latest_checkpoint(out, warn=reporter.log)
    return load_checkpoint(args.resume)


def run(args, comm) -> int:
    config = load_config(args.config, args.set)
    out = choose_out_dir(args.out, args.config, comm, resuming=bool(args.resume))
    threads_note = configure_blas_threads(comm.local_size)
    reporter = Reporter(out, enabled=comm.is_root)
    trainer = Trainer(config, comm, reporter, init_path=args.init)
    trainer.out_dir = out
    checkpoint = find_resume_checkpoint(args, out, comm, reporter)
    if comm.broadcast_obj(checkpoint is not None):
        trainer.resume_from(checkpoint)
    config.train.seed = trainer.seed  # the resolved config records the seed actually used
    if comm.is_root:
        (Path(out) / "config.toml").write_text(to_toml(config))
    reporter.log(f"out: {out}; {threads_note}; BLAS: {loaded_kernel()} kernels ({BLAS_KERNEL_NOTE})")
    reporter.start_progress(trainer.total_steps)
    watchdog = Watchdog(comm, config.dist.timeout_s).start()
    trainer.on_step = watchdog.kick

    def request_stop(signum, frame):
        trainer.stop_requested = True  # acted on at the end of the current step, by every rank together
    for signum in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(signum, request_stop)
    try:
        trainer.run()
    except Preempted as stop:
        reporter.log(f"{stop}; continue with --resume auto --out {out} (exit code {EXIT_PREEMPTED})")
        reporter.close()
        return EXIT_PREEMPTED
    finally:
        watchdog.stop()
    if comm.is_root:
        save_parameters(os.path.join(out, "model.npz"), trainer.graph.state_dict())
    reporter.log(f"done: {trainer.step} steps; parameters in {os.path.join(out, 'model.npz')}")
    reporter.close()
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    return launch(args.dist, lambda comm: run(args, comm), EXPECTED_ERRORS, COLLECTIVE_ERRORS)


if __name__ == "__main__":
    sys.exit(main())
