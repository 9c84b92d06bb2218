"""Checkpoints: OUT/checkpoints/step-NNNNNNNN.npz, written atomically, read without pickle.

Content (format version 2):
  params            the flat parameter buffer (float32)
  optim.<name>      each optimizer state array (velocity; m, v), same layout as params
  meta              UTF-8 JSON as a uint8 array: format_version, step, epoch, step_in_epoch, seed,
                    world_size, parameter layout [[name, shape], ...], the trajectory (what a
                    resumed run must share: global batch, optimizer, data, ...) and the caller's
                    record of the run (the command line's resolved config)

Writing goes to a temporary file in the same folder, which is flushed, fsynced and then renamed over
the final name, so a crash at any instant leaves the previous checkpoints intact.  Reading uses
``np.load(allow_pickle=False)`` and ``json``: a file holding pickled objects is refused.
"""

from __future__ import annotations

import json
import os
import sys
import zipfile
from pathlib import Path

import numpy as np

from ..parallel.data_parallel import broadcast_params, root_decides
from .run_folder import RunFolderError, check_resume_target, checkpoints_in, disk_error, move_newer_aside, what_run

FORMAT_VERSION = 2
META_TYPES = {"step": int, "seed": int, "world_size": int, "layout": list, "trajectory": dict}


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or belongs to another model or config."""


def write_atomically(path, write):
    """``write(handle)`` into a temporary file beside ``path``, fsync, rename: readers see the old file
    or the new, never a half-written one (a full disk included: then the old one stays)."""
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
    except OSError as error:
        raise disk_error(error, path) from None
    finally:
        if temporary.exists():
            temporary.unlink()


def save_checkpoint(out_dir, params: np.ndarray, optim_state: dict, meta: dict, keep: int) -> Path:
    folder = Path(out_dir) / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{meta['step']:08d}.npz"
    arrays = {"params": params, **{f"optim.{k}": np.asarray(v) for k, v in optim_state.items()},
              "meta": np.frombuffer(json.dumps({**meta, "format_version": FORMAT_VERSION}).encode(), np.uint8)}
    write_atomically(path, lambda handle: np.savez(handle, **arrays))
    for _, old in checkpoints_in(out_dir)[:-keep]:
        try:
            old.unlink()
        except OSError as error:   # the new checkpoint is safe; an old one left behind only takes space
            print(f"warning: cannot remove the old checkpoint {old} ({error.strerror})", file=sys.stderr)
    return path


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


def load_checkpoint(path) -> dict:
    """{'params', 'optim' (dict), 'meta' (dict), 'path'}; CheckpointError naming the file if unusable."""
    arrays = read_arrays(path, "checkpoint")
    try:
        meta = json.loads(arrays.pop("meta").tobytes().decode())
    except (KeyError, ValueError, UnicodeDecodeError):
        raise CheckpointError(f"checkpoint {path} has no readable metadata ('meta'): not a ddp_edf checkpoint") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {path} has corrupt metadata (not a JSON object): not a ddp_edf checkpoint")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {meta.get('format_version')}, this ddp_edf "
                              f"reads {FORMAT_VERSION}")
    wrong = [k for k, kind in META_TYPES.items() if not isinstance(meta.get(k), kind) or isinstance(meta.get(k), bool)]
    wrong += [k for k, low in (("step", 0), ("seed", 0), ("world_size", 1)) if not wrong and meta[k] < low]
    if wrong:
        raise CheckpointError(f"checkpoint {path}: its metadata lacks or mistypes {wrong}: corrupt")
    if "params" not in arrays:
        raise CheckpointError(f"checkpoint {path} holds no 'params': corrupt")
    params = arrays.pop("params")
    check_array(params, path, "params")
    optim = {name[len("optim."):]: value for name, value in arrays.items() if name.startswith("optim.")}
    steps = optim.get("steps_taken")
    if steps is None or np.shape(steps) != () or steps.dtype.kind not in "iu":
        raise CheckpointError(f"checkpoint {path}: 'optim.steps_taken' is missing or not one integer: corrupt")
    return {"params": params, "optim": optim, "meta": meta, "path": str(path)}


def latest_checkpoint(out_dir, warn=None):
    """The newest checkpoint in OUT that loads; corrupt ones are skipped with a warning naming them."""
    warn = warn or (lambda message: print(message, file=sys.stderr))
    for _, path in reversed(checkpoints_in(out_dir)):
        try:
            return load_checkpoint(path)
        except CheckpointError as error:
            warn(f"warning: skipping {error}")
    return None


def read_resume_point(resume: str, out_dir, graph, state_names, trajectory: dict, warn=None):
    """The checkpoint ``resume`` names ("auto": the newest valid one in OUT) and its small facts for
    every rank; (None, None) when "auto" finds none.  Resuming from an older checkpoint of OUT moves
    the newer ones aside: the newest checkpoint is then always the resumed run's own."""
    if resume == "auto":
        checkpoint = latest_checkpoint(out_dir, warn) if out_dir else None
        if checkpoint is None and out_dir and what_run(out_dir):
            raise RunFolderError(f"{out_dir} holds a run ({what_run(out_dir)}) but no checkpoint that can be resumed: "
                                 f"starting afresh there would overwrite it; choose another output folder")
    else:
        checkpoint = load_checkpoint(resume)
        if out_dir:
            check_resume_target(resume, out_dir)
    if checkpoint is None:
        return None, None
    check_resumable(checkpoint, graph, state_names, trajectory)
    facts = {k: checkpoint["meta"][k] for k in ("step", "seed", "world_size")}
    facts["skipped_steps"] = int(checkpoint["meta"].get("skipped_steps", 0))
    moved = move_newer_aside(out_dir, facts["step"]) if out_dir else None
    return checkpoint, {**facts, "path": checkpoint["path"], "moved": moved,
                        "steps_taken": int(checkpoint["optim"]["steps_taken"])}


