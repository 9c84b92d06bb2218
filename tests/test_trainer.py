"""The trainer against an independent float64 reference, micro-batches, short last batches."""

import numpy as np
import pytest

from ddp_edf import TrainingError
from ddp_edf.config import load_config
from ddp_edf.data import epoch_permutation
from ddp_edf.parallel.comm import SerialComm
from ddp_edf.train import build_trainer
from idx_files import write_dataset
from reference_mlp import sgd_run


class Run:
    """A trainer built from a config the way the command line builds it; ``run()`` trains it."""

    def __init__(self, config, comm=None):
        self.config = config
        self.trainer = build_trainer(config, comm or SerialComm())

    def run(self):
        return self.trainer.fit(self.config.train.epochs, self.config.train.max_steps)


def make_trainer(data_dir, tmp_path, *overrides):
    config = load_config(None, [f"data.dataset=idx:{data_dir}", "data.dev_size=20", "model.hidden=[7]",
                                "optim.momentum=0", "optim.lr=0.5", "train.global_batch=24",
                                "train.epochs=2", "train.seed=11", "log.every=1000", *overrides])
    run = Run(config)
    return run.trainer, run


@pytest.fixture
def data_dir(isolated_data):
    write_dataset(isolated_data / "d", n_train=110, n_test=30, rows=3, cols=3)  # 90 train: 24 does not divide it
    return isolated_data / "d"


def reference_batches(trainer, config, epochs):
    train = trainer.train
    B = config.train.global_batch
    for epoch in range(epochs):
        order = epoch_permutation(config.train.seed, epoch, len(train))
        for start in range(0, len(order), B):
            idx = order[start:start + B]
            yield train.images[idx] / 255.0, train.labels[idx]


def test_training_matches_an_independent_float64_reference(data_dir, tmp_path):
    trainer, run = make_trainer(data_dir, tmp_path)
    config = run.config
    start = [p.value.copy() for p in trainer.graph.parameters]
    run.run()
    assert trainer.step == 2 * 4   # 90 examples, batches of 24, 24, 24, 18
    expected = sgd_run(start, reference_batches(trainer, config, 2), lr=0.5)
    for p, ref in zip(trainer.graph.parameters, expected):
        np.testing.assert_allclose(p.value, ref, rtol=1e-4, atol=1e-5, err_msg=p.name)


def test_short_last_batch_is_weighted_by_its_own_size(data_dir, tmp_path):
    """With drop_last the reference sees only full batches; without, the short one counts by its size."""
    trainer, run = make_trainer(data_dir, tmp_path, "train.drop_last=true")
    config = run.config
    start = [p.value.copy() for p in trainer.graph.parameters]
    run.run()
    assert trainer.step == 2 * 3
    full_only = [b for b in reference_batches(trainer, config, 2) if len(b[1]) == 24]
    expected = sgd_run(start, full_only, lr=0.5)
    for p, ref in zip(trainer.graph.parameters, expected):
        np.testing.assert_allclose(p.value, ref, rtol=1e-4, atol=1e-5, err_msg=p.name)


@pytest.mark.parametrize("pieces", [2, 5, 24])   # 24 = the batch: a short last batch has empty pieces
def test_micro_batches_equal_the_unsplit_step(data_dir, tmp_path, pieces):
    whole, whole_run = make_trainer(data_dir, tmp_path / "a")
    split, split_run = make_trainer(data_dir, tmp_path / "b", f"train.micro_batches={pieces}")
    whole_run.run()
    split_run.run()
    np.testing.assert_allclose(split.graph.params, whole.graph.params, rtol=1e-5, atol=1e-6)


def test_max_steps_and_eval_every(data_dir, tmp_path):
    trainer, run = make_trainer(data_dir, tmp_path, "train.max_steps=5", "train.epochs=10")
    run.run()
    assert trainer.step == 5


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the overflow is the point of the test
def test_nonfinite_loss_stops_or_skips(data_dir, tmp_path):
    trainer, run = make_trainer(data_dir, tmp_path, "optim.lr=1e30")
    with pytest.raises(TrainingError, match=r"non-finite loss at step \d+ .*lower the learning rate"):
        run.run()
    skipping, skipping_run = make_trainer(data_dir, tmp_path, "optim.lr=1e30", "dist.nonfinite=skip")
    with pytest.raises(TrainingError, match=r"\d+ of \d+ steps had a non-finite loss and were skipped"):
        skipping_run.run()
    assert skipping.skipped_steps > 0
