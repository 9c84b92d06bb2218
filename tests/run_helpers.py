"""What the hostile-use tests share: a tiny IDX dataset, the command line's arguments for it, and
checks that a run failed with one clear line and that nothing saved was touched."""

import contextlib
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ddp_edf import train as train_cli
from idx_files import write_dataset


@pytest.fixture
def data(isolated_data):
    write_dataset(isolated_data / "d", n_train=200, n_test=50)
    return isolated_data / "d"


def args(data, out, *extra):
    return ["--dist", "serial", "--out", str(out), "--set", f"data.dataset=idx:{data}", "--set", "data.dev_size=40",
            "--set", "model.hidden=[8]", "--set", "train.global_batch=16", "--set", "train.epochs=3",
            "--set", "train.seed=3", "--set", "log.every=1000", *extra]


def fails(capsys, argv, *expected):
    """Run the command line: exit code 1 and one line naming each of ``expected``, no traceback."""
    assert train_cli.main(argv) == 1
    error = capsys.readouterr().err
    assert "Traceback" not in error and all(part in error for part in expected), error
    return error


def files(out):
    """Every file under OUT with its bytes: to show that nothing saved was touched."""
    return {p.relative_to(out): p.read_bytes() for p in sorted(Path(out).rglob("*")) if p.is_file() and
            p.name != ".lock"}


def params(path):
    with np.load(path, allow_pickle=False) as archive:
        return {k: archive[k] for k in archive.files}


def tiny_checkpoint(out, step, value=1.0, size=5):
    """A valid checkpoint file of a one-parameter graph at OUT/checkpoints/step-N.npz, as a run writes it."""
    from ddp_edf import Graph, Parameter, Relu
    from ddp_edf.training.checkpoint import write_checkpoint
    graph = Graph([Relu(Parameter("w", np.full(size, value)))])
    path = Path(out) / "checkpoints" / f"step-{step:08d}.npz"
    write_checkpoint(path, graph, None, {"step": step, "seed": 1, "world_size": 1, "skipped_steps": 0, "run": {}})
    return path


needs_root_for_tmpfs = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")


@contextlib.contextmanager
def small_disk(folder, size: str):
    """``folder`` made a tmpfs of ``size`` (e.g. "64k") while inside: a disk that fills up for real."""
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)
