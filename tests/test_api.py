"""The Python API: the README's two scripts (the Trainer on a user's own graph; a user's own loop around
DataParallel) on 1, 2 and 3 ranks; the step against plain NumPy; resume, preemption and bad input from Python."""

import ast
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ddp_edf import (SGD, Adam, Affine, Allreduce, CheckpointOptions, CompNode, DataParallel, DistOptions, ErrorRate,
                     EvalOptions, Input, LogOptions, Options, Parameter, Preempted, Relu, Schedule, SoftmaxCrossEntropy,
                     Tanh, Trainer, TrainingError, TrainOptions)
from ddp_edf.data import ArraySplit
from ddp_edf.errors import OptionError
from ddp_edf.parallel.comm import SerialComm
from ddp_edf.training.checkpoint import read_checkpoint
from ddp_edf.training.errors import CheckpointError, RunFolderError

ROOT = Path(__file__).resolve().parents[1]
MPIEXEC = Path(sys.executable).parent / "mpiexec"
needs_mpiexec = pytest.mark.skipif(not MPIEXEC.exists(), reason="mpiexec is not in this venv: pip install mpich")


def readme_script(first_line: str) -> str:
    """The README's python block that starts with the docstring ``first_line``."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    scripts = [b for b in blocks if b.startswith(f'"""{first_line}')]
    assert len(scripts) == 1, f"README.md should hold exactly one script starting {first_line!r}"
    return scripts[0]


def run_script(path, ranks, *arguments):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "PMIX_", "MPI_LOCAL"))}
    command = [sys.executable, str(path), *map(str, arguments)]
    if ranks > 1:
        command = [str(MPIEXEC), "-n", str(ranks), *command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=path.parent, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def relative_difference(a, b):
    return float(np.linalg.norm(a.astype(np.float64) - b) / np.linalg.norm(b.astype(np.float64)))


@pytest.mark.slow
@needs_mpiexec
def test_the_trainer_script_gives_the_same_model_on_1_2_and_3_ranks(tmp_path):
    script = tmp_path / "mine.py"
    script.write_text(readme_script("Your own EDF model"))
    stdout = {w: run_script(script, w, tmp_path / f"w{w}") for w in (1, 2, 3)}
    test = ast.literal_eval(stdout[1].strip().splitlines()[-1])   # the script prints the test figures on rank 0
    assert test["examples"] == 1000 and test["error"] < 0.1, test   # it learned (4 classes: chance is 0.75)
    models = {w: np.load(tmp_path / f"w{w}" / "model.npz") for w in (1, 2, 3)}
    for w in (2, 3):
        for name in models[1].files:
            assert relative_difference(models[w][name], models[1][name]) <= 1e-5, (w, name)
    files = sorted(p.name for p in (tmp_path / "w1").rglob("*"))
    again = run_script(script, 1, tmp_path / "w1")                 # rerun: the run is finished, nothing is written
    assert "already finished at step 400, nothing to do" in again and "Traceback" not in again
    assert sorted(p.name for p in (tmp_path / "w1").rglob("*")) == files


@pytest.mark.slow
@needs_mpiexec
def test_the_own_loop_script_matches_one_process_and_is_bitwise_with_the_exact_reducer(tmp_path):
    script = tmp_path / "loop.py"
    script.write_text(readme_script("Your own training loop"))
    runs = {(w, exact): tmp_path / f"w{w}{'-exact' * exact}.npz" for w in (1, 2, 3) for exact in (False, True)}
    printed = {key: run_script(script, key[0], out, *(["--exact"] if key[1] else [])) for key, out in runs.items()}
    params = {key: read_checkpoint(out)["params"] for key, out in runs.items()}
    assert "epoch 4: last batch loss" in printed[1, False] and printed[2, False].count("epoch 4") == 1   # rank 0 prints
    dev_error = float(printed[1, False].split("dev error ")[-1])
    assert dev_error < 0.15, printed[1, False]                      # it learned (4 classes: chance is 0.75)
    for w in (2, 3):
        assert relative_difference(params[w, False], params[1, False]) <= 1e-5
        assert np.array_equal(params[w, True], params[1, True]) and printed[w, True] == printed[1, True]
    assert read_checkpoint(runs[1, False])["meta"]["epochs"] == 5 and "velocity" in read_checkpoint(runs[1, False])["optim"]


@pytest.mark.slow
@needs_mpiexec
def test_the_cnn_script_with_dropout_matches_one_process_and_is_bitwise_in_the_exact_mode(tmp_path):
    script = tmp_path / "cnn.py"
    script.write_text(readme_script("A CNN from the ops"))
    runs = {(w, exact): tmp_path / f"w{w}{'-exact' * exact}" for w in (1, 2, 3) for exact in (False, True)}
    printed = {key: run_script(script, key[0], out, *(["--exact"] if key[1] else [])) for key, out in runs.items()}
    test = ast.literal_eval(printed[1, False].strip().splitlines()[-1])
    assert test["examples"] == 300 and test["error"] < 0.05, test      # it learned the digits
    models = {key: np.load(out / "model.npz") for key, out in runs.items()}
    for w in (2, 3):
        for name in models[1, False].files:
            assert relative_difference(models[w, False][name], models[1, False][name]) <= 1e-5, (w, name)
            assert np.array_equal(models[w, True][name], models[1, True][name]), (w, name)
        assert printed[w, True].splitlines()[-1] == printed[1, True].splitlines()[-1]


def toy_problem(seed=0, n=240):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 6)).astype(np.float32)
    Y = (X[:, 0] - X[:, 1] > 0).astype(np.int64)
    return X, Y


