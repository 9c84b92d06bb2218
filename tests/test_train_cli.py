"""python -m ddp_edf.train in one process: outputs, --init, errors and exit codes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ddp_edf import train as train_cli
from idx_files import write_dataset

ROOT = Path(__file__).resolve().parents[1]


def tiny_args(data_dir, out, *extra):
    return ["--dist", "serial", "--out", str(out), "--set", f"data.dataset=idx:{data_dir}",
            "--set", "data.dev_size=40", "--set", "model.hidden=[8]", "--set", "train.global_batch=16",
            "--set", "train.epochs=2", "--set", "train.seed=3", "--set", "log.every=2", *extra]


@pytest.fixture
def tiny_data(isolated_data):
    write_dataset(isolated_data / "d", n_train=200, n_test=50)
    return isolated_data / "d"


def read_metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_outputs_of_a_run(tiny_data, tmp_path):
    out = tmp_path / "run"
    assert train_cli.main(tiny_args(tiny_data, out)) == 0
    records = read_metrics(out)
    for record in records:
        assert {"step", "epoch", "split", "loss", "error", "elapsed_s"} <= set(record)
    splits = [r["split"] for r in records]
    assert splits.count("dev") == 2 and splits[-1] == "test" and "train" in splits
    train = [r for r in records if r["split"] == "train"]
    assert all(r["samples_per_s"] > 0 and r["lr"] == 0.1 for r in train)
    assert records[-1]["epoch"] == 1
    assert records[-1]["step"] == 2 * 10   # 160 training examples / 16 per batch, 2 epochs
    with np.load(out / "model.npz", allow_pickle=False) as params:
        assert sorted(params.files) == ["fc0.W", "fc0.b", "fc1.W", "fc1.b"]
        assert params["fc0.W"].shape == (16, 8)
    assert 'dataset = "idx:' in (out / "config.toml").read_text()
    assert "seed = 3" in (out / "config.toml").read_text()


def test_same_seed_same_result_and_init_from_npz(tiny_data, tmp_path):
    first, second, third = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert train_cli.main(tiny_args(tiny_data, first)) == 0
    assert train_cli.main(tiny_args(tiny_data, second)) == 0
    with np.load(first / "model.npz") as a, np.load(second / "model.npz") as b:
        for name in a.files:
            np.testing.assert_array_equal(a[name], b[name])
    # --init: starting from a's final parameters changes the run
    assert train_cli.main(tiny_args(tiny_data, third, "--init", str(first / "model.npz"))) == 0
    assert read_metrics(third)[0]["loss"] < read_metrics(first)[0]["loss"]


def test_init_with_wrong_shapes_is_refused(tiny_data, tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    np.savez(bad, **{"fc0.W": np.zeros((3, 3)), "fc0.b": np.zeros(8), "fc1.W": np.zeros((8, 10)),
                     "fc1.b": np.zeros(10)})
    assert train_cli.main(tiny_args(tiny_data, tmp_path / "r", "--init", str(bad))) == 1
    err = capsys.readouterr().err
    assert "'fc0.W' has shape (3, 3) but the model needs (16, 8)" in err and "Traceback" not in err


def test_existing_run_is_never_overwritten(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_cli.main(tiny_args(tiny_data, out)) == 0
    before = (out / "model.npz").read_bytes()
    assert train_cli.main(tiny_args(tiny_data, out)) == 1
    assert "already holds a run" in capsys.readouterr().err
    assert (out / "model.npz").read_bytes() == before


def test_errors_are_one_line_with_exit_code_1(tmp_path, isolated_data):
    result = subprocess.run(
        [sys.executable, "-m", "ddp_edf.train", "--dist", "serial", "--out", str(tmp_path / "x"),
         "--set", "optim.lrr=0.1"], capture_output=True, text=True, cwd=ROOT,
        env={**os.environ, "XDG_CACHE_HOME": str(isolated_data / "cache")})
    assert result.returncode == 1
    assert result.stderr.strip() == "ddp_edf: error: unknown config key 'optim.lrr'; did you mean 'optim.lr'?"
    missing = subprocess.run(
        [sys.executable, "-m", "ddp_edf.train", "--dist", "serial", "--out", str(tmp_path / "y"),
         "--set", f"data.dataset=idx:{tmp_path / 'nowhere'}"], capture_output=True, text=True, cwd=ROOT)
    assert missing.returncode == 1 and "does not hold the four IDX files" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_help_lists_every_key_with_default():
    result = subprocess.run([sys.executable, "-m", "ddp_edf.train", "--help"], capture_output=True,
                            text=True, cwd=ROOT)
    assert result.returncode == 0
    from ddp_edf.config import all_keys
    for key in all_keys():
        assert f"  {key} = " in result.stdout
    assert "optim.lr = 0.1  -- base learning rate" in result.stdout


def test_runs_without_mpi4py(tiny_data, tmp_path):
    """Debug mode needs neither mpirun nor mpi4py: hide mpi4py and train."""
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "mpi4py.py").write_text("raise ImportError('mpi4py hidden by the test')\n")
    env = {**os.environ, "PYTHONPATH": f"{hide}{os.pathsep}{ROOT}"}
    for name in ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK"):
        env.pop(name, None)
    result = subprocess.run([sys.executable, "-m", "ddp_edf.train", *tiny_args(tiny_data, tmp_path / "r")[2:]],
                            capture_output=True, text=True, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stderr
    assert "ranks: 1 (serial)" in result.stdout
    forced = subprocess.run([sys.executable, "-m", "ddp_edf.train", "--dist", "mpi"], capture_output=True,
                            text=True, cwd=ROOT, env=env)
    assert forced.returncode == 1 and "mpi4py cannot be imported" in forced.stderr
