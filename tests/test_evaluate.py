"""python -m ddp_edf.evaluate: the figures equal independent float64 math, serial and under mpiexec."""

import json
import subprocess
import sys

import numpy as np
import pytest

from ddp_edf import evaluate as evaluate_cli
from ddp_edf import train as train_cli
from idx_files import write_dataset
from test_mpi_jobs import MPIEXEC, ROOT, clean_env


@pytest.fixture
def trained(isolated_data, tmp_path):
    """A short serial run on random 4x4 images; returns (OUT, the IDX arrays)."""
    arrays = write_dataset(isolated_data / "d", n_train=230, n_test=57, seed=4)
    out = tmp_path / "run"
    assert train_cli.main(["--dist", "serial", "--out", str(out), "--set", f"data.dataset=idx:{isolated_data / 'd'}",
                           "--set", "data.dev_size=31", "--set", "model.hidden=[8, 5]", "--set", "train.epochs=2",
                           "--set", "train.global_batch=16", "--set", "train.seed=2", "--set", "optim.lr=0.2"]) == 0
    return out, arrays


def reference_figures(out, images, labels):
    """Mean cross-entropy and error rate of OUT/model.npz in float64, written without the engine."""
    with np.load(out / "model.npz", allow_pickle=False) as archive:
        p = {name: archive[name].astype(np.float64) for name in archive.files}
    h = images.reshape(len(images), -1).astype(np.float64) / 255.0
    layers = sorted({name.split(".")[0] for name in p}, key=lambda s: int(s[2:]))
    for k, layer in enumerate(layers):
        h = h @ p[f"{layer}.W"] + p[f"{layer}.b"]
        if k < len(layers) - 1:
            h = np.maximum(h, 0)
    log_q = h - h.max(axis=1, keepdims=True)
    log_q -= np.log(np.exp(log_q).sum(axis=1, keepdims=True))
    loss = -log_q[np.arange(len(labels)), labels].mean()
    return loss, float(np.mean(h.argmax(axis=1) != labels))


def run_evaluate(capsys, *args):
    assert evaluate_cli.main(["--dist", "serial", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.parametrize("split", ["test", "dev", "train"])
def test_figures_equal_independent_math(trained, capsys, split):
    out, arrays = trained
    images, labels = {"test": (arrays["test_images"], arrays["test_labels"]),
                      "dev": (arrays["train_images"][-31:], arrays["train_labels"][-31:]),
                      "train": (arrays["train_images"][:-31], arrays["train_labels"][:-31])}[split]
    result = run_evaluate(capsys, "--checkpoint", str(out), "--split", split, "--batch", "10")
    loss, error = reference_figures(out, images, labels.astype(np.int64))
    assert result["examples"] == len(labels) and result["step"] == 26
    assert result["loss"] == pytest.approx(loss, rel=1e-5)
    assert result["error"] == pytest.approx(error, abs=1e-12)


def test_test_figures_equal_what_training_reported(trained, capsys):
    out, _ = trained
    reported = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    test = next(r for r in reported if r["split"] == "test")
    result = run_evaluate(capsys, "--checkpoint", str(out / "checkpoints/step-00000026.npz"))
    assert result["loss"] == pytest.approx(test["loss"], rel=1e-9) and result["error"] == test["error"]


def test_missing_or_empty_checkpoint_is_one_line_error(trained, tmp_path, capsys):
    assert evaluate_cli.main(["--dist", "serial", "--checkpoint", str(tmp_path / "nope.npz")]) == 1
    assert "not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert evaluate_cli.main(["--dist", "serial", "--checkpoint", str(tmp_path / "empty")]) == 1
    assert "holds no valid checkpoint" in capsys.readouterr().err


def test_under_mpiexec_equals_one_process(trained, capsys):
    out, _ = trained
    serial = run_evaluate(capsys, "--checkpoint", str(out), "--split", "dev")
    result = subprocess.run([MPIEXEC, "-n", "3", sys.executable, "-m", "ddp_edf.evaluate", "--json", "--checkpoint",
                             str(out), "--split", "dev", "--batch", "4"], capture_output=True, text=True, cwd=ROOT,
                            env=clean_env(), timeout=60)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1  # rank 0 alone prints
    assert lines[0]["examples"] == serial["examples"] == 31 and lines[0]["error"] == serial["error"]
    assert lines[0]["loss"] == pytest.approx(serial["loss"], rel=1e-9)


def test_a_cnn_checkpoint_evaluates_with_dropout_off(isolated_data, tmp_path, capsys):
    """A CNN trained with dropout 0.5: the command line's figures equal those of the same parameters in the
    same CNN built without dropout (a float64 forward written with plain loops is in test_ops_vision.py)."""
    from ddp_edf.config import load_config
    from ddp_edf.parallel.comm import SerialComm
    from ddp_edf.train import build_trainer
    write_dataset(isolated_data / "d", n_train=230, n_test=57, rows=8, cols=8, seed=4)
    keys = [f"data.dataset=idx:{isolated_data / 'd'}", "data.dev_size=31", "model.kind=cnn", "model.channels=[3]",
            "model.hidden=[6]", "train.epochs=2", "train.global_batch=16", "log.echo=false"]
    out = tmp_path / "run"
    assert train_cli.main(["--dist", "serial", "--out", str(out), *(w for k in keys + ["model.dropout=0.5"]
                                                                     for w in ("--set", k))]) == 0
    capsys.readouterr()
    cli = run_evaluate(capsys, "--checkpoint", str(out), "--split", "test")
    twin = build_trainer(load_config(None, keys), SerialComm())      # model.dropout = 0: no Dropout op at all
    twin.load_parameters(out / "model.npz")
    figures = twin.evaluate(twin.test)
    assert cli["examples"] == figures["examples"] == 57
    assert cli["loss"] == pytest.approx(figures["loss"], rel=1e-6) and cli["error"] == figures["error"]


def test_a_checkpoint_whose_saved_config_predates_the_image_model_keys_still_evaluates(trained, capsys):
    """A config saved before model.channels ... optim.clip_norm existed: their defaults reproduce that run."""
    from ddp_edf.config import ADDED_LATER
    from ddp_edf.training.run_folder import latest_checkpoint
    out, _ = trained
    path = latest_checkpoint(out)["path"]
    with np.load(path) as archive:
        arrays = {name: archive[name] for name in archive.files}
    meta = json.loads(arrays["meta"].tobytes())
    for key in ADDED_LATER:
        del meta["options"][key.split(".")[0]][key.split(".")[1]]
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    before = run_evaluate(capsys, "--checkpoint", str(path))
    np.savez(path, **arrays)
    assert run_evaluate(capsys, "--checkpoint", str(path)) == before
    del meta["options"]["model"]["hidden"]                        # a key every saved config has: corrupt
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(path, **arrays)
    assert evaluate_cli.main(["--dist", "serial", "--checkpoint", str(path)]) == 1
    assert "its saved config lacks ['model.hidden']: corrupt" in capsys.readouterr().err
