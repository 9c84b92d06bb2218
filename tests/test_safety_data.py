"""Hostile use of the command line, part 3: data that changed under a run, caches and outputs that
cannot be written, odd checkpoint folders and options: one clear line each, nothing saved touched."""

import gzip
import json
import struct

import numpy as np
import pytest

from ddp_edf import evaluate as evaluate_cli
from ddp_edf import plot
from ddp_edf import train as train_cli
from ddp_edf.config import from_dict, load_config, to_dict, to_toml
from ddp_edf.data import DataError, read_idx
from idx_files import idx_bytes, write_dataset
from run_helpers import args, data, fails, files  # noqa: F401  (data is a fixture)


def evaluate(capsys, *argv):
    code = evaluate_cli.main([*argv, "--dist", "serial"])
    return code, capsys.readouterr().err


# -- Data that is not the data the run trained on -----------------------------------------------

def test_resuming_on_changed_data_is_refused(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_cli.main(args(data, out, "--set", "train.max_steps=4")) == 0
    before = files(out)
    write_dataset(data, n_train=200, n_test=50, seed=1)   # same folder, same shapes, other images
    fails(capsys, args(data, out, "--resume", "auto"), "was made with data CRC-32 = {'train': ")
    assert files(out) == before


def test_evaluate_on_other_data_of_the_same_shape_is_refused(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_cli.main(args(data, out, "--set", "train.max_steps=4")) == 0
    other = tmp_path / "other"
    write_dataset(other, n_train=200, n_test=50, seed=1)
    code, error = evaluate(capsys, "--checkpoint", str(out), "--data-dir", str(other))
    assert code == 1 and "are not the data the run trained on" in error and "Traceback" not in error


def test_evaluate_names_an_empty_dev_split_and_a_saved_config_with_keys_missing(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_cli.main(args(data, out, "--set", "train.max_steps=4", "--set", "data.dev_size=0")) == 0
    code, error = evaluate(capsys, "--checkpoint", str(out), "--split", "dev")
    assert code == 1 and "the run kept no dev examples" in error and "Traceback" not in error
    path = out / "checkpoints/step-00000004.npz"
    with np.load(path) as archive:
        arrays = {k: archive[k] for k in archive.files}
    meta = json.loads(arrays["meta"].tobytes())
    del meta["options"]["data"]["dev_size"]     # a default would silently stand in for the run's value
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(path, **arrays)
    code, error = evaluate(capsys, "--checkpoint", str(path))
    assert code == 1 and "its saved config lacks ['data.dev_size']" in error


# -- Data files and the dataset cache ------------------------------------------------------------

def test_an_idx_header_of_absurd_dimensions_is_named_with_the_true_size(tmp_path):
    path = tmp_path / "big-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">3I", 2**31, 2**31, 2**31) + b"\0" * 16)
    with pytest.raises(DataError, match=f"need {2**93} bytes of data, found 16"):
        read_idx(path)


def test_a_bad_label_names_the_users_gz_file_not_the_cached_copy(isolated_data, tmp_path, capsys):
    folder = isolated_data / "d"
    write_dataset(folder, n_train=60, n_test=20, gz=True)
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.full(60, 12, np.uint8))))
    fails(capsys, ["--dist", "serial", "--out", str(tmp_path / "run"), "--set", f"data.dataset=idx:{folder}"],
          f"{folder / 'train-labels-idx1-ubyte.gz'}: label 12 out of range")


def test_a_dataset_cache_that_cannot_be_written_is_named(isolated_data, tmp_path, capsys, monkeypatch):
    folder = isolated_data / "d"
    write_dataset(folder, n_train=60, n_test=20, gz=True)   # .gz files are decompressed into the cache
    (tmp_path / "not-a-folder").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "not-a-folder"))
    fails(capsys, ["--dist", "serial", "--out", str(tmp_path / "run"), "--set", f"data.dataset=idx:{folder}"],
          "cannot write the dataset cache", "set XDG_CACHE_HOME to a writable folder")


# -- Options that cannot work, and the config that is saved ----------------------------------------

def test_more_micro_batches_than_examples_in_a_batch_are_refused(data, tmp_path, capsys):
    fails(capsys, args(data, tmp_path / "run", "--set", "train.micro_batches=17"),
          "train.micro_batches = 17 exceeds global_batch = 16")


def test_the_saved_config_round_trips_any_text(tmp_path):
    config = from_dict({"data": {"dir": 'a "quoted"\nfolder\\x\x7f\tü'}})
    path = tmp_path / "config.toml"
    path.write_text(to_toml(config), encoding="utf-8")
    assert to_dict(load_config(path)) == to_dict(config)


def test_a_new_run_that_fails_at_its_first_step_leaves_its_config(data, tmp_path, capsys):
    out = tmp_path / "run"
    fails(capsys, args(data, out, "--resume", "auto", "--set", "train.global_batch=0"), "train.global_batch")
    assert not (out / "config.toml").exists()          # refused before anything started
    with pytest.warns(RuntimeWarning):
        fails(capsys, args(data, out, "--resume", "auto", "--set", "optim.lr=1e30"), "non-finite loss at step")
    assert load_config(out / "config.toml").optim.lr == 1e30   # the failed run can be read and rerun


def test_init_with_a_resumed_run_says_it_is_not_used(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_cli.main(args(data, out, "--set", "train.max_steps=4")) == 0
    capsys.readouterr()
    assert train_cli.main(args(data, out, "--set", "train.max_steps=6", "--resume", "auto", "--init",
                               str(out / "model.npz"))) == 0
    assert "is not used: the run resumes from its checkpoint" in capsys.readouterr().out


# -- Checkpoint folders and plots ------------------------------------------------------------------

def test_a_folder_named_like_a_checkpoint_is_never_pruned_nor_resumed(data, tmp_path, capsys):
    out = tmp_path / "run"
    (out / "checkpoints/step-00000001.npz").mkdir(parents=True)
    assert train_cli.main(args(data, out, "--set", "train.max_steps=8", "--set", "checkpoint.every_steps=2",
                               "--set", "checkpoint.keep=2")) == 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step-00000001.npz", "step-00000006.npz", "step-00000008.npz"]
    assert (out / "checkpoints/step-00000001.npz").is_dir()
    fails(capsys, args(tmp_path / "d", tmp_path / "other", "--set", "checkpoint.every_steps=1", "--set",
                       "train.max_steps=1", "--resume", str(out / "checkpoints/step-00000001.npz")), "is a folder")


@pytest.mark.parametrize("output,expected", [("plots", "is a folder: give an image file name"),
                                             ("a-file/curves.png", "a-file is a file: give an existing folder")])
def test_plot_output_that_is_a_folder_or_under_a_file(tmp_path, capsys, output, expected):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "epoch": 0, "split": "train", "loss": 1.0}\n')
    (tmp_path / "plots").mkdir()
    (tmp_path / "a-file").write_text("")
    assert plot.main([str(tmp_path), "--output", str(tmp_path / output)]) == 1
    assert expected in capsys.readouterr().err


def test_plot_titles_a_run_whose_config_is_not_ddp_edfs(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "epoch": 0, "split": "train", "loss": 1.0}\n')
    (tmp_path / "config.toml").write_text('data = 3\n[model]\nhidden = 5\n')
    assert plot.main([str(tmp_path), "--output", str(tmp_path / "curves.png")]) == 0
    assert (tmp_path / "curves.png").stat().st_size > 0
