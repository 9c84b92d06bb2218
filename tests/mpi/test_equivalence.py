"""W ranks train exactly like one process: same config and seed -> the same parameters and figures.

The global batch (25) is not divisible by W = 2, 3 or 4, and the short last batch (10) is kept.
"""

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from ddp_edf.config import load_config
from ddp_edf.dist.comm import MPIComm, SerialComm
from ddp_edf.report import Reporter
from ddp_edf.trainer import Trainer, evaluate
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


def relative_difference(a, b):
    return float(np.linalg.norm(a.astype(np.float64) - b) / np.linalg.norm(b.astype(np.float64)))


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("extra", [(), ("dist.reduction=allreduce",),
                                   ("train.micro_batches=3", "optim.name=adam", "optim.lr=0.003")])
def test_w_ranks_equal_one_process(shared_dir, extra, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    comm = MPIComm()
    config = config_for(shared_dir, *extra)
    parallel = Trainer(config, comm, Reporter(tmp_path, enabled=False))
    parallel.run()
    assert parallel.step == 12 * 17   # 410 examples: 16 batches of 25 and one of 10, per epoch
    serial = Trainer(config_for(shared_dir, *extra), SerialComm(), Reporter(tmp_path, enabled=False))
    serial.run()
    difference = relative_difference(parallel.graph.params, serial.graph.params)
    agree(comm, difference <= 1e-5, f"parameters differ from one process by {difference:.2e} (relative)")


@pytest.mark.mpi(min_size=2)
def test_sharded_evaluation_equals_one_process(shared_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    comm = MPIComm()
    trainer = Trainer(config_for(shared_dir, "train.max_steps=20"), comm, Reporter(tmp_path, enabled=False))
    trainer.run()
    for split in (trainer.dataset.dev, trainer.dataset.test, trainer.dataset.train):
        sharded = evaluate(trainer.model, split, comm, trainer.loader, batch=7)
        whole = evaluate(trainer.model, split, SerialComm(), trainer.loader, batch=1000)
        ok = sharded["examples"] == whole["examples"] == len(split) and \
            abs(sharded["loss"] - whole["loss"]) <= 1e-9 * abs(whole["loss"]) and sharded["error"] == whole["error"]
        agree(comm, ok, f"{split.name}: {sharded} vs {whole}")


def optimizer_arrays(trainer):
    state = trainer.optimizer_state()   # collective: assembles the parts of every rank
    return {name: state[name] for name in trainer.optimizer.state_names}


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("optim", [("optim.momentum=0.9",), ("optim.name=adam", "optim.lr=0.003")])
def test_shared_memory_update_equals_allreduce(shared_dir, optim, monkeypatch, tmp_path):
    """Sharded update (one parameter copy per host, each rank updates its part) == every rank updating all."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    comm = MPIComm()
    runs = {}
    for reduction in ("shared", "allreduce"):
        trainer = Trainer(config_for(shared_dir, "train.max_steps=60", f"dist.reduction={reduction}", *optim), comm,
                          Reporter(tmp_path, enabled=False))
        trainer.run()
        runs[reduction] = (trainer.reducer.kind, trainer.graph.params.copy(), optimizer_arrays(trainer))
        trainer.reducer.close()
    (kind_s, params_s, state_s), (kind_a, params_a, state_a) = runs["shared"], runs["allreduce"]
    difference = relative_difference(params_s, params_a.astype(np.float64))
    state_difference = max(relative_difference(state_s[k], state_a[k].astype(np.float64)) for k in state_a)
    agree(comm, kind_s == "shared" and kind_a == "allreduce" and difference <= 1e-5 and state_difference <= 1e-5,
          f"{kind_s}/{kind_a}: parameters differ by {difference:.2e}, optimizer state by {state_difference:.2e}")


@pytest.mark.mpi(min_size=2)
def test_resume_with_shared_memory_is_bit_for_bit(shared_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    comm = MPIComm()
    out = Path(comm.broadcast_obj(str(shared_dir / "resume") if comm.is_root else None))
    extra = ("optim.name=adam", "optim.lr=0.003", "train.epochs=3")
    whole = Trainer(config_for(shared_dir, *extra), comm, Reporter(tmp_path, enabled=False))
    whole.run()
    first = Trainer(config_for(shared_dir, *extra, "train.max_steps=23"), comm, Reporter(tmp_path, enabled=False))
    first.out_dir = out
    first.run()
    from ddp_edf.checkpoint import latest_checkpoint
    resumed = Trainer(config_for(shared_dir, *extra), comm, Reporter(tmp_path, enabled=False))
    resumed.out_dir = out
    resumed.resume_from(latest_checkpoint(out) if comm.is_root else None)
    resumed.run()
    same = np.array_equal(resumed.graph.params, whole.graph.params)
    state_same = all(np.array_equal(a, b) for a, b in zip(optimizer_arrays(resumed).values(),
                                                         optimizer_arrays(whole).values()))
    agree(comm, resumed.step == whole.step == 51 and same and state_same and resumed.reducer.kind == "shared",
          f"step {resumed.step}, parameters equal {same}, optimizer state equal {state_same}")


@pytest.mark.mpi(min_size=3)
def test_ranks_with_empty_shards_still_agree(shared_dir, monkeypatch, tmp_path):
    """Global batch 2 < W: some ranks hold no example in a step but still join the one reduction."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    comm = MPIComm()
    extra = ("train.global_batch=2", "train.max_steps=40", "optim.lr=0.02")
    parallel = Trainer(config_for(shared_dir, *extra), comm, Reporter(tmp_path, enabled=False))
    parallel.run()
    serial = Trainer(config_for(shared_dir, *extra), SerialComm(), Reporter(tmp_path, enabled=False))
    serial.run()
    difference = relative_difference(parallel.graph.params, serial.graph.params)
    agree(comm, parallel.reducer.kind == "shared" and difference <= 1e-5,
          f"{parallel.reducer.kind}: parameters differ from one process by {difference:.2e}")


class ScriptedVotes:
    """Stands in for rank 0's RingTuner: pauses and resumes the ring at random steps (seeded), so
    every transition (rotate -> in place -> rotate, also around skipped steps) is exercised."""

    def __init__(self):
        self.votes = np.random.default_rng(3).random(10_000) < 0.5
        self.steps = 0

    def observe(self, step_seconds):
        self.steps += 1
        return bool(self.votes[self.steps])


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("extra", [("optim.momentum=0.9",), ("optim.name=adam", "optim.lr=0.003"),
                                   ("optim.lr=1e30", "dist.nonfinite=skip")])
def test_buffer_ring_changes_no_number(shared_dir, extra, monkeypatch, tmp_path):
    """The ring of shared buffers (dist.ring_mb) against the in-place update: the same bits after the
    ring has wrapped round twice, also when steps are skipped (the next copy must carry Phi over),
    and when rank 0 pauses and resumes the ring at random steps (every rank must follow its vote)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    comm = MPIComm()
    runs = {}
    for variant, ring in (("in place", ("dist.ring_mb=0",)),
                          ("ring", ("dist.ring_mb=1", "dist.ring_autotune=false")),
                          ("ring, paused at random", ("dist.ring_mb=1",))):
        trainer = Trainer(config_for(shared_dir, "train.max_steps=150", "dist.reduction=shared", *ring, *extra),
                          comm, Reporter(tmp_path, enabled=False))
        if variant == "ring, paused at random" and comm.is_root:
            trainer.ring_tuner = ScriptedVotes()
        rotations = []
        step = trainer.train_step
        def counted_step(*args):
            turn = trainer.reducer.turn
            finite = step(*args)
            rotations.append(trainer.reducer.turn != turn)
            return finite
        trainer.train_step = counted_step
        with np.errstate(over="ignore", invalid="ignore"):   # lr = 1e30 overflows on purpose
            trainer.run()
        turns = comm.allgather_obj(trainer.reducer.turn)
        runs[variant] = (trainer.reducer.depth, trainer.graph.params.copy(), optimizer_arrays(trainer),
                         trainer.skipped_steps, sum(rotations), len(set(turns)) == 1)
        trainer.reducer.close()
    depth_0, params_0, state_0, skipped_0, _, _ = runs["in place"]
    failures = [] if depth_0 == 1 else [f"in place has depth {depth_0}"]
    for variant in ("ring", "ring, paused at random"):
        depth, params, state, skipped, rotated, turns_agree = runs[variant]
        same = np.array_equal(params_0, params, equal_nan=True) and all(
            np.array_equal(state_0[k], state[k], equal_nan=True) for k in state_0)
        skips_ok = skipped_0 == skipped and (skipped > 0) == ("dist.nonfinite=skip" in extra)
        expected_rotations = (150 if variant == "ring" else 50, 150 if variant == "ring" else 100)
        if not (1 < depth < 75 and same and skips_ok and turns_agree
                and expected_rotations[0] <= rotated <= expected_rotations[1]):
            failures.append(f"{variant}: depth {depth}, same bits {same}, skipped {skipped}/{skipped_0}, "
                            f"rotated in {rotated} of 150 steps, ranks on the same turn {turns_agree}")
    agree(comm, not failures, "; ".join(failures))
