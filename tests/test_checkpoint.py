"""Checkpoints: atomic writes, exact resume, refusal of corrupt, pickled and mismatched files."""

import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from ddp_edf import train as train_cli
from ddp_edf.training.checkpoint import CheckpointError, read_checkpoint
from ddp_edf.training.run_folder import latest_checkpoint
from run_helpers import tiny_checkpoint
from idx_files import write_dataset


@pytest.fixture
def tiny_data(isolated_data):
    write_dataset(isolated_data / "d", n_train=200, n_test=50)
    return isolated_data / "d"


def args_for(data, out, *extra):
    return ["--dist", "serial", "--out", str(out), "--set", f"data.dataset=idx:{data}", "--set", "data.dev_size=40",
            "--set", "model.hidden=[8]", "--set", "train.global_batch=16", "--set", "train.epochs=3",
            "--set", "train.seed=3", "--set", "optim.name=adam", "--set", "optim.lr=0.01", *extra]


def params_of(out):
    with np.load(out / "model.npz", allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def test_resume_continues_bit_for_bit(tiny_data, tmp_path):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert train_cli.main(args_for(tiny_data, whole)) == 0
    assert train_cli.main(args_for(tiny_data, parts, "--set", "train.max_steps=13")) == 0   # stops mid-epoch 1
    assert read_checkpoint(parts / "checkpoints/step-00000013.npz")["meta"]["step_in_epoch"] == 3
    assert train_cli.main(args_for(tiny_data, parts, "--resume", "auto")) == 0
    expected, resumed = params_of(whole), params_of(parts)
    for name in expected:
        np.testing.assert_array_equal(resumed[name], expected[name], err_msg=name)


def test_resume_auto_without_checkpoint_starts_fresh(tiny_data, tmp_path):
    assert train_cli.main(args_for(tiny_data, tmp_path / "new", "--resume", "auto")) == 0
    assert (tmp_path / "new/checkpoints/step-00000030.npz").exists()


def test_checkpoint_content_and_keep(tiny_data, tmp_path):
    out = tmp_path / "run"
    assert train_cli.main(args_for(tiny_data, out, "--set", "checkpoint.every_steps=4", "--set",
                                   "checkpoint.keep=2")) == 0
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["step-00000028.npz", "step-00000030.npz"]
    checkpoint = read_checkpoint(out / "checkpoints/step-00000030.npz")
    meta = checkpoint["meta"]
    assert meta["step"] == 30 and meta["epoch"] == 3 and meta["seed"] == 3 and meta["format_version"] == 3
    assert meta["options"]["model"]["hidden"] == [8] and "SoftmaxCrossEntropy" in [node[0] for node in meta["graph"]]
    assert set(checkpoint["optim"]) == {"m", "v", "steps_taken"}


@pytest.mark.parametrize("change,key", [(["--set", "model.hidden=[9]"], "another model"),
                                        (["--set", "train.global_batch=20"], "global_batch = 16"),
                                        (["--set", "optim.name=sgd"], "optimizer = 'Adam' (state ['m', 'v']), this run has 'SGD'"),
                                        (["--set", "dist.deterministic=true"],
                                         "deterministic (chunk) = [False, None], this run has [True, 32]")])
def test_mismatched_checkpoint_is_refused(tiny_data, tmp_path, capsys, change, key):
    out = tmp_path / "run"
    assert train_cli.main(args_for(tiny_data, out, "--set", "train.max_steps=5")) == 0
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert train_cli.main(args_for(tiny_data, out, "--resume", "auto", *change)) == 1
    error = capsys.readouterr().err
    assert key in error and "Traceback" not in error
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before


def test_checkpoint_without_the_optimizer_state_is_refused(tiny_data, tmp_path, capsys):
    """Saved by plain SGD (no velocity), resumed with momentum: one line naming the missing state."""
    out = tmp_path / "run"
    plain = ["--set", "optim.name=sgd", "--set", "optim.momentum=0"]
    assert train_cli.main(args_for(tiny_data, out, *plain, "--set", "train.max_steps=5")) == 0
    assert train_cli.main(args_for(tiny_data, out, "--set", "optim.name=sgd", "--set", "optim.momentum=0.9",
                                   "--resume", "auto")) == 1
    error = capsys.readouterr().err
    assert "optimizer = 'SGD' (state []), this run has 'SGD' (state ['velocity'])" in error and "Traceback" not in error


def small_checkpoint(out, step, value=1.0):
    return tiny_checkpoint(out, step, value)


def test_corrupt_newest_is_skipped_with_a_warning(tmp_path):
    small_checkpoint(tmp_path, 1)
    newest = small_checkpoint(tmp_path, 2, value=2.0)
    newest.write_bytes(newest.read_bytes()[:100])
    warnings = []
    checkpoint = latest_checkpoint(tmp_path, warn=warnings.append)
    assert checkpoint["meta"]["step"] == 1
    assert len(warnings) == 1 and "step-00000002.npz" in warnings[0] and "corrupt" in warnings[0]


def test_pickle_payload_is_refused(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, params=np.zeros(3, np.float32), meta=np.array([{"step": 1}], dtype=object))
    with pytest.raises(CheckpointError, match="pickled objects; refused"):
        read_checkpoint(path)


WRITER = """
import sys, numpy as np
from ddp_edf.training.checkpoint import write_arrays
print('ready', flush=True)
write_arrays(sys.argv[1] + "/checkpoints/step-00000002.npz", {"params": np.ones(150_000_000, np.float32)})
"""


def test_writer_killed_mid_write_leaves_the_last_good_checkpoint(tmp_path):
    small_checkpoint(tmp_path, 1)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "ready"
    deadline = time.monotonic() + 20
    while not any(".tmp-" in p.name for p in (tmp_path / "checkpoints").iterdir()) and time.monotonic() < deadline:
        time.sleep(0.01)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert not (tmp_path / "checkpoints/step-00000002.npz").exists()
    assert latest_checkpoint(tmp_path)["meta"]["step"] == 1
