"""Hostile use of the command line, part 2: every bad input ends in one line naming the problem and
the fix (exit code 1, never a traceback), and nothing saved is touched."""

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ddp_edf import plot
from ddp_edf import train as train_cli
from ddp_edf.config import ConfigError, load_config
from ddp_edf.training.run_folder import latest_checkpoint
from idx_files import idx_bytes, write_dataset
from run_helpers import args, data, fails, files, needs_root_for_tmpfs, small_disk  # noqa: F401  (data: a fixture)

ROOT = Path(__file__).resolve().parents[1]


# -- 4. One clear line instead of a traceback or a misleading message ------------------------------

@pytest.mark.parametrize("content,expected", [
    (None, "is a folder: give a TOML file"),
    (b"[train]\nepochs = 2\n\xff\xfe\n", "is not UTF-8 text"),
    (b"[model]\nhidden = [true]\n", "model.hidden = [True] must be a list of integer widths"),
    (b"[model]\nhidden = [10000000000000]\n", "model.hidden = [10000000000000] must be a list of integer")])
def test_config_files_that_cannot_be_used(tmp_path, capsys, content, expected):
    path = tmp_path / "c.toml"
    path.mkdir() if content is None else path.write_bytes(content)
    fails(capsys, ["--dist", "serial", "--out", str(tmp_path / "run"), "--config", str(path)], expected)


def test_a_utf8_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "c.toml"
    path.write_bytes("\ufeff[train]\nepochs = 2\n".encode())
    assert load_config(path).train.epochs == 2


def test_string_keys_take_the_text_as_given():
    assert load_config(None, ["data.dir=123"]).data.dir == "123"
    assert load_config(None, ["data.dataset=idx:2024-01-01"]).data.dataset == "idx:2024-01-01"
    assert load_config(None, ["data.dir=2024-01-01"]).data.dir == "2024-01-01"
    with pytest.raises(ConfigError, match="optim.lr = '2024-01-01' has the wrong type"):
        load_config(None, ["optim.lr=2024-01-01"])


def test_a_date_in_a_file_for_a_text_key_says_to_quote_it(tmp_path):
    (tmp_path / "c.toml").write_text("[data]\ndir = 2024-01-01\n")
    with pytest.raises(ConfigError, match='data.dir = 2024-01-01 has the wrong type: expected str .text: quote it, dir = "2024'):
        load_config(tmp_path / "c.toml")
    with pytest.raises(ConfigError, match="data.dir = '/x' is not used with data.dataset = 'idx:/y'"):
        load_config(None, ["data.dataset=idx:/y", "data.dir=/x"])


def test_launcher_refuses_an_unknown_binding():
    result = subprocess.run(["bash", "launch/local.sh", "-n", "1", "-b", "bogus"], cwd=ROOT, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 2 and "-b bogus must be core, socket or none" in result.stderr


@pytest.mark.parametrize("place,expected", [("file", "is a file"), ("under a file", "cannot create the output folder"),
                                            ("proc", "cannot create the output folder"),
                                            ("read-only", "cannot write the lock file"),
                                            ("lock a folder", "cannot write the lock file")])
def test_an_output_folder_that_cannot_be_one(data, tmp_path, capsys, place, expected):
    (tmp_path / "file").write_text("not a folder")
    (tmp_path / "lock a folder/.lock").mkdir(parents=True)
    out = {"file": tmp_path / "file", "under a file": tmp_path / "file/run", "proc": Path("/proc/ddp_edf_run"),
           "read-only": Path("/proc/self"), "lock a folder": tmp_path / "lock a folder"}[place]
    fails(capsys, args(data, out), expected, str(out))


@needs_root_for_tmpfs
def test_a_full_disk_is_named_and_earlier_checkpoints_survive(data, tmp_path, capsys):
    with small_disk(tmp_path / "run", "64k") as out:
        assert train_cli.main(args(data, out, "--set", "train.max_steps=4", "--set", "checkpoint.every_steps=2")) == 0
        before = files(out / "checkpoints")
        with open(out / "filler", "wb", buffering=0) as filler:     # fill the disk to the last block
            with pytest.raises(OSError):
                while True:
                    filler.write(b"\0" * 512)
        fails(capsys, args(data, out, "--resume", "auto", "--set", "train.max_steps=100", "--set",
                           "model.hidden=[8]", "--set", "checkpoint.every_steps=2"), "disk full at")
        assert files(out / "checkpoints") == before       # the checkpoints that were there are intact
        assert latest_checkpoint(out)["meta"]["step"] == 4


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
    ({"meta": [1, 2]}, "corrupt metadata (not a JSON object)"),
    ({"meta.layout": None}, "lacks or mistypes ['layout']"),
    ({"meta.step": "4"}, "lacks or mistypes ['step']"),
    ({"meta.seed": -5}, "lacks or mistypes ['seed']"), ({"meta.world_size": 0}, "lacks or mistypes ['world_size']"),
    ({"params": np.ones((2, 113), np.float32)}, "'params' holds (2, 113)"),
    ({"params": np.array(["x"] * 226)}, "'params' holds (226,) <U1"),
    ({"params": np.full(226, np.nan, np.float32)}, "non-finite values in"),
    ({"optim.steps_taken": np.array("4")}, "'optim.steps_taken' is missing or not one integer")])
