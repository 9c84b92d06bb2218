"""Hostile use of the command line, part 4: kills, full disks, finished runs, odd output folders.  A run that is
refused changes nothing; a resumed run reports every step once; the advice an error gives works."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ddp_edf import train as train_cli
from run_helpers import args, data, fails, files, needs_root_for_tmpfs, small_disk  # noqa: F401  (data: a fixture)

ROOT = Path(__file__).resolve().parents[1]


def records(out):
    """The whole records of OUT/metrics.jsonl (a line cut short, by a kill or a full disk, left out)."""
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines(keepends=True)
            if line.endswith("\n")]


def test_a_run_killed_between_checkpoints_resumes_with_every_record_once(data, tmp_path):
    """SIGKILL after step 55 (checkpoints every 25, records every 5): the resumed run starts at 50, and the
    killed run's record of step 55 is set aside, so step 55 is reported once."""
    out = tmp_path / "run"
    run = args(data, out, "--set", "checkpoint.every_steps=25", "--set", "log.every=5", "--set", "train.epochs=10")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    killed = subprocess.run([sys.executable, "tests/fault_injection.py", "kill", "0", "55", "--", *run], cwd=ROOT,
                            env=env, capture_output=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL and max(r["step"] for r in records(out)) == 55
    subprocess.run([sys.executable, "-m", "ddp_edf.train", *run, "--resume", "auto", "--set", "train.max_steps=70"],
                   cwd=ROOT, env=env, check=True, capture_output=True, timeout=120)
    keys = [(r["step"], r["split"]) for r in records(out)]
    assert len(keys) == len(set(keys)) and (55, "train") in keys and max(keys)[0] == 70
    moved = out / "checkpoints/abandoned-after-step-50/metrics.jsonl"
    assert [(r["step"], r["split"]) for r in map(json.loads, moved.read_text().splitlines())] == [(55, "train")]


def test_resuming_a_finished_run_says_so_and_writes_nothing(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_cli.main(args(data, out)) == 0
    before = files(out)
    capsys.readouterr()
    assert train_cli.main(args(data, out, "--resume", "auto")) == 0
    assert "already finished at step 30, nothing to do" in capsys.readouterr().out
    assert files(out) == before


@pytest.mark.parametrize("out", ["link", "link/run"])
def test_an_output_folder_through_a_dangling_link_is_named_with_its_target(data, tmp_path, capsys, out):
    (tmp_path / "link").symlink_to(tmp_path / "gone" / "run")
    fails(capsys, args(data, tmp_path / out), f"{tmp_path / 'link'} (in the output folder {tmp_path / out}) is a "
                                              f"symbolic link to {tmp_path / 'gone' / 'run'}, which does not exist")


def test_resume_auto_refuses_a_run_whose_checkpoints_cannot_be_resumed_rather_than_start_over_it(data, tmp_path,
                                                                                                   capsys):
    out = tmp_path / "run"
    assert train_cli.main(args(data, out, "--set", "train.max_steps=4")) == 0
    (out / "model.npz").unlink()
    (out / "checkpoints" / "step-00000004.npz").write_bytes(b"not a checkpoint")   # e.g. another release's
    before = files(out)
    fails(capsys, args(data, out, "--resume", "auto"), "holds a run (1 checkpoint(s)) but no checkpoint that can be "
                                                       "resumed")
    assert files(out) == before


def test_the_temporary_files_of_a_killed_writer_are_removed_by_the_next_run(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_cli.main(args(data, out, "--set", "train.max_steps=4")) == 0
    stale = [out / "checkpoints" / ".step-00000006.npz.tmp-4242", out / ".model.npz.tmp-77"]
    for path in stale:
        path.write_bytes(b"\0" * 1000)
    (out / "checkpoints" / "notes.tmp-1").write_text("mine")         # not a name the writer uses: kept
    assert train_cli.main(args(data, out, "--resume", "auto", "--set", "train.max_steps=6")) == 0
    assert not any(path.exists() for path in stale) and (out / "checkpoints" / "notes.tmp-1").exists()
    assert "removed 2 temporary file(s) a killed run left" in capsys.readouterr().out


def test_a_refused_resume_changes_nothing(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_cli.main(args(data, out, "--set", "train.max_steps=4")) == 0
    with open(out / "metrics.jsonl", "a") as metrics:
        metrics.write('{"step": 5, "spl')                            # a line cut by a kill
    (out / "checkpoints" / ".step-00000006.npz.tmp-4242").write_bytes(b"\0")
    before = files(out)
    fails(capsys, args(data, out, "--resume", "auto", "--set", "model.hidden=[9]"), "is of another model")
    assert files(out) == before and not (out / "metrics.jsonl.partial").exists()


@needs_root_for_tmpfs
def test_a_disk_that_fills_with_metrics_before_any_checkpoint_can_be_resumed_as_the_error_says(data, tmp_path, capsys):
    with small_disk(tmp_path / "run", "96k") as out:
        (out / "filler").write_bytes(b"\0" * 64_000)
        error = fails(capsys, args(data, out, "--set", "log.every=1", "--set", "train.epochs=50"), "disk full at")
        assert "free space there and rerun with --resume auto" in error and not list(out.glob("checkpoints/*.npz"))
        kept = records(out)
        assert kept and not (out / "model.npz").exists()
        (out / "filler").unlink()                                      # free space, as the error says
        assert train_cli.main(args(data, out, "--resume", "auto", "--set", "log.every=1", "--set", "train.max_steps=3")) == 0
        assert "no checkpoint to resume from: a fresh start" in capsys.readouterr().out
        assert [r["step"] for r in records(out) if r["split"] == "train"] == [1, 2, 3]
        moved = out / "checkpoints/abandoned-after-step-0/metrics.jsonl"
        assert [json.loads(line) for line in moved.read_text().splitlines()] == kept   # set aside, not lost
