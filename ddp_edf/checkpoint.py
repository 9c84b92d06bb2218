"""Checkpoints: OUT/checkpoints/step-NNNNNNNN.npz, written atomically, read without pickle.

Content (format version 1):
  params            the flat parameter buffer (float32)
  optim.<name>      each optimizer state array (velocity; m, v), same layout as params
  meta              UTF-8 JSON as a uint8 array: format_version, step, epoch, step_in_epoch, seed,
                    optimizer steps_taken, parameter layout [[name, shape], ...], the resolved config

Writing goes to a temporary file in the same folder, which is flushed, fsynced and then renamed over
the final name, so a crash at any instant leaves the previous checkpoints intact.  Reading uses
``np.load(allow_pickle=False)`` and ``json``: a file holding pickled objects is refused.
"""

from __future__ import annotations

import json
import os
import re
import sys
import zipfile
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1
NAME = re.compile(r"^step-(\d{8})\.npz$")
# Keys that change the model or the data order: a checkpoint must agree on them to be resumed.
TRAJECTORY_KEYS = ("model", "data.dataset", "data.dev_size", "data.train_limit", "train.global_batch",
                   "train.drop_last", "optim.name")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or belongs to another model or config."""


def checkpoint_dir(out_dir) -> Path:
    return Path(out_dir) / "checkpoints"


def write_atomically(path, write):
    """``write(handle)`` into a temporary file beside ``path``, fsync, rename: readers see the old file or the new."""
    path = Path(path)
    temporary = path.parent / f".{path.name}.tmp-{os.getpid()}"
    try:
        with open(temporary, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # make the rename itself durable
        finally:
            os.close(directory)
    finally:
        if temporary.exists():
            temporary.unlink()


def save_checkpoint(out_dir, params: np.ndarray, optim_state: dict, meta: dict, keep: int) -> Path:
    folder = checkpoint_dir(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{meta['step']:08d}.npz"
    arrays = {"params": params, **{f"optim.{k}": np.asarray(v) for k, v in optim_state.items()},
              "meta": np.frombuffer(json.dumps({**meta, "format_version": FORMAT_VERSION}).encode(), np.uint8)}
    write_atomically(path, lambda handle: np.savez(handle, **arrays))
    for old in sorted(p for p in folder.iterdir() if NAME.match(p.name))[:-keep]:
        old.unlink()
    return path


def load_checkpoint(path) -> dict:
    """{'params', 'optim' (dict), 'meta' (dict)}; CheckpointError naming the file if it is unusable."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
        meta = json.loads(arrays.pop("meta").tobytes().decode())
        params = arrays.pop("params")
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} not found") from None
    except ValueError as error:
        if "pickle" in str(error).lower():
            raise CheckpointError(f"checkpoint {path} holds pickled objects; refused (never unpickled)") from None
        raise CheckpointError(f"checkpoint {path} is corrupt ({error})") from None
    except (OSError, KeyError, UnicodeDecodeError, EOFError, zipfile.BadZipFile) as error:
        raise CheckpointError(f"checkpoint {path} is corrupt or incomplete ({type(error).__name__}: {error})") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {meta.get('format_version')}, "
                              f"this ddp_edf reads {FORMAT_VERSION}")
    optim = {name[len("optim."):]: value for name, value in arrays.items() if name.startswith("optim.")}
    return {"params": params, "optim": optim, "meta": meta, "path": str(path)}


def latest_checkpoint(out_dir, warn=None):
    """The newest checkpoint in OUT that loads; corrupt ones are skipped with a warning naming them."""
    warn = warn or (lambda message: print(message, file=sys.stderr))
    folder = checkpoint_dir(out_dir)
    candidates = sorted((p for p in folder.iterdir() if NAME.match(p.name)), reverse=True) if folder.is_dir() else []
    for path in candidates:
        try:
            return load_checkpoint(path)
        except CheckpointError as error:
            warn(f"warning: skipping {error}")
    return None


def _lookup(tree: dict, key: str):
    for part in key.split("."):
        tree = tree.get(part, {}) if isinstance(tree, dict) else None
    return tree


def check_compatible(checkpoint: dict, config: dict, layout: list):
    """Refuse a checkpoint of another model, dataset, batch or optimizer, naming the first mismatch."""
    saved_layout = [[name, list(shape)] for name, shape in checkpoint["meta"]["layout"]]
    if saved_layout != [[name, list(shape)] for name, shape in layout]:
        raise CheckpointError(f"checkpoint {checkpoint['path']} is of another model: parameters "
                              f"{saved_layout} vs this model's {[[n, list(s)] for n, s in layout]}")
    for key in TRAJECTORY_KEYS:
        saved, current = _lookup(checkpoint["meta"]["config"], key), _lookup(config, key)
        if saved != current:
            raise CheckpointError(f"checkpoint {checkpoint['path']} was made with {key} = {saved!r}, this run has "
                                  f"{current!r}; resume with the same value or start a new --out")
