"""One run's output folder (OUT), kept safe: rank 0 locks it for as long as a run uses it, a new run
never starts in a folder that holds one, a metrics line cut by a kill is set aside, checkpoints of
an abandoned branch are moved aside (never deleted), and every failure names the folder and the fix.

What makes a folder hold a run: model.npz, a checkpoint, or a metrics.jsonl with a whole record in
it (config.toml, train.log, or a metrics.jsonl with no complete line, what a run that failed
before training leaves, do not count).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import socket
from pathlib import Path

from ..parallel.data_parallel import root_decides

CHECKPOINT_NAME = re.compile(r"^step-(\d+)\.npz$")


class RunFolderError(RuntimeError):
    """The output folder cannot be used (a file, not creatable, in use, full, holding another run)."""


def checkpoints_in(out_dir) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint in OUT/checkpoints, oldest first (by step, whatever its width)."""
    folder = Path(out_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = ((CHECKPOINT_NAME.match(p.name), p) for p in folder.iterdir())
    return sorted((int(match.group(1)), p) for match, p in found if match and p.is_file())


def what_run(out_dir) -> str | None:
    """What makes OUT hold a run (for the message), or None."""
    out = Path(out_dir)
    if (out / "model.npz").exists():
        return "model.npz"
    if checkpoints_in(out):
        return f"{len(checkpoints_in(out))} checkpoint(s)"
    if (out / "metrics.jsonl").is_file():
        with open(out / "metrics.jsonl", "rb") as metrics:
            if b"\n" in metrics.read(1 << 16):      # one complete record
                return "metrics.jsonl"
    return None


def make_folder(out_dir):
    """Create OUT (and its parents), or a RunFolderError naming why it cannot be."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"output folder {out} is a file: choose another --out / out=")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunFolderError(f"cannot create the output folder {out} ({error.strerror}: {error.filename}): "
                             f"choose another --out / out=") from None


def check_fresh(out_dir):
    """Refuse to start a new run in a folder that already holds one (nothing saved is overwritten)."""
    what = what_run(out_dir)
    if what:
        raise RunFolderError(f"{out_dir} already holds a run ({what}): choose another output folder (--out, out=) "
                             f"so nothing saved there is overwritten, or continue that run (--resume auto, "
                             f"resume=\"auto\")")


def run_of(checkpoint_path) -> Path | None:
    """The run folder a checkpoint file belongs to: the parent of the nearest 'checkpoints' folder above it."""
    for folder in Path(checkpoint_path).resolve().parents:
        if folder.name == "checkpoints":
            return folder.parent
    return None


def check_resume_target(checkpoint_path, out_dir):
    """Resuming writes into the run the checkpoint belongs to, or into a folder holding no run."""
    home = run_of(checkpoint_path)
    if home != Path(out_dir).resolve() and what_run(out_dir):
        owner = f"belongs to the run in {home}" if home else "is not in a run folder's checkpoints/"
        raise RunFolderError(f"{checkpoint_path} {owner}, and {out_dir} holds another run: resume "
                             f"{'into ' + str(home) + ', or ' if home else ''}into a new output folder")


def set_aside_partial_line(path) -> str | None:
    """A last line without its newline (a kill mid-write) moves to PATH.partial; returns what was done."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return None
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return None
    keep = data.rfind(b"\n") + 1
    with open(f"{path}.partial", "ab") as partial:
        partial.write(data[keep:] + b"\n")
    os.truncate(path, keep)
    return f"the last line of {path} was cut short (a killed run): set aside in {path.name}.partial"


def move_newer_aside(out_dir, step: int) -> str | None:
    """Checkpoints newer than ``step`` (an abandoned branch, when a run resumes from an older one) move to
    OUT/checkpoints/abandoned-after-step-N[-k]/, with the metrics records of those steps; returns what was done."""
    newer = [path for s, path in checkpoints_in(out_dir) if s > step]
    if not newer:
        return None
    target, k = Path(out_dir) / "checkpoints" / f"abandoned-after-step-{step}", 1
    while target.exists():
        k += 1
        target = target.with_name(f"abandoned-after-step-{step}-{k}")
    target.mkdir()
    for path in newer:
        path.rename(target / path.name)
    metrics = Path(out_dir) / "metrics.jsonl"
    if metrics.is_file():      # rewritten in place (the run's reporter has it open), the moved records saved first
        lines = metrics.read_bytes().splitlines(keepends=True)
        (target / "metrics.jsonl").write_bytes(b"".join(line for line in lines if record_step(line) > step))
        with open(metrics, "r+b") as handle:
            handle.write(b"".join(line for line in lines if record_step(line) <= step))
            handle.truncate()
    return f"resuming from step {step}: the {len(newer)} newer checkpoint(s) and their metrics moved to {target}"


def record_step(line: bytes) -> int:
    """The step of a metrics line (-1 when it is not a record: such lines stay where they are)."""
    try:
        step = json.loads(line).get("step")
    except (ValueError, AttributeError):
        return -1
    return step if isinstance(step, int) else -1


def disk_error(error: OSError, path) -> RunFolderError:
    """The one-line error for a failed write; a full disk says so (earlier files are intact)."""
    if error.errno == errno.ENOSPC:
        return RunFolderError(f"disk full at {path}: free space there and resume (--resume auto, resume=\"auto\"); "
                              f"the earlier checkpoints are intact")
    return RunFolderError(f"cannot write {path} ({error.strerror})")


class RunFolder:
    """OUT as one run uses it, across ranks: rank 0 checks, locks and repairs it; all ranks agree."""

    def __init__(self, out_dir, comm):
        self.out, self.comm, self.lock, self.depth = out_dir, comm, None, 0

    @contextlib.contextmanager
    def claimed(self, fresh: bool):
        """While inside, rank 0 holds OUT's lock (re-entrant; the kernel drops it if the process dies).
        ``fresh``: OUT must hold no run.  Yields a note for the log (a line set aside), or ""."""
        if not self.out:
            yield ""
            return
        note = root_decides(self.comm, lambda: self._claim(fresh))
        try:
            yield note
        finally:
            if self.comm.is_root:
                self._release()

    def _claim(self, fresh: bool) -> str:
        notes = []
        if self.depth == 0:
            make_folder(self.out)
            notes.append(self._lock())
        self.depth += 1
        try:
            if fresh:
                check_fresh(self.out)
            notes.append(set_aside_partial_line(Path(self.out) / "metrics.jsonl"))
            return "; ".join(filter(None, notes))
        except BaseException:
            self._release()
            raise

    def _lock(self) -> str | None:
        """flock OUT/.lock; the note to log when the file system cannot lock (then two runs are not caught)."""
        try:
            self.lock = open(Path(self.out) / ".lock", "a+")
        except OSError as error:
            raise RunFolderError(f"cannot write the lock file {Path(self.out) / '.lock'} ({error.strerror}): "
                                 f"choose another --out / out=") from None
        try:
            fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                return f"warning: {self.out} cannot be locked here ({error.strerror}): a second run on it is not refused"
            self.lock.seek(0)
            holder = self.lock.read().strip() or "another process"
            self.lock.close()
            raise RunFolderError(f"{self.out} is in use by another run ({holder}): wait for it to end, "
                                 f"or choose another output folder") from None
        self.lock.truncate(0)
        self.lock.write(f"process {os.getpid()} on {socket.gethostname()}\n")
        self.lock.flush()
        return None

    def _release(self):
        self.depth -= 1
        if self.depth == 0:
            self.lock.close()