def toy_graph(activation=Relu):
    rng = np.random.default_rng(3)
    x, y = Input("x"), Input("y")
    W0, b0 = Parameter("fc0.W", rng.normal(0, 0.5, (6, 8))), Parameter("fc0.b", np.zeros(8))
    W1, b1 = Parameter("fc1.W", rng.normal(0, 0.5, (8, 2))), Parameter("fc1.b", np.zeros(2))
    scores = Affine(activation(Affine(x, W0, b0)), W1, b1)
    return x, y, SoftmaxCrossEntropy(scores, y), ErrorRate(scores, y)


def toy_trainer(out=None, optimizer=None, train=None, activation=Relu, schedule=Schedule(), **sections):
    """The toy graph's Trainer: batches of 32, seed 4, quiet; ``sections``: {"checkpoint": {"every_steps": 5}, ...}."""
    x, y, loss, errors = toy_graph(activation)
    X, Y = toy_problem()
    kinds = {"eval": EvalOptions, "dist": DistOptions, "checkpoint": CheckpointOptions}
    options = Options(train=TrainOptions(**{"global_batch": 32, "seed": 4, "epochs": 4, **sections.pop("train", {})}),
                      log=LogOptions(**{"echo": False, **sections.pop("log", {})}),
                      **{name: kinds[name](**values) for name, values in sections.items()})
    return Trainer(loss, (x, y), train if train is not None else (X[:200], Y[:200]), errors=errors,
                   test=(X[200:], Y[200:]), optimizer=optimizer or Adam(lr=0.01), schedule=schedule, out=out,
                   comm=SerialComm(), options=options)


def test_one_step_is_the_gradient_of_the_batch_mean_written_in_numpy():
    x, y, loss, errors = toy_graph()
    dp = DataParallel(loss, (x, y), Allreduce(SerialComm(), micro_batches=2), errors=errors)
    X, Y = toy_problem()
    before = {p.name: p.value.astype(np.float64) for p in dp.graph.parameters}
    batch = np.array([5, 17, 3, 150, 42])
    result = dp.step((X, Y), batch, SGD(lr=0.5))
    xb, yb = X[batch].astype(np.float64), Y[batch]
    pre = xb @ before["fc0.W"] + before["fc0.b"]
    s = np.maximum(pre, 0) @ before["fc1.W"] + before["fc1.b"]
    q = np.exp(s - s.max(1, keepdims=True))
    q /= q.sum(1, keepdims=True)
    ds = (q - np.eye(2)[yb]) / len(batch)
    dh = ds @ before["fc1.W"].T * (pre > 0)
    expected = {"fc0.W": xb.T @ dh, "fc0.b": dh.sum(0), "fc1.W": np.maximum(pre, 0).T @ ds, "fc1.b": ds.sum(0)}
    for p in dp.graph.parameters:
        np.testing.assert_allclose(p.value, before[p.name] - 0.5 * expected[p.name], rtol=1e-5, atol=1e-6)
    losses = -np.log(q[np.arange(5), yb])
    assert result.taken and not result.stop and result.examples == 5
    assert result.loss == pytest.approx(losses.mean(), rel=1e-6)
    assert result.error == np.mean(s.argmax(1) != yb)


