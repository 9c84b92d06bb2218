"""Checkpoint files: a graph's parameters with its optimizer's state, written atomically, read without pickle.

Content (format version 3), an .npz of plain arrays:
  params            the flat parameter buffer (float32)
  optim.<name>      each optimizer state array (velocity; m, v), same layout as params; optim.steps_taken
  meta              UTF-8 JSON as a uint8 array: format_version, the graph's structure (op types and
                    wiring) and parameter layout, the optimizer's name and state names, and the caller's
                    facts (the Trainer's: step, seed, world size, the run's batch and data, its options)

Writing goes through data/atomic.py, so a crash at any instant leaves the previous file intact.
Reading uses ``np.load(allow_pickle=False)`` and ``json``: a file holding pickled objects is refused.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from ..data.atomic import write_atomically
from .errors import CheckpointError, disk_error

FORMAT_VERSION = 3


def write_checkpoint(path, graph, optimizer, meta: dict):
    """``graph``'s parameters and ``optimizer``'s state (or none) into the checkpoint file ``path``."""
    state = optimizer.state_dict() if optimizer is not None else {}
    meta = {**meta, "format_version": FORMAT_VERSION, "graph": graph.structure(), "layout": graph.layout(),
            "optimizer": type(optimizer).__name__ if optimizer is not None else None,
            "optimizer_state": list(getattr(optimizer, "state_names", ()))}
    arrays = {"params": graph.params, **{f"optim.{k}": np.asarray(v) for k, v in state.items()},
              "meta": np.frombuffer(json.dumps(meta).encode(), np.uint8)}
    write_arrays(path, arrays)


def write_arrays(path, arrays: dict):
    """An .npz of named arrays (model.npz: parameters by name), written atomically; a RunFolderError if it cannot be."""
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, lambda handle: np.savez(handle, **arrays))
    except OSError as error:
        raise disk_error(error, path) from None


def read_arrays(path, what: str) -> dict:
    """The arrays of an .npz file, never unpickled; a CheckpointError naming the file otherwise."""
    if Path(path).is_dir():
        hint = (f"give a checkpoint file ({path}/checkpoints/step-N.npz), or continue that run in place "
                f"(--resume auto --out {path}, resume=\"auto\")" if what == "checkpoint" else f"give {path}/model.npz")
        raise CheckpointError(f"{what} {path} is a folder: {hint}")
    try:
        archive = np.load(path, allow_pickle=False)
        if not hasattr(archive, "files"):
            raise CheckpointError(f"{what} {path} is a single array (.npy), not an .npz of named arrays")
        with archive:
            return {name: archive[name] for name in archive.files}
    except FileNotFoundError:
        raise CheckpointError(f"{what} {path} not found") from None
    except ValueError as error:
        if "pickle" in str(error).lower() and zipfile.is_zipfile(path):
            raise CheckpointError(f"{what} {path} holds pickled objects; refused (never unpickled)") from None
        raise CheckpointError(f"{what} {path} is corrupt or not an .npz file (not a zip archive of arrays)") from None
    except (OSError, KeyError, EOFError, zipfile.BadZipFile) as error:
        raise CheckpointError(f"{what} {path} is corrupt or incomplete ({type(error).__name__}: {error})") from None


def check_array(array, path, name: str, n: int | None = None):
    """A flat array of finite floats (of n values, if given), or a CheckpointError naming what is wrong."""
    if np.ndim(array) != 1 or np.asarray(array).dtype.kind != "f" or (n is not None and np.size(array) != n):
        raise CheckpointError(f"{path}: '{name}' holds {np.shape(array)} {np.asarray(array).dtype} values; "
                              f"expected {n if n is not None else 'a flat array of'} floats")
    if not np.all(np.isfinite(array)):
        raise CheckpointError(f"non-finite values in {path} ('{name}'): the run it comes from had diverged; "
                              f"resume from an earlier checkpoint")


def check_meta(meta: dict, path, types: dict):
    """Every key of ``types`` ({key: (type, least value or None)}) present with that type, else a CheckpointError."""
    wrong = [key for key, (kind, low) in types.items() if not isinstance(meta.get(key), kind) or
             isinstance(meta.get(key), bool) or (low is not None and meta[key] < low)]
    if wrong:
        raise CheckpointError(f"checkpoint {path}: its metadata lacks or mistypes {wrong}: corrupt")


def read_checkpoint(path) -> dict:
    """{'params', 'optim' (dict), 'meta' (dict), 'path'}; CheckpointError naming the file if unusable."""
    arrays = read_arrays(path, "checkpoint")
    try:
        meta = json.loads(arrays.pop("meta").tobytes().decode())
    except (KeyError, ValueError, UnicodeDecodeError):
        raise CheckpointError(f"checkpoint {path} has no readable 'meta': not a ddp_edf checkpoint") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {path} has corrupt metadata (not a JSON object): not a ddp_edf checkpoint")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {meta.get('format_version')}, this ddp_edf "
                              f"reads {FORMAT_VERSION}")
    check_meta(meta, path, {"graph": (list, None), "layout": (list, None), "optimizer_state": (list, None)})
    if "params" not in arrays:
        raise CheckpointError(f"checkpoint {path} holds no 'params': corrupt")
    optim = {name[len("optim."):]: value for name, value in arrays.items() if name.startswith("optim.")}
    steps = optim.get("steps_taken")
    if meta.get("optimizer") and (steps is None or np.shape(steps) != () or steps.dtype.kind not in "iu"):
        raise CheckpointError(f"checkpoint {path}: 'optim.steps_taken' is missing or not one integer: corrupt")
    check_array(arrays["params"], path, "params")
    return {"params": arrays["params"], "optim": optim, "meta": meta, "path": str(path)}


def check_fits(checkpoint: dict, graph, optimizer):
    """Refuse a checkpoint of another graph (op types, wiring, parameters) or optimizer, naming the first mismatch."""
    path, meta = checkpoint["path"], checkpoint["meta"]
    if meta["layout"] != graph.layout():
        raise CheckpointError(f"checkpoint {path} is of another model: parameters {meta['layout']} vs this "
                              f"model's {graph.layout()}")
    for k, (saved, here) in enumerate(zip(meta["graph"], graph.structure())):
        if saved != here:
            raise CheckpointError(f"checkpoint {path} is of another graph: its node {k} is {saved}, this graph's "
                                  f"is {here} (same parameters, other ops or wiring); load_parameters() takes "
                                  f"parameters by name")
    if len(meta["graph"]) != len(graph.structure()):
        raise CheckpointError(f"checkpoint {path} is of another graph: {len(meta['graph'])} nodes, this one has "
                              f"{len(graph.structure())}")
    check_array(checkpoint["params"], path, "params", graph.num_params)
    if optimizer is None:
        return
    if meta.get("optimizer") != type(optimizer).__name__ or meta["optimizer_state"] != list(optimizer.state_names):
        raise CheckpointError(f"checkpoint {path} was made with optimizer = {meta.get('optimizer')!r} (state "
                              f"{meta['optimizer_state']}), this run has {type(optimizer).__name__!r} (state "
                              f"{list(optimizer.state_names)}): resume with the same optimizer")
    for name in optimizer.state_names:
        if name not in checkpoint["optim"]:
            raise CheckpointError(f"checkpoint {path} lacks the optimizer state '{name}'")
        check_array(checkpoint["optim"][name], path, name, graph.num_params)


def read_parameters(path) -> dict:
    """Parameters from an .npz keyed by parameter name (model.npz, or --init), never unpickled."""
    arrays = read_arrays(path, "parameter file")
    for name, array in arrays.items():
        if array.dtype.kind not in "fiu" or not np.all(np.isfinite(array)):
            raise CheckpointError(f"{path}: '{name}' is not finite numbers ({array.dtype}): refused")
    return arrays
