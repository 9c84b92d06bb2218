"""The Python API: a user's own EDF graph (with an op of their own) and NumPy arrays, trained by the
same Trainer as the command line, in one process and under mpiexec; resume and preemption from Python."""

import ast
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ddp_edf import (SGD, Adam, Affine, CompNode, ErrorRate, Input, Parameter, Preempted, Relu, Schedule,
                     SoftmaxCrossEntropy, Trainer, TrainingError)
from ddp_edf.data import ArraySplit
from ddp_edf.parallel.comm import SerialComm
from ddp_edf.training.checkpoint import CheckpointError
from ddp_edf.training.run_folder import RunFolderError

ROOT = Path(__file__).resolve().parents[1]
MPIEXEC = Path(sys.executable).parent / "mpiexec"


def readme_example() -> str:
    """The complete example script of the README (the python block that starts with its docstring)."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    scripts = [b for b in blocks if b.startswith('"""Your own EDF model')]
    assert len(scripts) == 1, "README.md should hold exactly one example script"
    return scripts[0]


def run_script(path, out, ranks):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "PMIX_", "MPI_LOCAL"))}
    command = [sys.executable, str(path), str(out)]
    if ranks > 1:
        command = [str(MPIEXEC), "-n", str(ranks), *command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=path.parent, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    with np.load(out / "model.npz", allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}, result.stdout


@pytest.mark.slow
@pytest.mark.skipif(not MPIEXEC.exists(), reason="mpiexec is not in this venv: pip install mpich")
def test_readme_example_gives_the_same_model_on_1_2_and_3_ranks(tmp_path):
    script = tmp_path / "mine.py"
    script.write_text(readme_example())
    models = {w: run_script(script, tmp_path / f"w{w}", w) for w in (1, 2, 3)}
    one, stdout = models[1]
    test = ast.literal_eval(stdout.strip().splitlines()[-1])   # the script prints the test figures on rank 0
    assert test["examples"] == 1000 and test["error"] < 0.1, test   # it learned (4 classes: chance is 0.75)
    for w in (2, 3):
        for name, value in models[w][0].items():
            difference = np.linalg.norm(value - one[name]) / np.linalg.norm(one[name])
            assert difference <= 1e-5, f"W = {w}: {name} differs from one process by {difference:.1e}"
    assert "resumed from" not in stdout
    _, again = run_script(script, tmp_path / "w1", 1)   # rerun: resumes the finished run, trains no more
    assert "resumed from" in again and "at step 400" in again


def toy_problem(seed=0, n=240):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 6)).astype(np.float32)
    Y = (X[:, 0] - X[:, 1] > 0).astype(np.int64)
    return X, Y


def toy_trainer(out=None, optimizer=None, train=None, **options):
    rng = np.random.default_rng(3)
    x, y = Input("x"), Input("y")
    W0, b0 = Parameter("fc0.W", rng.normal(0, 0.5, (6, 8))), Parameter("fc0.b", np.zeros(8))
    W1, b1 = Parameter("fc1.W", rng.normal(0, 0.5, (8, 2))), Parameter("fc1.b", np.zeros(2))
    scores = Affine(Relu(Affine(x, W0, b0)), W1, b1)
    X, Y = toy_problem()
    return Trainer(SoftmaxCrossEntropy(scores, y), (x, y), train if train is not None else (X[:200], Y[:200]),
                   errors=ErrorRate(scores, y), test=(X[200:], Y[200:]), optimizer=optimizer or Adam(lr=0.01),
                   global_batch=32, seed=4, out=out, comm=SerialComm(), echo=False, **options)


def test_arrays_train_and_the_step_matches_plain_numpy():
    """One step of the Trainer on arrays = the gradient of the batch mean, written out in float64."""
    trainer = toy_trainer(optimizer=SGD(lr=0.5))
    X, Y = toy_problem()
    before = {p.name: p.value.astype(np.float64) for p in trainer.graph.parameters}
    batch = np.array([5, 17, 3, 150, 42])
    assert trainer.train_step(batch)
    x, y = X[batch].astype(np.float64), Y[batch]
    pre = x @ before["fc0.W"] + before["fc0.b"]
    s = np.maximum(pre, 0) @ before["fc1.W"] + before["fc1.b"]
    q = np.exp(s - s.max(1, keepdims=True))
    q /= q.sum(1, keepdims=True)
    ds = (q - np.eye(2)[y]) / len(batch)
    dh = ds @ before["fc1.W"].T * (pre > 0)
    expected = {"fc0.W": x.T @ dh, "fc0.b": dh.sum(0), "fc1.W": np.maximum(pre, 0).T @ ds, "fc1.b": ds.sum(0)}
    for p in trainer.graph.parameters:
        np.testing.assert_allclose(p.value, before[p.name] - 0.5 * expected[p.name], rtol=1e-5, atol=1e-6)
    result = toy_trainer().fit(epochs=30)
    assert result["test"]["error"] < 0.1 and result["step"] == 30 * 7