def check_resumable(checkpoint: dict, graph, state_names, trajectory: dict):
    """Refuse a checkpoint of another model, data, batch or optimizer, naming the first mismatch."""
    path, meta, n = checkpoint["path"], checkpoint["meta"], graph.num_params
    if meta.get("layout") != graph.layout():
        raise CheckpointError(f"checkpoint {path} is of another model: parameters {meta.get('layout')} vs this "
                              f"model's {graph.layout()}")
    saved = meta.get("trajectory") or {}
    for key, value in trajectory.items():
        if saved.get(key) != value:
            raise CheckpointError(f"checkpoint {path} was made with {key} = {saved.get(key)!r}, this run has "
                                  f"{value!r}: resume with the same value, or start a new run in another folder")
    for name in state_names:
        if name not in checkpoint["optim"]:
            raise CheckpointError(f"checkpoint {path} lacks the optimizer state '{name}' this run's optimizer needs")
    for name, array in [("params", checkpoint["params"])] + [(name, checkpoint["optim"][name]) for name in state_names]:
        check_array(array, path, name, n)


def load_parameters(path) -> dict:
    """Parameters from an .npz keyed by parameter name (model.npz, or --init), never unpickled."""
    arrays = read_arrays(path, "parameter file")
    for name, array in arrays.items():
        if array.dtype.kind not in "fiu" or not np.all(np.isfinite(array)):
            raise CheckpointError(f"{path}: '{name}' is not finite numbers ({array.dtype}): refused")
    return arrays


def save_parameters(path, state: dict):
    """An .npz keyed by parameter name (model.npz), written atomically (never half-written)."""
    write_atomically(path, lambda handle: np.savez(handle, **state))


class Checkpoints:
    """The checkpoints of one run folder, across ranks: rank 0 reads and writes the files, every rank
    receives what it needs.  Without an OUT folder nothing is written and "auto" finds nothing."""

    def __init__(self, out_dir, keep: int, comm):
        self.out_dir, self.keep, self.comm = out_dir, keep, comm

    def save(self, params: np.ndarray, optim_state: dict, meta: dict) -> Path | None:
        if self.comm.is_root and self.out_dir:
            return save_checkpoint(self.out_dir, params, optim_state, meta, self.keep)
        return None

    def load_parameters(self, path, graph):
        """graph's parameters from an .npz keyed by name, read by rank 0 and broadcast."""
        def read():
            try:
                graph.load_state_dict(load_parameters(path), source=str(path))
            except ValueError as error:      # names or shapes that do not fit this model
                raise CheckpointError(str(error)) from None
        root_decides(self.comm, read)
        broadcast_params(self.comm, graph.params)                  # DDP: rank 0 read them

    def restore(self, resume: str, graph, optimizer, trajectory: dict, warn=None) -> dict | None:
        """Load the checkpoint ``resume`` names into graph and optimizer on every rank; its facts
        (step, seed, path, world_size), or None when resume="auto" finds no checkpoint."""
        found = {}

        def read():
            checkpoint, facts = read_resume_point(resume, self.out_dir, graph, optimizer.state_names, trajectory, warn)
            found.update(checkpoint or {})
            return facts
        facts = root_decides(self.comm, read)
        if facts is None:
            return None
        n, dtype, root = graph.num_params, graph.dtype, self.comm.is_root
        if root:
            graph.params[...] = found["params"]
        broadcast_params(self.comm, graph.params)                  # DDP: rank 0's checkpoint to every rank
        state = {name: self.comm.broadcast(found["optim"][name].astype(dtype) if root else np.empty(n, dtype))
                 for name in optimizer.state_names}
        optimizer.load_state_dict({**state, "steps_taken": facts["steps_taken"]}, dtype)
        return facts
