"""dist.deterministic end to end: the same bytes on 1, 2, 3, 4, 5 and 8 ranks (8 share 2 cores), and
across a preemption resumed on another number of ranks.

These tests start mpiexec themselves, each under a deadline.
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from idx_files import write_dataset
from test_mpi_jobs import FASHION, MPIEXEC, ROOT, clean_env

WORLD_SIZES = (1, 2, 3, 4, 5, 8)


def train(ranks, out, *arguments, timeout=300, env=None):
    command = [sys.executable, "-m", "ddp_edf.train", "--out", str(out), "--set", "dist.deterministic=true", *arguments]
    if ranks > 1:
        command = [MPIEXEC, "-n", str(ranks), *command]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env={**clean_env(), **(env or {})},
                            timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def figures(out):
    """Every reported figure (train, dev, test), without the timings."""
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("elapsed_s", "samples_per_s")} for r in records]


def checkpoint_arrays(out):
    """Each checkpoint's arrays, and its metadata without the world size (which it records)."""
    found = {}
    for path in sorted((out / "checkpoints").glob("step-*.npz")):
        with np.load(path) as archive:
            arrays = {k: archive[k].tobytes() for k in archive.files if k != "meta"}
            meta = json.loads(archive["meta"].tobytes())
        found[path.name] = (arrays, {k: v for k, v in meta.items() if k != "world_size"})
    return found


def assert_identical_runs(outs):
    first = outs[0]
    for out in outs[1:]:
        assert digest(out / "model.npz") == digest(first / "model.npz"), out.name
        assert checkpoint_arrays(out) == checkpoint_arrays(first), out.name
        assert figures(out) == figures(first), out.name


@pytest.mark.slow
@pytest.mark.skipif(not FASHION.is_dir() and not os.environ.get("CI"), reason="dataset-fashion-mnist not installed")
def test_the_default_mlp_on_fashion_mnist_is_the_same_bytes_on_any_number_of_ranks(tmp_path):
    """5,100 training images in batches of 250 (chunks of 32, the last 26): 20 full batches and a short
    one of 100 per epoch; 200 steps of momentum SGD with a cosine schedule, dev figures every 50 steps."""
    outs = [tmp_path / f"w{w}" for w in WORLD_SIZES]
    for w, out in zip(WORLD_SIZES, outs):
        train(w, out, "--config", "configs/fashion_mlp.toml", "--set", "data.train_limit=5100",
              "--set", "train.global_batch=250", "--set", "train.max_steps=200", "--set", "eval.every=50",
              "--set", "checkpoint.every_steps=100", "--set", "log.every=25")
    assert_identical_runs(outs)


def small_run(isolated_data):
    write_dataset(isolated_data / "d", n_train=450, n_test=70, seed=2)
    return ["--set", f"data.dataset=idx:{isolated_data / 'd'}", "--set", "data.dev_size=50", "--set",
            "model.hidden=[16]", "--set", "train.global_batch=24", "--set", "dist.chunk=5", "--set", "train.seed=1",
            "--set", "optim.name=adam", "--set", "optim.lr=0.003", "--set", "optim.schedule=cosine",
            "--set", "optim.warmup_steps=30", "--set", "optim.weight_decay=0.0001", "--set", "log.every=10"]


# MPICH's Allreduce by another algorithm, without its shared-memory collectives
OTHER_REDUCTION = {"MPIR_CVAR_DEVICE_COLLECTIVES": "none", "MPIR_CVAR_ALLREDUCE_INTRA_ALGORITHM": "ring"}


def test_adam_cosine_and_warmup_are_the_same_bytes_on_any_number_of_ranks(isolated_data, tmp_path):
    """400 examples in batches of 24 (chunks of 5, the last 4) and a short last batch of 16; also with
    another reduction algorithm."""
    runs = [(w, tmp_path / f"w{w}", None) for w in WORLD_SIZES] + [(3, tmp_path / "ring", OTHER_REDUCTION)]
    for w, out, env in runs:
        train(w, out, *small_run(isolated_data), "--set", "train.epochs=4",
              "--set", "checkpoint.every_steps=17", "--set", "eval.every=20", env=env)
    assert_identical_runs([out for _, out, _ in runs])


@pytest.mark.parametrize("first,then", [(4, 3), (2, 5)])
def test_a_run_preempted_and_resumed_on_other_ranks_ends_as_one_uninterrupted_process(
        isolated_data, tmp_path, first, then):
    arguments = [*small_run(isolated_data), "--set", "train.epochs=60"]   # 1,020 steps
    train(1, tmp_path / "whole", *arguments)
    out = tmp_path / "preempted"
    process = subprocess.Popen([MPIEXEC, "-n", str(first), sys.executable, "-m", "ddp_edf.train", "--out", str(out),
                                "--set", "dist.deterministic=true", *arguments], cwd=ROOT, env=clean_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    metrics = out / "metrics.jsonl"
    while not (metrics.exists() and metrics.stat().st_size) and time.monotonic() < deadline:
        time.sleep(0.1)    # the first record comes after the signal handlers are in place
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 75, output[-3000:]
    step = json.loads((sorted((out / "checkpoints").glob("step-*.npz"))[-1]).stem.split("-")[1].lstrip("0") or "0")
    assert 0 < step < 1020
    train(then, out, *arguments, "--resume", "auto")
    assert digest(out / "model.npz") == digest(tmp_path / "whole" / "model.npz")
    assert figures(out) == figures(tmp_path / "whole")      # every record once, the same bytes


@pytest.mark.parametrize("model", [
    ("model.kind=cnn", "model.channels=[4]", "model.dropout=0.3", "optim.clip_norm=0.5"),
    ("model.kind=vit", "model.patch=4", "model.dim=8", "model.heads=2", "model.depth=1", "model.dropout=0.2"),
])
def test_image_models_with_dropout_are_the_same_bytes_on_any_ranks_and_resumed_on_another(isolated_data, tmp_path,
                                                                                          model):
    """8x8 images kept 2-D, dropout masks from (seed, step, example): W = 1, 2, 3 give the same bytes, and
    a run stopped at step 20 on 2 ranks and resumed on 3 ends as the uninterrupted one."""
    arguments = [*small_run(isolated_data), *(word for key in model for word in ("--set", key)),
                 "--set", "train.epochs=3", "--set", "checkpoint.every_steps=17"]     # 51 steps
    write_dataset(isolated_data / "d", n_train=450, n_test=70, rows=8, cols=8, seed=2)     # 8x8 images: 4 patches
    outs = [tmp_path / f"w{w}" for w in (1, 2, 3)]
    for w, out in zip((1, 2, 3), outs):
        train(w, out, *arguments)
    assert_identical_runs(outs)
    train(2, tmp_path / "resumed", *arguments, "--set", "train.max_steps=20")
    train(3, tmp_path / "resumed", *arguments, "--resume", "auto")
    assert digest(tmp_path / "resumed" / "model.npz") == digest(outs[0] / "model.npz")