def test_save_and_load_carry_the_parameters_and_the_optimizer_and_refuse_another_graph(tmp_path):
    X, Y = toy_problem()
    x, y, loss, errors = toy_graph()
    dp, adam = DataParallel(loss, (x, y), Allreduce(SerialComm())), Adam(lr=0.01)
    for batch in np.arange(96).reshape(3, 32):
        dp.step((X, Y), batch, adam)
    dp.save(tmp_path / "state.npz", adam, note="three steps")
    x2, y2, loss2, _ = toy_graph()
    other, adam2 = DataParallel(loss2, (x2, y2), Allreduce(SerialComm())), Adam(lr=0.01)
    assert other.load(tmp_path / "state.npz", adam2)["note"] == "three steps"
    np.testing.assert_array_equal(other.graph.params, dp.graph.params)
    assert adam2.steps_taken == 3 and all(np.array_equal(adam2.state[k], adam.state[k]) for k in ("m", "v"))
    a, b = dp.step((X, Y), np.arange(32, 64), adam), other.step((X, Y), np.arange(32, 64), adam2)
    assert a.loss == b.loss and np.array_equal(other.graph.params, dp.graph.params)   # the same next step
    x3, y3, tanh_loss, _ = toy_graph(Tanh)
    tanh = DataParallel(tanh_loss, (x3, y3), Allreduce(SerialComm()))
    with pytest.raises(CheckpointError, match=r"another graph: its node 4 is \['Relu', '', \[3\]\], this graph's is "
                                              r"\['Tanh', '', \[3\]\]"):
        tanh.load(tmp_path / "state.npz", Adam(lr=0.01))
    with pytest.raises(CheckpointError, match="optimizer = 'Adam' .*this run has 'SGD'"):
        other.load(tmp_path / "state.npz", SGD(lr=0.1, momentum=0.9))


def test_a_trainer_checkpoint_does_not_resume_into_another_graph_but_its_parameters_load_by_name(tmp_path):
    toy_trainer(out=str(tmp_path / "run")).fit(max_steps=5)
    with pytest.raises(CheckpointError, match="is of another graph"):
        toy_trainer(out=str(tmp_path / "run"), activation=Tanh).fit(resume="auto")
    tanh = toy_trainer(activation=Tanh)
    tanh.load_parameters(tmp_path / "run" / "model.npz")           # by name: allowed
    np.testing.assert_array_equal(tanh.graph.params, np.concatenate(
        [v.ravel() for v in np.load(tmp_path / "run" / "model.npz").values()]))


def test_resume_from_python_continues_bit_for_bit(tmp_path):
    whole = toy_trainer(checkpoint={"every_steps": 5})
    whole.fit()
    first = toy_trainer(out=str(tmp_path / "run"), checkpoint={"every_steps": 5})
    first.fit(max_steps=12)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())[-1] == "step-00000012.npz"
    resumed = toy_trainer(out=str(tmp_path / "run"), checkpoint={"every_steps": 5})
    resumed.fit(resume="auto")
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
        trainer.fit()
    assert stopped.value.code == 75 and isinstance(stopped.value, SystemExit)
    assert trainer.step == 6 and (out / "checkpoints" / "step-00000006.npz").exists()
    assert signal.getsignal(signal.SIGTERM) is previous          # the handler is only installed during fit
    resumed = toy_trainer(out=str(out))
    resumed.fit(resume="auto")
    whole = toy_trainer()
    whole.fit()
    np.testing.assert_array_equal(resumed.graph.params, whole.graph.params)


@pytest.mark.parametrize("train,expected", [
    (lambda X, Y: (X,), "train has 1 arrays for 2 inputs"),
    (lambda X, Y: (X[:200], Y[:199]), r"one row per example, got lengths \[200, 199\]"),
    (lambda X, Y: (X.astype(object), Y), "train: array 0 holds object values of shape .*expected numbers"),
    (lambda X, Y: (X, Y.astype(str)), "train: array 1 holds <U21 values"),
    (lambda X, Y: ([[1.0] * 6, [2.0] * 5], [0, 1]), "train: array 0 cannot be made an array")])
def test_bad_arrays_are_named_with_what_is_expected(train, expected):
    X, Y = toy_problem()
    with pytest.raises(ValueError, match=expected):
        toy_trainer(train=train(X, Y))


def test_lists_are_taken_as_arrays():
    X, Y = toy_problem()
    trainer = toy_trainer(train=(X[:200].tolist(), Y[:200].tolist()))
    assert trainer.fit(max_steps=3)["step"] == 3