def test_resume_from_python_continues_bit_for_bit(tmp_path):
    whole = toy_trainer(checkpoint_every=5)
    whole.fit(epochs=4)
    first = toy_trainer(out=str(tmp_path / "run"), checkpoint_every=5)
    first.fit(epochs=4, max_steps=12)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())[-1] == "step-00000012.npz"
    resumed = toy_trainer(out=str(tmp_path / "run"), checkpoint_every=5)
    resumed.fit(epochs=4, resume="auto")
    assert resumed.step == whole.step == 28
    np.testing.assert_array_equal(resumed.graph.params, whole.graph.params)
    with np.load(tmp_path / "run" / "model.npz") as model:
        np.testing.assert_array_equal(model["fc1.W"], whole.graph.parameter("fc1.W").value)


class SignalAt(ArraySplit):
    """Training data that sends this process SIGTERM while the given batch is loaded (a preemption)."""

    def __init__(self, at, *arrays):
        super().__init__(*arrays)
        self.at, self.calls = at, 0

    def batch(self, index):
        self.calls += 1
        if self.calls == self.at:
            os.kill(os.getpid(), signal.SIGTERM)
        return super().batch(index)


def test_sigterm_finishes_the_step_checkpoints_and_exits_75(tmp_path):
    X, Y = toy_problem()
    out = tmp_path / "run"
    previous = signal.getsignal(signal.SIGTERM)
    trainer = toy_trainer(out=str(out), train=SignalAt(6, X[:200], Y[:200]))
    with pytest.raises(Preempted) as stopped:
        trainer.fit(epochs=4)
    assert stopped.value.code == 75 and isinstance(stopped.value, SystemExit)
    assert trainer.step == 6 and (out / "checkpoints" / "step-00000006.npz").exists()
    assert signal.getsignal(signal.SIGTERM) is previous          # the handler is only installed during fit
    resumed = toy_trainer(out=str(out))
    resumed.fit(epochs=4, resume="auto")
    whole = toy_trainer()
    whole.fit(epochs=4)
    np.testing.assert_array_equal(resumed.graph.params, whole.graph.params)


def test_bad_input_is_named():
    X, Y = toy_problem()
    with pytest.raises(ValueError, match="train has 1 arrays for 2 inputs"):
        toy_trainer(train=(X,))
    with pytest.raises(ValueError, match=r"one row per example, got lengths \[200, 199\]"):
        toy_trainer(train=(X[:200], Y[:199]))
    with pytest.raises(ValueError, match="global_batch = 0 must be an integer >= 1"):
        Trainer(None, (), (X, Y), optimizer=SGD(), global_batch=0)


def test_an_out_folder_holding_a_run_is_refused_and_checkpoints_of_another_model_too(tmp_path):
    toy_trainer(out=str(tmp_path / "run")).fit(epochs=1)
    with pytest.raises(RunFolderError, match="already holds a run"):
        toy_trainer(out=str(tmp_path / "run")).fit(epochs=1)
    with pytest.raises(CheckpointError, match="optimizer = 'Adam', this run has 'SGD'"):
        toy_trainer(out=str(tmp_path / "run"), optimizer=SGD(lr=0.1)).fit(epochs=2, resume="auto")


def test_bad_options_and_outputs_are_named():
    X, Y = toy_problem()
    with pytest.raises(ValueError, match="option eval_batch = 0 must be an integer >= 1"):
        toy_trainer(eval_batch=0)
    with pytest.raises(ValueError, match="option global_batch = 32.0 must be an integer"):
        Trainer(None, (), (X, Y), optimizer=SGD(), global_batch=32.0)
    with pytest.raises(ValueError, match="option timeout_s = -1"):
        toy_trainer(timeout_s=-1)
    with pytest.raises(ValueError, match="option epochs = 0"):
        toy_trainer().fit(epochs=0)
    x, y, w = Input("x"), Input("y"), Parameter("w", np.ones((6, 2)))
    scores = Affine(x, w, Parameter("b", np.zeros(2)))
    with pytest.raises(ValueError, match="an Input that is not in inputs="):
        Trainer(SoftmaxCrossEntropy(scores, y), (x,), (X,), optimizer=SGD(), global_batch=8, comm="serial")
    mean_loss = Mean(SoftmaxCrossEntropy(scores, y))     # a batch mean where the per-example loss belongs
    trainer = Trainer(mean_loss, (x, y), (X, Y), optimizer=SGD(), global_batch=8, comm="serial", echo=False)
    with pytest.raises(ValueError, match=r"one value per example, shape \(8,\); got \(1,\)"):
        trainer.fit(epochs=1)


