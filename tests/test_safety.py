"""Hostile use of the command line: nothing saved is lost, nothing is silently wrong, and every bad
input ends in one line naming the problem and the fix (exit code 1, never a traceback)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ddp_edf import plot
from ddp_edf import train as train_cli
from ddp_edf.config import ConfigError, load_config
from ddp_edf.parallel.comm import SerialComm
from ddp_edf.parallel.faults import Watchdog, WatchdogFired
from ddp_edf.training.checkpoint import latest_checkpoint, save_checkpoint
from idx_files import idx_bytes, write_dataset

ROOT = Path(__file__).resolve().parents[1]


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


# -- 1. The main job runs anywhere, offline -----------------------------------------------------

def test_the_default_run_is_the_built_in_digits(tmp_path, isolated_data):
    assert train_cli.main(["--dist", "serial", "--out", str(tmp_path / "run"), "--set", "train.seed=1"]) == 0
    test = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()][-1]
    assert test["split"] == "test" and test["error"] < 0.05, test
    assert sorted(params(tmp_path / "run/model.npz")) == ["fc0.W", "fc0.b", "fc1.W", "fc1.b"]


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root to make a network namespace")
def test_make_train_runs_with_no_network(tmp_path):
    """The README's first command, with the network gone (a namespace with only a down loopback)."""
    venv = Path(sys.executable).parent.parent
    result = subprocess.run(["unshare", "--net", "--", "make", "-o", f"{venv}/.installed", "train", f"VENV={venv}",
                             f"ARGS=--out {tmp_path / 'run'}"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert (tmp_path / "run/model.npz").exists() and "test: loss" in result.stdout


# -- 2. Never lose a run -----------------------------------------------------------------------

def test_resuming_an_older_checkpoint_moves_the_newer_ones_aside(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_cli.main(args(data, out, "--set", "checkpoint.every_steps=2", "--set", "train.max_steps=12")) == 0
    abandoned = {p.name: p.read_bytes() for p in (out / "checkpoints").glob("step-*.npz")}
    assert sorted(abandoned) == ["step-00000008.npz", "step-00000010.npz", "step-00000012.npz"]
    assert train_cli.main(args(data, out, "--resume", str(out / "checkpoints/step-00000008.npz"), "--set",
                               "optim.lr=0.01", "--set", "checkpoint.every_steps=2", "--set", "train.max_steps=10")) == 0
    assert "newer checkpoint(s) moved to" in capsys.readouterr().out
    moved = out / "checkpoints/abandoned-after-step-8"
    assert {p.name: p.read_bytes() for p in moved.iterdir()} == {k: abandoned[k] for k in
                                                                 ("step-00000010.npz", "step-00000012.npz")}
    newest = latest_checkpoint(out)
    assert newest["meta"]["step"] == 10 and newest["meta"]["config"]["optim"]["lr"] == 0.01
    np.testing.assert_array_equal(np.concatenate([v.ravel() for v in params(out / "model.npz").values()]),
                                  newest["params"])


def test_resume_never_writes_into_another_run(data, tmp_path, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    assert train_cli.main(args(data, first, "--set", "checkpoint.every_steps=5")) == 0
    assert train_cli.main(args(data, second)) == 0
    before = files(second)
    fails(capsys, args(data, second, "--resume", str(first / "checkpoints/step-00000030.npz")),
          "belongs to the run in", "holds another run")
    assert files(second) == before
    assert train_cli.main(args(data, tmp_path / "branch", "--resume",
                               str(first / "checkpoints/step-00000030.npz"))) == 0   # a new empty folder is fine


@pytest.mark.parametrize("leftover", ["model.npz", "checkpoints/step-00000004.npz"])
def test_a_folder_with_any_file_of_a_run_is_not_treated_as_empty(data, tmp_path, capsys, leftover):
    out = tmp_path / "run"
    assert train_cli.main(args(data, out, "--set", "checkpoint.every_steps=4", "--set", "checkpoint.keep=10")) == 0
    (out / "metrics.jsonl").unlink()
    for path in (out / "checkpoints").glob("*.npz"):
        if str(path.relative_to(out)) != leftover:
            path.unlink()
    if leftover != "model.npz":
        (out / "model.npz").unlink()
    before = files(out)
    fails(capsys, args(data, out), "already holds a run")
    assert files(out) == before


def test_a_run_that_failed_before_training_does_not_block_the_same_command(data, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text("")              # what a run that died before its first report leaves
    (out / "config.toml").write_text("# from the failed run\n")
    assert train_cli.main(args(data, out)) == 0


def test_two_runs_on_one_folder_at_once_are_refused(data, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "ddp_edf.train", *args(data, out, "--set", "train.epochs=100000", "--resume",
                                                            "auto")]
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not (out / "metrics.jsonl").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        second = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert second.returncode == 1 and "is in use by another run (process" in second.stderr, second.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    third = subprocess.run(command[:-2] + ["--set", "train.max_steps=5", "--resume", "auto"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=60)   # a killed run's lock is gone with it
    assert "is in use" not in third.stderr


# -- 3. Never silently wrong -------------------------------------------------------------------

def test_a_metrics_line_cut_by_a_kill_is_set_aside_on_resume(data, tmp_path):
    out = tmp_path / "run"
    assert train_cli.main(args(data, out, "--set", "train.max_steps=8", "--set", "log.every=2")) == 0
    with open(out / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 9, "epoch": 0, "spl')
    assert train_cli.main(args(data, out, "--resume", "auto", "--set", "log.every=2")) == 0
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert all(json.loads(line)["step"] > 0 for line in lines)
    assert (out / "metrics.jsonl.partial").read_text() == '{"step": 9, "epoch": 0, "spl\n'
    assert plot.read_metrics(out)["test"][-1][0] == 30


def checkpoint_meta(step, n=5):
    return {"step": step, "seed": 1, "world_size": 1, "layout": [["w", [n]]], "trajectory": {}, "config": {}}


def test_checkpoints_are_ordered_by_step_whatever_the_width(tmp_path):
    for step in (99_999_998, 99_999_999, 100_000_000):
        save_checkpoint(tmp_path, np.full(5, step, np.float32), {"steps_taken": np.array(step)}, checkpoint_meta(step),
                        keep=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step-100000000.npz", "step-99999999.npz"]
    assert latest_checkpoint(tmp_path)["meta"]["step"] == 100_000_000


@pytest.mark.parametrize("length", [1, 10_000])
def test_a_checkpoint_whose_params_have_another_length_is_refused(data, tmp_path, capsys, length):
    out = tmp_path / "run"
    assert train_cli.main(args(data, out, "--set", "train.max_steps=4")) == 0
    path = out / "checkpoints/step-00000004.npz"
    with np.load(path) as archive:
        arrays = {k: archive[k] for k in archive.files}
    arrays["params"] = np.ones(length, np.float32)
    np.savez(path, **arrays)
    fails(capsys, args(data, out, "--resume", "auto"), "'params' holds", f"({length},)", "expected 226 floats")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_skipping_most_steps_fails_naming_the_count(data, tmp_path, capsys):
    fails(capsys, args(data, tmp_path / "run", "--set", "optim.lr=1e30", "--set", "dist.nonfinite=skip"),
          "steps had a non-finite loss and were skipped")


def test_a_cosine_schedule_that_would_climb_is_refused(data, tmp_path, capsys):
    fails(capsys, args(data, tmp_path / "run", "--set", "optim.schedule=cosine", "--set", "optim.min_lr=0.5"),
          "optim.min_lr = 0.5 > optim.lr = 0.1")


def test_a_seed_given_with_resume_is_reported_unused(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_cli.main(args(data, out, "--set", "train.max_steps=5")) == 0
    assert train_cli.main(args(data, out, "--resume", "auto", "--set", "train.seed=5")) == 0
    assert "seed 5 not used: the checkpoint's seed 3 continues its data order" in capsys.readouterr().out


def test_an_absurd_watchdog_timeout_is_refused_and_a_watchdog_that_fired_fails_the_run(data, tmp_path, capsys):
    fails(capsys, args(data, tmp_path / "run", "--set", "dist.timeout_s=0.001"), "dist.timeout_s = 0.001")

    class Comm(SerialComm):
        aborted = False

        def abort(self, code=1):
            self.aborted = True           # the job would end here; the test looks at what follows
    comm = Comm()
    with pytest.raises(WatchdogFired, match="no progress for"):
        with Watchdog(comm, 1, poll_s=0.05, grace_s=0):
            time.sleep(1.3)
    assert comm.aborted


# -- 4. One clear line instead of a traceback or a misleading message ------------------------------

@pytest.mark.parametrize("content,expected", [
    (None, "is a folder: give a TOML file"),
    (b"[train]\nepochs = 2\n\xff\xfe\n", "is not UTF-8 text"),
    (b"[model]\nhidden = [true]\n", "model.hidden = [True] is out of range"),
    (b"[model]\nhidden = [10000000000000]\n", "model.hidden = [10000000000000] is out of range")])
def test_config_files_that_cannot_be_used(tmp_path, capsys, content, expected):
    path = tmp_path / "c.toml"
    path.mkdir() if content is None else path.write_bytes(content)
    fails(capsys, ["--dist", "serial", "--out", str(tmp_path / "run"), "--config", str(path)], expected)


def test_a_utf8_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "c.toml"
    path.write_bytes("\ufeff[train]\nepochs = 2\n".encode())
    assert load_config(path).train.epochs == 2


def test_string_keys_take_the_text_as_given():
    config = load_config(None, ["data.dir=123", "data.dataset=idx:2024-01-01"])
    assert config.data.dir == "123" and config.data.dataset == "idx:2024-01-01"
    assert load_config(None, ["data.dir=2024-01-01"]).data.dir == "2024-01-01"
    with pytest.raises(ConfigError, match="optim.lr = '2024-01-01' has the wrong type"):
        load_config(None, ["optim.lr=2024-01-01"])


def test_launcher_refuses_an_unknown_binding():
    result = subprocess.run(["bash", "launch/local.sh", "-n", "1", "-b", "bogus"], cwd=ROOT, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 2 and "-b bogus must be core, socket or none" in result.stderr


@pytest.mark.parametrize("place,expected", [("file", "is a file"), ("under a file", "cannot create the output folder"),
                                            ("proc", "cannot create the output folder")])
def test_an_output_folder_that_cannot_be_one(data, tmp_path, capsys, place, expected):
    (tmp_path / "file").write_text("not a folder")
    out = {"file": tmp_path / "file", "under a file": tmp_path / "file/run", "proc": Path("/proc/ddp_edf_run")}[place]
    fails(capsys, args(data, out), expected, str(out))


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_full_disk_is_named_and_earlier_checkpoints_survive(data, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(out)], check=True)
    try:
        assert train_cli.main(args(data, out, "--set", "train.max_steps=4", "--set", "checkpoint.every_steps=2")) == 0
        before = files(out / "checkpoints")
        with open(out / "filler", "wb", buffering=0) as filler:     # fill the disk to the last block
            with pytest.raises(OSError):
                while True:
                    filler.write(b"\0" * 512)
        fails(capsys, args(data, out, "--resume", "auto", "--set", "train.max_steps=100", "--set",
                           "model.hidden=[8]", "--set", "checkpoint.every_steps=2"), "disk full at")
        for name, content in before.items():     # the checkpoints that were there are intact
            assert files(out / "checkpoints").get(name) in (content, None)
        assert latest_checkpoint(out) is not None
    finally:
        subprocess.run(["umount", str(out)], check=True)


def bad_checkpoint(out, **change):
    """A real checkpoint of the run in OUT with its arrays or metadata changed."""
    path = out / "checkpoints/step-00000004.npz"
    with np.load(path) as archive:
        arrays = {k: archive[k] for k in archive.files}
    meta = json.loads(arrays["meta"].tobytes())
    for key, value in change.items():
        if key == "meta":
            meta = value
        elif key.startswith("meta."):
            meta.pop(key[5:]) if value is None else meta.__setitem__(key[5:], value)
        else:
            arrays[key] = value
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("change,expected", [
    ({"meta": [1, 2]}, "format version None"),
    ({"meta.layout": None}, "lacks or mistypes ['layout']"),
    ({"meta.step": "4"}, "lacks or mistypes ['step']"),
    ({"params": np.ones((2, 113), np.float32)}, "'params' holds (2, 113)"),
    ({"params": np.array(["x"] * 226)}, "'params' holds (226,) <U1"),
    ({"params": np.full(226, np.nan, np.float32)}, "non-finite values in"),
    ({"optim.steps_taken": np.array("4")}, "'optim.steps_taken' is missing or not one integer")])
def test_a_broken_checkpoint_is_named(data, tmp_path, capsys, change, expected):
    out = tmp_path / "run"
    assert train_cli.main(args(data, out, "--set", "train.max_steps=4")) == 0
    path = bad_checkpoint(out, **change)
    fails(capsys, args(data, out, "--resume", str(path)), str(path), expected)
    assert train_cli.main(args(data, out, "--resume", "auto")) == 0      # auto skips it: a fresh start
    assert "warning: skipping" in capsys.readouterr().out


def test_init_and_resume_files_that_are_not_checkpoints(data, tmp_path, capsys):
    out = tmp_path / "run"
    np.save(tmp_path / "array.npy", np.ones(3))
    fails(capsys, args(data, out, "--resume", str(tmp_path / "array.npy")), "is a single array (.npy)")
    fails(capsys, args(data, out, "--resume", str(tmp_path)), "is a folder", "--resume auto --out")
    (tmp_path / "junk.npz").write_text("not a zip archive")
    fails(capsys, args(data, out, "--init", str(tmp_path / "junk.npz")), "is corrupt or not an .npz file")
    np.savez(tmp_path / "nan.npz", **{"fc0.W": np.full((16, 8), np.nan)})
    fails(capsys, args(data, out, "--init", str(tmp_path / "nan.npz")), "'fc0.W' is not finite numbers")


@pytest.mark.parametrize("break_it,expected", [
    ("images 0x0", "no images to train on"), ("0 training", "no images to train on"),
    ("0 test", "no images to test on"), ("sizes", "holds images of 16 pixels but")])
def test_idx_data_that_cannot_train_is_refused_at_load(isolated_data, tmp_path, capsys, break_it, expected):
    folder = isolated_data / "d"
    write_dataset(folder, n_train=60, n_test=20)
    replace = {"images 0x0": ("train-images-idx3-ubyte", np.zeros((60, 0, 0), np.uint8)),
               "0 training": ("train-images-idx3-ubyte", np.zeros((0, 4, 4), np.uint8)),
               "0 test": ("t10k-images-idx3-ubyte", np.zeros((0, 4, 4), np.uint8)),
               "sizes": ("t10k-images-idx3-ubyte", np.zeros((20, 5, 5), np.uint8))}[break_it]
    (folder / replace[0]).write_bytes(idx_bytes(replace[1]))
    if break_it == "0 training":
        (folder / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(0, np.uint8)))
    if break_it == "0 test":
        (folder / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(0, np.uint8)))
    fails(capsys, ["--dist", "serial", "--out", str(tmp_path / "run"), "--set", f"data.dataset=idx:{folder}",
                   "--set", "data.dev_size=0"], expected)


def test_evaluate_takes_a_moved_idx_folder(data, tmp_path, capsys):
    from ddp_edf import evaluate as evaluate_cli
    out = tmp_path / "run"
    assert train_cli.main(args(data, out, "--set", "train.max_steps=4")) == 0
    moved = tmp_path / "moved"
    data.rename(moved)
    assert evaluate_cli.main(["--checkpoint", str(out), "--dist", "serial", "--data-dir", str(moved), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["examples"] == 50


@pytest.mark.parametrize("metrics,expected", [
    ('{"step": 1, "epoch": 0, "split": "train"}\n{"step": 2, "epoch": 0, "split": "train", "loss": 1}\n', ":1 is not"),
    ('{"step": 1, "epoch": 0, "split": "train", "loss": "1.0"}\n\n{"step": 2}\n', ":1 is not"),
    ('{"step": 1, "epoch": "0", "split": "train", "loss": 1.0}\n{"step": 2}\n', ":1 is not"),
    (b"\x89PNG\r\n\x1a\n\x00\xff binary", "is not a text file")])
def test_plot_names_a_bad_metrics_file(tmp_path, capsys, metrics, expected):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(metrics if isinstance(metrics, bytes) else metrics.encode())
    assert plot.main([str(tmp_path)]) == 1
    error = capsys.readouterr().err
    assert expected in error and "Traceback" not in error


@pytest.mark.parametrize("output,expected", [("missing/curves.png", "does not exist"), ("curves.xyz", "unknown image")])
def test_plot_names_a_bad_output(tmp_path, capsys, output, expected):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "epoch": 0, "split": "train", "loss": 1.0}\n')
    assert plot.main([str(tmp_path), "--output", str(tmp_path / output)]) == 1
    assert expected in capsys.readouterr().err