def test_what_is_not_a_graph_node_or_an_option_is_named():
    X, Y = toy_problem()
    x, y, loss, errors = toy_graph()
    with pytest.raises(TypeError, match=r"loss must be a computed node .* not 3.0 \(float\)"):
        Trainer(3.0, (x, y), (X, Y), optimizer=SGD(), comm="serial")
    with pytest.raises(TypeError, match=r"errors must be a computed node"):
        DataParallel(loss, (x, y), Allreduce(SerialComm()), errors="error")
    with pytest.raises(ValueError, match="inputs= must list every Input node"):
        DataParallel(loss, (x,), Allreduce(SerialComm()))
    with pytest.raises(OptionError, match="TrainOptions: global_batch = 0 must be an integer >= 1"):
        TrainOptions(global_batch=0)
    with pytest.raises(OptionError, match="TrainOptions: global_batch = 32.0 must be an integer"):
        TrainOptions(global_batch=32.0)
    with pytest.raises(OptionError, match="micro_batches = 9 exceeds global_batch = 8"):
        TrainOptions(global_batch=8, micro_batches=9)
    with pytest.raises(OptionError, match="EvalOptions: batch = 0"):
        EvalOptions(batch=0)
    with pytest.raises(OptionError, match="communicator: timeout_s = -1"):
        SerialComm(timeout_s=-1)
    with pytest.raises(OptionError, match="fit: epochs = 0"):
        toy_trainer().fit(epochs=0)
    with pytest.raises(OptionError, match="Schedule: min_lr = 0.5 exceeds lr = 0.1"):
        Trainer(loss, (x, y), (X, Y), optimizer=SGD(lr=0.1), schedule=Schedule("cosine", min_lr=0.5), comm="serial")


class Mean(CompNode):
    """ell = the mean over b of its input, shape (1,): a batch loss where a per-example loss belongs."""

    def __init__(self, u):
        super().__init__(u)
        self.u = u

    def forward(self):
        self.value = self.u.value.mean(keepdims=True)

    def backward(self):
        self.u.addgrad(np.full_like(self.u.value, self.grad[0] / len(self.u.value)))


class ShortBatches(ArraySplit):
    """A user's split whose batch() drops a row: its fault, not the loss's."""

    def batch(self, index):
        return tuple(array[:-1] for array in super().batch(index))


def test_a_batch_loss_and_a_split_that_drops_rows_are_named():
    X, Y = toy_problem()
    x, y, loss, _ = toy_graph()
    dp = DataParallel(Mean(loss), (x, y), Allreduce(SerialComm()))
    with pytest.raises(ValueError, match=r"one value per example, shape \(8,\); got \(1,\)"):
        dp.step((X, Y), np.arange(8), SGD())
    x, y, loss, _ = toy_graph()
    dp = DataParallel(loss, (x, y), Allreduce(SerialComm()))
    with pytest.raises(ValueError, match=r"the train split's batch\(\) gave 7 rows for 8 examples \(array 0, for Input 'x'"):
        dp.step(ShortBatches(X, Y, name="train"), np.arange(8), SGD())


def test_the_schedule_can_span_several_fits():
    """fit(2) then fit(4) with the horizon fixed equals fit(4); the lr recorded with a step is the one it used."""
    def trainer():
        return toy_trainer(optimizer=SGD(lr=0.2), schedule=Schedule("cosine", warmup_steps=3, total_steps=28))
    whole, parts = trainer(), trainer()
    whole.fit(epochs=4)
    parts.fit(epochs=2)
    parts.fit(epochs=4)
    np.testing.assert_array_equal(parts.graph.params, whole.graph.params)
    assert whole.learning_rate(5) == Schedule("cosine", warmup_steps=3, total_steps=28)(5, 0.2)


def test_sigterm_without_an_output_folder_says_nothing_was_saved(capsys):
    X, Y = toy_problem()
    trainer = toy_trainer(train=SignalAt(3, X[:200], Y[:200]))
    trainer.options.log.echo = True
    with pytest.raises(Preempted):
        trainer.fit(epochs=2)
    assert "no output folder, nothing saved" in capsys.readouterr().out


class NaNAt(ArraySplit):
    """Training data whose given batches (by call count) hold a NaN: a bad record in the data."""

    def __init__(self, bad, *arrays):
        super().__init__(*arrays, name="train")
        self.bad, self.calls = bad, 0

    def batch(self, index):
        self.calls += 1
        x, y = super().batch(index)
        return (np.full_like(x, np.nan), y) if self.calls in self.bad else (x, y)


def test_nan_in_the_data_is_named_as_the_data_not_the_learning_rate():
    X, Y = toy_problem()
    X[57, 2] = np.nan
    order = np.random.default_rng([4, 0]).permutation(200)
    step = int(np.nonzero(order == 57)[0][0]) // 32 + 1
    with pytest.raises(TrainingError, match=f"non-finite loss at step {step} .*: the train data holds NaN or inf "
                                            f"\\(example 57, input Input 'x'"):
        toy_trainer(train=(X[:200], Y[:200])).fit()


