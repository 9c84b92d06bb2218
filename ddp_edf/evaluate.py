"""python -m ddp_edf.evaluate --checkpoint PATH [--split dev|test|train] [--batch N] [--data-dir DIR]

Loss and error rate of a saved model on one split, in one process or sharded over MPI ranks.
PATH is a checkpoint (OUT/checkpoints/step-*.npz) or a run folder OUT (its newest valid checkpoint).
The model and the data split (dataset, data.dev_size, data.train_limit) come from the config saved in
the checkpoint, so "dev" is exactly the held-out set the run reported on.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .config import ConfigError, all_keys, from_dict, validate
from .data import DataError
from .parallel.data_parallel import OutOfSyncError, broadcast_params, root_decides
from .parallel.faults import launch
from .train import build_trainer
from .training.checkpoint import CheckpointError, check_array, latest_checkpoint, load_checkpoint

EXPECTED_ERRORS = (ConfigError, DataError, CheckpointError, OutOfSyncError)
COLLECTIVE_ERRORS = (ConfigError, DataError, CheckpointError, OutOfSyncError)


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


def read_checkpoint(path: str) -> dict:
    if os.path.isdir(path):
        checkpoint = latest_checkpoint(path)
        if checkpoint is None:
            raise CheckpointError(f"{path} holds no valid checkpoint (looked in {path}/checkpoints)")
    else:
        checkpoint = load_checkpoint(path)
    config = checkpoint["meta"].get("config")
    if not isinstance(config, dict):
        raise CheckpointError(f"checkpoint {checkpoint['path']} holds no command-line config (it was written by a "
                              f"Python script): evaluate it there with Trainer.evaluate")
    missing = [key for key in all_keys() if not isinstance(config.get(key.split(".")[0]), dict)
               or key.split(".")[1] not in config[key.split(".")[0]]]
    if missing:    # defaults would silently stand in for the run's values (its dev split, its model)
        raise CheckpointError(f"checkpoint {checkpoint['path']}: its saved config lacks {missing}: corrupt")
    return checkpoint


def run(args, comm) -> int:
    if args.batch < 0:
        raise ConfigError(f"--batch {args.batch} must be positive")
    checkpoint = {}

    def read():    # DDP: rank 0 reads the file, every rank gets its metadata
        checkpoint.update(read_checkpoint(args.checkpoint))
        return checkpoint["meta"]
    saved = root_decides(comm, read)
    config = from_dict(saved["config"], source=f"config saved in {args.checkpoint}")
    if args.data_dir:   # the files moved: an idx: dataset names its folder itself
        if config.data.dataset.startswith("idx:"):
            config.data.dataset = f"idx:{args.data_dir}"
        else:
            config.data.dir = args.data_dir
    validate(config)
    trainer = build_trainer(config, comm, echo=False)       # the model and data splits of the run
    graph = trainer.graph

    def load():
        trained_on, here = saved["trajectory"].get("data CRC-32 (train, dev, test)"), trainer.trajectory[
            "data CRC-32 (train, dev, test)"]
        if trained_on != here:
            raise DataError(f"the {config.data.dataset} files found here (CRC-32 {here}) are not the data the run "
                            f"trained on ({trained_on}): give the run's data (--data-dir)")
        if saved["layout"] != graph.layout():
            raise CheckpointError(f"checkpoint {checkpoint['path']}: its parameters {saved['layout']} do not fit the "
                                  f"model of its config {graph.layout()}")
        check_array(checkpoint["params"], checkpoint["path"], "params", graph.num_params)
        graph.params[...] = checkpoint["params"]
    root_decides(comm, load)
    broadcast_params(comm, graph.params)  # DDP: every rank evaluates rank 0's parameters
    trainer.eval_batch = args.batch or config.eval.batch
    split = {"dev": trainer.dev, "test": trainer.test, "train": trainer.train}[args.split]
    if len(split) == 0:
        raise ConfigError(f"--split {args.split}: the run kept no {args.split} examples (data.dev_size = 0): "
                          f"evaluate test or train")
    result = trainer.evaluate(split)
    result = {"checkpoint": checkpoint.get("path"), "step": saved["step"], "split": args.split,
              "dataset": config.data.dataset, **result, "accuracy": 1.0 - result["error"]}
    if comm.is_root:
        if args.json:
            print(json.dumps(result))
        else:
            print(f"{result['checkpoint']} (step {result['step']}): {args.split} loss {result['loss']:.4f} "
                  f"error {result['error']:.4f} accuracy {result['accuracy']:.4f} "
                  f"({result['examples']} examples, {comm.world_size} rank{'s' * (comm.world_size > 1)})")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    return launch(args.dist, lambda comm: run(args, comm), EXPECTED_ERRORS, COLLECTIVE_ERRORS)


if __name__ == "__main__":
    sys.exit(main())