class Mean(CompNode):
    """ell = the mean over b of its input, shape (1,): a batch loss where a per-example loss belongs."""

    def __init__(self, u):
        super().__init__(u)
        self.u = u

    def forward(self):
        self.value = self.u.value.mean(keepdims=True)

    def backward(self):
        self.u.addgrad(np.full_like(self.u.value, self.grad[0] / len(self.u.value)))


def test_train_step_counts_and_the_schedule_can_span_several_fits():
    """A hand-written loop of train_step moves the schedule on; fit(2) then fit(4) with the horizon
    fixed equals fit(4); the lr recorded with a step is the one that step used."""
    def trainer(**options):
        return toy_trainer(optimizer=SGD(lr=0.2), schedule=Schedule("cosine", warmup_steps=3, total_steps=28), **options)
    manual = trainer()
    for t in range(5):
        assert manual.learning_rate() == Schedule("cosine", warmup_steps=3, total_steps=28)(t, 0.2)
        manual.train_step(np.arange(t * 32, (t + 1) * 32) % 200)
    assert manual.step == 5
    whole, parts = trainer(), trainer()
    whole.fit(epochs=4)
    parts.fit(epochs=2)
    parts.fit(epochs=4)
    np.testing.assert_array_equal(parts.graph.params, whole.graph.params)


def test_sigterm_without_an_output_folder_says_nothing_was_saved(capsys):
    X, Y = toy_problem()
    trainer = toy_trainer(train=SignalAt(3, X[:200], Y[:200]))
    trainer.echo = True
    with pytest.raises(Preempted):
        trainer.fit(epochs=2)
    assert "no output folder: nothing saved" in capsys.readouterr().out


class NaNAt(ArraySplit):
    """Training data whose given batches (by call count) hold a NaN: a bad record in the data."""

    def __init__(self, bad, *arrays):
        super().__init__(*arrays)
        self.bad, self.calls = bad, 0

    def batch(self, index):
        self.calls += 1
        x, y = super().batch(index)
        return (np.full_like(x, np.nan), y) if self.calls in self.bad else (x, y)


def test_skip_leaves_the_parameters_of_a_bad_batch_alone_and_stops_when_it_is_most():
    X, Y = toy_problem()
    once = toy_trainer(train=NaNAt({5}, X[:200], Y[:200]), nonfinite="skip")
    whole = toy_trainer(train=NaNAt({5}, X[:200], Y[:200]), nonfinite="skip")
    before = once.graph.params.copy()
    result = once.fit(epochs=4)
    assert once.skipped_steps == 1 and result["step"] == 28 and np.all(np.isfinite(once.graph.params))
    assert not np.array_equal(before, once.graph.params)
    whole.train.bad = set(range(1, 29))                   # every batch bad: the run fails, naming the count
    with pytest.raises(TrainingError, match="10 of 10 steps had a non-finite loss"):
        whole.fit(epochs=4)


def test_the_skip_count_goes_on_across_a_resume(tmp_path):
    """A run that skipped most steps cannot hide it by resuming: the count of skipped steps is checkpointed."""
    X, Y = toy_problem()
    first = toy_trainer(out=str(tmp_path / "run"), train=NaNAt(set(range(2, 100)), X[:200], Y[:200]),
                        nonfinite="skip", max_skipped=0.9, checkpoint_every=5)
    first.fit(epochs=4, max_steps=5)
    assert first.skipped_steps == 4
    again = toy_trainer(out=str(tmp_path / "run"), train=NaNAt(set(), X[:200], Y[:200]), nonfinite="skip",
                        max_skipped=0.3)                  # the data is fine now: 4 of 10 skipped is still too many
    with pytest.raises(TrainingError, match="4 of 10 steps had a non-finite loss"):
        again.fit(epochs=4, max_steps=10, resume="auto")
