"""W ranks train exactly like one process: same config and seed -> the same parameters and figures.

The global batch (25) is not divisible by W = 2, 3 or 4, and the short last batch (10) is kept.
"""

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from ddp_edf.config import load_config
from ddp_edf.parallel.comm import MPIComm, SerialComm
from ddp_edf.train import build_trainer
from ddp_edf.training.run_folder import latest_checkpoint
from idx_files import write_dataset
from test_comm import agree


@pytest.fixture
def shared_dir():
    comm = MPIComm()
    folder = comm.broadcast_obj(tempfile.mkdtemp(prefix="ddp_edf_eq_") if comm.is_root else None)
    if comm.is_root:
        write_dataset(Path(folder) / "d", n_train=460, n_test=70, rows=8, cols=8, seed=5)
    comm.barrier()
    yield Path(folder)
    comm.barrier()
    if comm.is_root:
        shutil.rmtree(folder, ignore_errors=True)


def config_for(folder, *extra):
    return load_config(None, [f"data.dataset=idx:{folder / 'd'}", "data.dev_size=50", "model.hidden=[16]",
                              "optim.lr=0.05", "optim.momentum=0.9", "train.global_batch=25",
                              "train.epochs=12", "train.seed=9", "log.every=1000", *extra])


def train(config, comm, out=None, resume=None):
    trainer = build_trainer(config, comm, out=out)
    trainer.fit(config.train.epochs, config.train.max_steps, resume=resume)
    return trainer


def relative_difference(a, b):
    return float(np.linalg.norm(a.astype(np.float64) - b) / np.linalg.norm(b.astype(np.float64)))


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("extra", [(), ("train.micro_batches=3", "optim.name=adam", "optim.lr=0.003"),
                                   ("train.global_batch=2", "train.max_steps=40", "optim.lr=0.02"),
                                   ("model.kind=cnn", "model.channels=[4,6]", "model.dropout=0.25", "train.epochs=6",
                                    "optim.clip_norm=0.5", "train.micro_batches=2"),
                                   ("model.kind=vit", "model.patch=4", "model.dim=8", "model.heads=2",
                                    "model.dropout=0.1", "train.epochs=6", "optim.name=adam", "optim.lr=0.003",
                                    "optim.clip_norm=1.0")])
def test_w_ranks_equal_one_process(shared_dir, extra, monkeypatch, tmp_path):
    """Also with micro-batches and Adam, with a global batch of 2 < W (ranks with empty shards), and >= 100
    steps of a CNN (micro-batches) and of a ViT (Adam) with dropout and gradient clipping."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    comm = MPIComm()
    config = config_for(shared_dir, *extra)
    parallel = train(config, comm)
    serial = train(config_for(shared_dir, *extra), SerialComm())
    expected = min(config.train.epochs * 17, config.train.max_steps or 10 ** 9)      # 16 x 25 + 10 per epoch
    steps_ok = parallel.step == serial.step == expected
    difference = relative_difference(parallel.graph.params, serial.graph.params)
    agree(comm, steps_ok and difference <= 1e-5,
          f"step {parallel.step}, parameters differ from one process by {difference:.2e} (relative)")


@pytest.mark.mpi(min_size=2)
def test_sharded_evaluation_equals_one_process(shared_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    comm = MPIComm()
    trainer = train(config_for(shared_dir, "train.max_steps=20"), comm)
    serial = build_trainer(config_for(shared_dir), SerialComm())
    serial.graph.params[...] = trainer.graph.params
    for split in (trainer.dev, trainer.test, trainer.train):
        trainer.options.eval.batch, serial.options.eval.batch = 7, 1000
        sharded, whole = trainer.evaluate(split), serial.evaluate(split)
        # The same examples, each counted once; per-example losses agree to float32 rounding (a GEMM's
        # rounding of a row can depend on how many rows it multiplies at once).
        ok = sharded["examples"] == whole["examples"] == len(split) and \
            abs(sharded["loss"] - whole["loss"]) <= 1e-6 * abs(whole["loss"]) and \
            abs(sharded["error"] - whole["error"]) * len(split) <= 1
        agree(comm, ok, f"{split.name}: {sharded} vs {whole}")


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("extra", [("optim.momentum=0.9", "optim.weight_decay=0.001", "optim.schedule=step",
                                    "optim.step_size=50", "dist.chunk=4"),
                                   ("optim.name=adam", "optim.lr=0.003", "optim.schedule=cosine",
                                    "optim.warmup_steps=20", "dist.chunk=3")])
def test_deterministic_mode_is_bit_for_bit_one_process(shared_dir, extra, monkeypatch, tmp_path):
    """dist.deterministic: the same parameters, optimizer state and figures, to the bit, as one process
    (a batch of 25 that W does not divide, cut in chunks of 4 or 3 (the last 1), and a short last batch of 10)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    comm = MPIComm()
    config = config_for(shared_dir, "dist.deterministic=true", "train.epochs=4", "eval.batch=7", *extra)
    parallel, serial = train(config, comm), train(config, SerialComm())
    figures = [trainer.evaluate(split) for trainer in (parallel, serial) for split in (trainer.dev, trainer.test)]
    same = np.array_equal(parallel.graph.params, serial.graph.params) and all(
        np.array_equal(parallel.optimizer.state[k], serial.optimizer.state[k]) for k in serial.optimizer.state_names)
    agree(comm, same and parallel.step == serial.step == 4 * 17 and figures[:2] == figures[2:],
          f"parameters and state equal {same}; steps {parallel.step}, {serial.step}; figures {figures}")


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("optim", [("optim.momentum=0.9",), ("optim.name=adam", "optim.lr=0.003")])
def test_resume_at_the_same_world_size_is_bit_for_bit(shared_dir, optim, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    comm = MPIComm()
    out = Path(comm.broadcast_obj(str(shared_dir / f"resume-{optim[0]}") if comm.is_root else None))
    extra = (*optim, "train.epochs=3")
    whole = train(config_for(shared_dir, *extra), comm)
    train(config_for(shared_dir, *extra, "train.max_steps=23"), comm, out=out)
    resumed = train(config_for(shared_dir, *extra), comm, out=out, resume="auto")
    same = np.array_equal(resumed.graph.params, whole.graph.params)
    state_same = all(np.array_equal(resumed.optimizer.state[k], whole.optimizer.state[k])
                     for k in whole.optimizer.state_names)
    newest = latest_checkpoint(out)["meta"]["step"] if comm.is_root else 51
    agree(comm, resumed.step == whole.step == newest == 51 and same and state_same,
          f"step {resumed.step}, newest checkpoint {newest}, parameters equal {same}, optimizer state equal {state_same}")
