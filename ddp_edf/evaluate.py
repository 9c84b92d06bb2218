"""python -m ddp_edf.evaluate --checkpoint PATH [--split dev|test|train] [--batch N] [--data-dir DIR]

Loss and error rate of a saved model on one split, in one process or sharded over MPI ranks.
PATH is a checkpoint (OUT/checkpoints/step-*.npz) or a run folder OUT (its newest valid checkpoint).
The model and the data split (dataset, data.dev_size, data.train_limit) come from the config saved in
the checkpoint, built as training built them (ddp_edf/build.py), so "dev" is exactly the held-out set
the run reported on; other data than the run's (by CRC-32) is refused.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

from .build import dataset_of, model_of
from .config import ADDED_LATER, ConfigError, all_keys, from_dict
from .data import DataError
from .data.splits import fingerprint
from .errors import OptionError
from .parallel.agreement import OutOfSyncError, root_decides
from .parallel.faults import launch
from .parallel.reducers import Allreduce
from .parallel.threads import configure_blas_threads
from .training.checkpoint import read_checkpoint
from .training.data_parallel import DataParallel
from .training.errors import CheckpointError
from .training.run_folder import latest_checkpoint

ERRORS = (ConfigError, DataError, CheckpointError, OutOfSyncError, OptionError)


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m ddp_edf.evaluate",
                                     description="Evaluate a checkpoint on a data split (serial or under mpirun).")
    parser.add_argument("--checkpoint", required=True, metavar="PATH",
                        help="a checkpoint .npz, or a run folder (its newest valid checkpoint)")
    parser.add_argument("--split", choices=("dev", "test", "train"), default="test")
    parser.add_argument("--batch", type=int, default=0, help="examples per forward pass (default: eval.batch)")
    parser.add_argument("--data-dir", help="where the dataset files are, if not where training found them")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line")
    parser.add_argument("--dist", choices=("auto", "mpi", "serial"), default="auto")
    return parser.parse_args(argv)


def saved_run(path: str) -> dict:
    """The checkpoint's path and meta, with the command-line config it was trained with (rank 0 reads)."""
    checkpoint = latest_checkpoint(path) if os.path.isdir(path) else read_checkpoint(path)
    if checkpoint is None:
        raise CheckpointError(f"{path} holds no valid checkpoint (looked in {path}/checkpoints)")
    options = checkpoint["meta"].get("options")
    if not isinstance(options, dict) or "model" not in options:
        raise CheckpointError(f"checkpoint {checkpoint['path']} holds no command-line config (it was written by a "
                              f"Python script): evaluate it there with Trainer.evaluate or DataParallel.evaluate")
    missing = [key for key in all_keys() if key not in ADDED_LATER and (not isinstance(
               options.get(key.split(".")[0]), dict) or key.split(".")[1] not in options[key.split(".")[0]])]
    if missing:    # defaults would silently stand in for the run's values (its dev split, its model)
        raise CheckpointError(f"checkpoint {checkpoint['path']}: its saved config lacks {missing}: corrupt")
    return {"path": checkpoint["path"], "meta": checkpoint["meta"]}


def run(args, comm) -> int:
    if args.batch < 0:
        raise ConfigError(f"--batch {args.batch} must be positive")
    saved = root_decides(comm, lambda: saved_run(args.checkpoint))    # DDP: rank 0 reads, every rank learns
    config = from_dict(saved["meta"]["options"], source=f"config saved in {saved['path']}")
    if args.data_dir:   # the files moved: an idx: dataset names its folder itself
        data = {"dataset": f"idx:{args.data_dir}"} if config.data.dataset.startswith("idx:") else {"dir": args.data_dir}
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, **data))
    comm.blas_note = configure_blas_threads(comm.local_size, 1 if config.dist.deterministic else 0)
    dataset = dataset_of(config, comm)
    model = model_of(config, dataset)
    here = {name: fingerprint(getattr(dataset, name)) for name in ("train", "dev", "test")}
    if saved["meta"].get("run", {}).get("data CRC-32") != here:
        raise DataError(f"the {config.data.dataset} files found here (CRC-32 {here}) are not the data the run trained "
                        f"on ({saved['meta'].get('run', {}).get('data CRC-32')}): give the run's data (--data-dir)")
    dp = DataParallel(model.loss, (model.x, model.y), Allreduce(comm), errors=model.errors)
    dp.load(saved["path"])                         # DDP: rank 0 reads and checks the graph; every rank loads
    split = getattr(dataset, args.split)
    if len(split) == 0:
        raise ConfigError(f"--split {args.split}: the run kept no {args.split} examples (data.dev_size = 0): "
                          f"evaluate test or train")
    figures = dp.evaluate(split, args.batch or config.eval.batch)
    result = {"checkpoint": saved["path"], "step": saved["meta"].get("step"), "split": args.split,
              "dataset": config.data.dataset, **figures, "accuracy": 1.0 - figures["error"]}
    if comm.is_root:
        print(json.dumps(result) if args.json else
              f"{result['checkpoint']} (step {result['step']}): {args.split} loss {result['loss']:.4f} error "
              f"{result['error']:.4f} accuracy {result['accuracy']:.4f} ({result['examples']} examples, "
              f"{comm.world_size} rank{'s' * (comm.world_size > 1)})")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    return launch(args.dist, lambda comm: run(args, comm), ERRORS, ERRORS)


if __name__ == "__main__":
    sys.exit(main())
