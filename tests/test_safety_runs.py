"""Hostile use of the command line, part 1: the main job runs offline, nothing saved is ever lost,
nothing is silently wrong."""

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
from ddp_edf.parallel.watchdog import Watchdog
from ddp_edf.training.run_folder import latest_checkpoint
from run_helpers import args, data, fails, files, params, tiny_checkpoint  # noqa: F401  (data is a fixture)

ROOT = Path(__file__).resolve().parents[1]


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
    assert "2 newer checkpoint(s) and 5 metrics record(s) past it moved to" in capsys.readouterr().out
    moved = out / "checkpoints/abandoned-after-step-8"
    assert {p.name: p.read_bytes() for p in moved.glob("*.npz")} == {k: abandoned[k] for k in
                                                                     ("step-00000010.npz", "step-00000012.npz")}
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 10 and 12 not in steps                    # the abandoned branch's records moved too
    assert {json.loads(line)["step"] for line in (moved / "metrics.jsonl").read_text().splitlines()} == {10, 12}
    newest = latest_checkpoint(out)
    assert newest["meta"]["step"] == 10 and newest["meta"]["options"]["optim"]["lr"] == 0.01
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
    (out / "metrics.jsonl").write_text('{"step": 1, "spl')  # a run killed in its first report leaves no record
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


def test_checkpoints_are_ordered_by_step_whatever_the_width(tmp_path):
    from ddp_edf.parallel.comm import SerialComm
    from ddp_edf.training.run_folder import RunFolder
    for step in (99_999_998, 99_999_999, 100_000_000):
        tiny_checkpoint(tmp_path, step, value=step)
        RunFolder(tmp_path, SerialComm()).prune(keep=2)
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
          "optim.min_lr = 0.5 exceeds lr = 0.1: a cosine schedule would climb")


def test_a_seed_given_with_resume_is_reported_unused(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_cli.main(args(data, out, "--set", "train.max_steps=5")) == 0
    assert train_cli.main(args(data, out, "--resume", "auto", "--set", "train.seed=5")) == 0
    assert "seed 5 not used: the checkpoint's seed 3 continues its data order" in capsys.readouterr().out


def test_an_absurd_watchdog_timeout_is_refused_and_a_watchdog_that_fired_fails_the_run(data, tmp_path, capsys):
    fails(capsys, args(data, tmp_path / "run", "--set", "dist.timeout_s=0.001"), "dist.timeout_s = 0.001")

    aborted = []
    watchdog = Watchdog(3, aborted.append, timeout_s=1, poll_s=0.05, grace_s=0)
    with watchdog.waiting("Allreduce"):
        time.sleep(1.3)                   # the job would end here: abort() is called with exit code 1
    assert aborted == [1]
    assert "[rank 3] ddp_edf: error: watchdog: waited 1 s in Allreduce (" in capsys.readouterr().err


def test_resume_paths_are_checked_before_they_are_trusted(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_cli.main(args(data, out, "--set", "checkpoint.every_steps=5", "--set", "train.max_steps=15")) == 0
    fails(capsys, args(data, out, "--resume", str(out)), "is a folder", f"--resume auto --out {out}")
    fails(capsys, args(data, out, "--resume", str(tmp_path / "typo.npz")), "typo.npz not found")
    loose = tmp_path / "loose.npz"                    # a checkpoint copied out of its run folder
    loose.write_bytes((out / "checkpoints/step-00000010.npz").read_bytes())
    fails(capsys, args(data, out, "--resume", str(loose)), "is not in a run folder's checkpoints/")
    assert train_cli.main(args(data, out, "--resume", str(out / "checkpoints/step-00000005.npz"))) == 0
    back = out / "checkpoints/abandoned-after-step-5/step-00000015.npz"   # going back to the abandoned branch
    assert train_cli.main(args(data, out, "--resume", str(back), "--set", "train.max_steps=20")) == 0
    assert latest_checkpoint(out)["meta"]["step"] == 20


def test_the_dev_split_is_recorded_as_resolved(data, tmp_path):
    """A dev_size of -1 (the dataset's own) and the number it stands for are one split: a resume takes either."""
    out = tmp_path / "run"
    assert train_cli.main(args(data, out, "--set", "data.dev_size=-1", "--set", "train.max_steps=4")) == 0
    assert train_cli.main(args(data, out, "--resume", "auto", "--set", "data.dev_size=33")) == 0   # 200 // 6


def test_a_file_system_without_locks_is_said_and_the_run_goes_on(data, tmp_path, capsys, monkeypatch):
    import errno
    import fcntl

    def no_locks(handle, operation):
        raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(fcntl, "flock", no_locks)
    assert train_cli.main(args(data, tmp_path / "run", "--set", "train.max_steps=2")) == 0
    assert "cannot be locked here (No locks available): a second run is not refused" in capsys.readouterr().out