def test_a_broken_checkpoint_is_named(data, tmp_path, capsys, change, expected):
    out = tmp_path / "run"
    assert train_cli.main(args(data, out, "--set", "train.max_steps=4")) == 0
    path = bad_checkpoint(out, **change)
    fails(capsys, args(data, out, "--resume", str(path)), str(path), expected)
    before = {k: v for k, v in files(out).items() if k.name != "train.log"}
    fails(capsys, args(data, out, "--resume", "auto"), "holds a run (model.npz) but no checkpoint that can be resumed")
    after = {k: v for k, v in files(out).items() if k.name != "train.log"}   # train.log has the warning
    assert after == before                       # auto skipped the broken one, and did not start afresh over the run


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
    ("0 test", "no images to test on"), ("sizes", "holds 4x4 images but"),
    ("shape", "holds 4x4 images but")])
def test_idx_data_that_cannot_train_is_refused_at_load(isolated_data, tmp_path, capsys, break_it, expected):
    folder = isolated_data / "d"
    write_dataset(folder, n_train=60, n_test=20)
    replace = {"images 0x0": ("train-images-idx3-ubyte", np.zeros((60, 0, 0), np.uint8)),
               "0 training": ("train-images-idx3-ubyte", np.zeros((0, 4, 4), np.uint8)),
               "0 test": ("t10k-images-idx3-ubyte", np.zeros((0, 4, 4), np.uint8)),
               "sizes": ("t10k-images-idx3-ubyte", np.zeros((20, 5, 5), np.uint8)),
               "shape": ("t10k-images-idx3-ubyte", np.zeros((20, 16, 1), np.uint8))}[break_it]
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


@pytest.mark.parametrize("output,expected", [("missing/curves.png", "does not exist"),
                                             ("curves.xyz", "Format 'xyz' is not supported")])
def test_plot_names_a_bad_output(tmp_path, capsys, output, expected):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "epoch": 0, "split": "train", "loss": 1.0}\n')
    assert plot.main([str(tmp_path), "--output", str(tmp_path / output)]) == 1
    assert expected in capsys.readouterr().err


@pytest.mark.parametrize("name", ["train.log", "metrics.jsonl"])
def test_a_full_disk_under_the_log_or_the_metrics_is_one_line(data, tmp_path, capsys, name):
    out = tmp_path / "run"
    out.mkdir()
    (out / name).symlink_to("/dev/full")         # every write there fails with "No space left on device"
    fails(capsys, args(data, out), f"disk full at {out / name}")


def test_evaluate_refuses_parameters_of_another_length(data, tmp_path, capsys):
    from ddp_edf import evaluate as evaluate_cli
    out = tmp_path / "run"
    assert train_cli.main(args(data, out, "--set", "train.max_steps=4")) == 0
    path = out / "checkpoints/step-00000004.npz"
    with np.load(path) as archive:
        arrays = {k: archive[k] for k in archive.files}
    arrays["params"] = np.ones(200, np.float32)
    np.savez(path, **arrays)
    assert evaluate_cli.main(["--checkpoint", str(path), "--dist", "serial"]) == 1
    error = capsys.readouterr().err
    assert "'params' holds (200,) float32 values; expected 226 floats" in error and "Traceback" not in error