def test_skip_leaves_the_parameters_of_a_bad_batch_alone_and_stops_when_it_is_most():
    X, Y = toy_problem()
    once = toy_trainer(train=NaNAt({5}, X[:200], Y[:200]), dist={"nonfinite": "skip"})
    whole = toy_trainer(train=NaNAt({5}, X[:200], Y[:200]), dist={"nonfinite": "skip"})
    before = once.graph.params.copy()
    result = once.fit()
    assert once.skipped_steps == 1 and result["step"] == 28 and np.all(np.isfinite(once.graph.params))
    assert not np.array_equal(before, once.graph.params)
    whole.train.bad = set(range(1, 29))                   # every batch bad: the run fails, naming the count
    with pytest.raises(TrainingError, match="10 of 10 steps had a non-finite loss"):
        whole.fit()


def test_the_skip_count_goes_on_across_a_resume(tmp_path):
    """A run that skipped most steps cannot hide it by resuming: the count of skipped steps is checkpointed."""
    X, Y = toy_problem()
    first = toy_trainer(out=str(tmp_path / "run"), train=NaNAt(set(range(2, 100)), X[:200], Y[:200]),
                        dist={"nonfinite": "skip", "max_skipped": 0.9}, checkpoint={"every_steps": 5})
    first.fit(max_steps=5)
    assert first.skipped_steps == 4
    again = toy_trainer(out=str(tmp_path / "run"), train=NaNAt(set(), X[:200], Y[:200]),
                        dist={"nonfinite": "skip", "max_skipped": 0.3})   # fine data now: 4 of 10 is still too many
    with pytest.raises(TrainingError, match="4 of 10 steps had a non-finite loss"):
        again.fit(max_steps=10, resume="auto")


def test_an_out_folder_holding_a_run_is_refused_and_checkpoints_of_another_optimizer_too(tmp_path):
    toy_trainer(out=str(tmp_path / "run")).fit(epochs=1)
    with pytest.raises(RunFolderError, match="already holds a run"):
        toy_trainer(out=str(tmp_path / "run")).fit(epochs=1)
    with pytest.raises(CheckpointError, match="optimizer = 'Adam' .*this run has 'SGD'"):
        toy_trainer(out=str(tmp_path / "run"), optimizer=SGD(lr=0.1)).fit(epochs=2, resume="auto")


def test_the_readme_quotes_the_step_as_it_is_in_the_code():
    import inspect
    import textwrap
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    quoted = [b for b in blocks if b.startswith("def step(self")]
    assert len(quoted) == 1 and quoted[0].strip() == textwrap.dedent(inspect.getsource(DataParallel.step)).strip()


def test_a_run_stopped_in_its_last_step_finishes_when_resumed(tmp_path):
    """SIGTERM during the last step: a checkpoint, not yet finished; resumed, the run writes its test figures
    and model.npz (once), and only then says it is finished."""
    X, Y = toy_problem()
    out = tmp_path / "run"
    with pytest.raises(Preempted):
        toy_trainer(out=str(out), train=SignalAt(28, X[:200], Y[:200]), log={}).fit()
    assert not (out / "model.npz").exists()
    assert toy_trainer(out=str(out)).fit(resume="auto")["step"] == 28
    tests = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"test"' in line]
    assert len(tests) == 1 and (out / "model.npz").exists()
    assert toy_trainer(out=str(out)).fit(resume="auto").get("already_finished")


def test_a_run_killed_while_it_finished_finishes_again_with_one_test_record(tmp_path):
    """Killed after its test record but before the checkpoint that marks it finished (emulated: that mark
    and model.npz undone): resumed, it sets the test record aside and finishes again."""
    out = tmp_path / "run"
    toy_trainer(out=str(out)).fit()
    (out / "model.npz").unlink()
    path = out / "checkpoints" / "step-00000028.npz"
    arrays = dict(np.load(path))
    meta = json.loads(arrays["meta"].tobytes())
    arrays["meta"] = np.frombuffer(json.dumps({**meta, "finished": False}).encode(), np.uint8)
    np.savez(path, **arrays)
    toy_trainer(out=str(out)).fit(resume="auto")
    tests = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"test"' in line]
    assert len(tests) == 1 and (out / "model.npz").exists()
    moved = (out / "checkpoints" / "abandoned-after-step-28" / "metrics.jsonl").read_text()
    assert json.loads(moved)["split"] == "test"
