"""One run's output folder (OUT), kept safe.  Its layout:

    OUT/config.toml  train.log  metrics.jsonl  model.npz  .lock
    OUT/checkpoints/step-NNNNNNNN.npz                  the newest ``keep``
    OUT/checkpoints/abandoned-after-step-N[-k]/        checkpoints and metrics records past a resumed step

Rank 0 locks OUT for as long as a run uses it; a new run never starts in a folder that holds one
(model.npz, a checkpoint, or a metrics.jsonl with a whole record).  A run that resumes decides first
and repairs after: every check that can refuse it (which checkpoint, does it fit) changes nothing on
disk; only then are a metrics line cut by a kill, the records and checkpoints past the resumed step,
and the temporary files of a killed writer set aside or removed.  Every failure names the folder and
the fix.  Every method is collective: rank 0 acts, every rank learns the outcome.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import socket
import sys
from pathlib import Path

from ..data.atomic import TEMPORARY
from ..parallel.agreement import root_decides
from .checkpoint import check_meta, read_checkpoint
from .errors import CheckpointError, RunFolderError, disk_error

CHECKPOINT_NAME = re.compile(r"^step-(\d+)\.npz$")
# What a Trainer's checkpoint holds beside the graph's: {key: (type, least value)}
RUN_META = {"step": (int, 0), "seed": (int, 0), "world_size": (int, 1), "skipped_steps": (int, 0), "run": (dict, None),
            "interval": (list, None)}
RUN_FACTS = ("step", "seed", "skipped_steps", "interval")     # what a resumed Trainer takes from its checkpoint


def checkpoints_in(out_dir) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint in OUT/checkpoints, oldest first (by step, whatever its width)."""
    folder = Path(out_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = ((CHECKPOINT_NAME.match(p.name), p) for p in folder.iterdir())
    return sorted((int(match.group(1)), p) for match, p in found if match and p.is_file())


def records(out_dir) -> list[bytes]:
    """The lines of OUT/metrics.jsonl ([] without one)."""
    path = Path(out_dir) / "metrics.jsonl"
    return path.read_bytes().splitlines(keepends=True) if path.is_file() else []


def record_step(line: bytes) -> int:
    """The step of a metrics line (-1 when it is not a whole record: such lines stay where they are)."""
    try:
        step = json.loads(line).get("step")
    except (ValueError, AttributeError):
        return -1
    return step if isinstance(step, int) and line.endswith(b"\n") else -1


def is_past(line: bytes, step: int, finished: bool) -> bool:
    """Was the record written after the checkpoint of ``step``: a later step, or, unless that checkpoint is
    marked finished, the test figures at that step (a run killed while it finished writes them again)."""
    return record_step(line) > step or (not finished and record_step(line) == step and b'"split": "test"' in line)


def what_run(out_dir) -> str | None:
    """What makes OUT hold a run (for the message), or None."""
    if (Path(out_dir) / "model.npz").exists():
        return "model.npz"
    if checkpoints_in(out_dir):
        return f"{len(checkpoints_in(out_dir))} checkpoint(s)"
    if any(record_step(line) >= 0 for line in records(out_dir)):
        return "metrics.jsonl"
    return None


def latest_checkpoint(out_dir, warn=None, usable=lambda checkpoint: None):
    """The newest checkpoint in OUT that reads and that ``usable`` (raising CheckpointError) accepts;
    broken ones are skipped with a warning naming them."""
    for _, path in reversed(checkpoints_in(out_dir)):
        try:
            checkpoint = read_checkpoint(path)
            usable(checkpoint)
            return checkpoint
        except CheckpointError as error:
            (warn or (lambda message: print(message, file=sys.stderr)))(f"warning: skipping {error}")
    return None


def run_of(checkpoint_path) -> Path | None:
    """The run folder a checkpoint file belongs to: the parent of the nearest 'checkpoints' folder above it."""
    for folder in Path(checkpoint_path).resolve().parents:
        if folder.name == "checkpoints":
            return folder.parent
    return None


class RunFolder:
    """OUT as one run uses it, across ranks; ``out=None``: nothing is written, and "auto" finds nothing."""

    def __init__(self, out_dir, comm):
        self.out, self.comm, self.lock, self.depth, self.note = out_dir, comm, None, 0, ""

    @contextlib.contextmanager
    def claimed(self):
        """While inside, rank 0 holds OUT's lock (re-entrant; the kernel drops it if the process dies).
        Yields a note for the log (a file system that cannot lock), or ""."""
        if not self.out:
            yield ""
            return
        note = root_decides(self.comm, self._claim)
        try:
            yield note
        finally:
            if self.comm.is_root:
                self._release()

    def check_fresh(self):
        """Refuse to start a new run in a folder that already holds one (nothing saved is overwritten)."""
        def check():
            if what_run(self.out):
                raise RunFolderError(f"{self.out} already holds a run ({what_run(self.out)}): choose another output "
                                     f"folder (--out, out=) so nothing saved there is overwritten, or continue that "
                                     f"run (--resume auto, resume=\"auto\")")
        if self.out:
            root_decides(self.comm, check)

    def start(self, resume, init, dp, optimizer, run: dict, step: int, until: int, seed: int):
        """Where a run starts: afresh (from ``init``'s parameters, if given), or at the checkpoint ``resume``
        names, loaded into ``dp`` and ``optimizer`` on every rank if it fits them and was made with the same
        ``run`` facts (batch, data); a ``seed`` given (>= 0) other than the checkpoint's is noted unused.
        Nothing on disk changes before that is decided; then the folder is
        repaired for the run, unless it had finished (``until``).  Returns notes for the log and the meta."""
        warnings, path = [self.note], None
        if resume:
            path = self.resume_point(resume, warnings.append, lambda c: check_meta(c["meta"], c["path"], RUN_META))
        elif step == 0:
            self.check_fresh()
        if path is None:
            if init and step == 0:
                dp.load_parameters(init)
            return [*warnings, "no checkpoint to resume from: a fresh start" if resume else "",
                    f"parameters from {init}" if init else "", self.repair(step)], None
        def same_run(meta):
            for key, value in run.items():
                if meta["run"].get(key) != value:
                    raise CheckpointError(f"checkpoint {path} was made with {key} = {meta['run'].get(key)!r}, this run "
                                          f"has {value!r}: resume with the same value, or start a new run elsewhere")
        meta = dp.load(path, optimizer, check=same_run)          # DDP: rank 0 reads and checks; every rank loads
        finished = meta["step"] >= until and meta.get("finished", False)
        notes = [*warnings, f"resumed from {path} at step {meta['step']} (saved by {meta['world_size']} ranks)",
                 f"--init {init} is not used: the run resumes from its checkpoint" if init else "",
                 f"seed {seed} not used: the checkpoint's seed {meta['seed']} continues its data order"
                 if seed >= 0 and seed != meta["seed"] else ""]
        repair = [] if finished else [self.repair(meta["step"], meta.get("finished", False))]
        return notes + repair, {**meta, "finished": finished}

    def resume_point(self, resume: str, warn, usable) -> str | None:
        """The checkpoint ``resume`` names: "auto" is the newest one in OUT that reads and is ``usable`` (None if
        there is none and OUT holds no run worth keeping), else a path, which must belong to OUT's run or OUT
        hold none."""
        def choose():
            if resume != "auto":
                usable(read_checkpoint(resume))          # a path that is not a checkpoint is named as such first
                home = run_of(resume)
                if self.out and home != Path(self.out).resolve() and what_run(self.out):
                    owner = f"belongs to the run in {home}" if home else "is not in a run folder's checkpoints/"
                    raise RunFolderError(f"{resume} {owner}, and {self.out} holds another run: resume "
                                         f"{'into ' + str(home) + ', or ' if home else ''}into a new output folder")
                return str(resume)
            checkpoint = latest_checkpoint(self.out, warn, usable) if self.out else None
            if checkpoint is None and self.out and what_run(self.out) not in (None, "metrics.jsonl"):
                raise RunFolderError(f"{self.out} holds a run ({what_run(self.out)}) but no checkpoint that can be "
                                     f"resumed (see the warnings): starting afresh there would overwrite it; choose "
                                     f"another output folder")
            return checkpoint and checkpoint["path"]
        return root_decides(self.comm, choose)

    def repair(self, step: int, finished: bool = False) -> str:
        """Once a run is accepted to continue from ``step`` (0: a fresh start): a metrics line cut by a kill
        moves to metrics.jsonl.partial; checkpoints and metrics records past ``step`` move to
        checkpoints/abandoned-after-step-N/ (never deleted); temporary files of a killed writer are removed."""
        def repair():
            try:
                return "; ".join(filter(None, (self._set_aside_partial_line(), self._move_past_aside(step, finished),
                                               self._remove_temporaries())))
            except OSError as error:
                raise disk_error(error, self.out) from None
        return root_decides(self.comm, repair) if self.out else ""

    def checkpoint_path(self, step: int) -> Path | None:
        return Path(self.out) / "checkpoints" / f"step-{step:08d}.npz" if self.out else None

    def prune(self, keep: int):
        """Rank 0 removes all but the newest ``keep`` checkpoints (one left behind only takes space)."""
        for _, old in (checkpoints_in(self.out)[:-keep] if self.out and self.comm.is_root else []):
            try:
                old.unlink()
            except OSError as error:
                print(f"warning: cannot remove the old checkpoint {old} ({error.strerror})", file=sys.stderr)

    # -- rank 0's work ----------------------------------------------------------------------------

    def _claim(self) -> str:
        if self.depth == 0:
            out = Path(self.out)
            for link in (p for p in (out, *out.parents) if p.is_symlink() and not p.exists()):
                raise RunFolderError(f"{link} (in the output folder {out}) is a symbolic link to {os.readlink(link)}, "
                                     f"which does not exist: create that folder, or choose another --out / out=")
            if out.exists() and not out.is_dir():
                raise RunFolderError(f"output folder {out} is a file: choose another --out / out=")
            try:
                out.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise RunFolderError(f"cannot create the output folder {out} ({error.strerror}: {error.filename}): "
                                     f"choose another --out / out=") from None
            self.note = self._lock()
        self.depth += 1
        return self.note

    def _lock(self) -> str:
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
                return f"warning: {self.out} cannot be locked here ({error.strerror}): a second run is not refused"
            self.lock.seek(0)
            holder = self.lock.read().strip() or "another process"
            self.lock.close()
            raise RunFolderError(f"{self.out} is in use by another run ({holder}): wait for it to end, "
                                 f"or choose another output folder") from None
        self.lock.truncate(0)
        self.lock.write(f"process {os.getpid()} on {socket.gethostname()}\n")
        self.lock.flush()
        return ""

    def _release(self):
        self.depth -= 1
        if self.depth == 0:
            self.lock.close()

    def _set_aside_partial_line(self) -> str | None:
        path = Path(self.out) / "metrics.jsonl"
        data = path.read_bytes() if path.is_file() else b""
        if not data or data.endswith(b"\n"):
            return None
        keep = data.rfind(b"\n") + 1
        with open(f"{path}.partial", "ab") as partial:
            partial.write(data[keep:] + b"\n")
        os.truncate(path, keep)
        return f"the last line of {path} was cut short (a killed run): set aside in {path.name}.partial"

    def _move_past_aside(self, step: int, finished: bool) -> str | None:
        newer = [path for s, path in checkpoints_in(self.out) if s > step]
        lines = records(self.out)
        past = [line for line in lines if is_past(line, step, finished)]
        if not newer and not past:
            return None
        target, k = Path(self.out) / "checkpoints" / f"abandoned-after-step-{step}", 1
        while target.exists():
            k += 1
            target = target.with_name(f"abandoned-after-step-{step}-{k}")
        target.mkdir(parents=True)
        if past:      # the moved records are saved first; metrics.jsonl is then rewritten in place
            try:
                (target / "metrics.jsonl").write_bytes(b"".join(past))
            except OSError:
                shutil.rmtree(target)                 # nothing moved yet: leave nothing behind
                raise
            with open(Path(self.out) / "metrics.jsonl", "r+b") as handle:
                handle.write(b"".join(line for line in lines if not is_past(line, step, finished)))
                handle.truncate()
        for path in newer:
            path.rename(target / path.name)
        return (f"resuming from step {step}: {len(newer)} newer checkpoint(s) and {len(past)} metrics record(s) "
                f"past it moved to {target}")

    def _remove_temporaries(self) -> str | None:
        stale = [p for folder in (Path(self.out), Path(self.out) / "checkpoints") if folder.is_dir()
                 for p in folder.iterdir() if TEMPORARY.match(p.name) and p.is_file()]
        for path in stale:
            path.unlink(missing_ok=True)
        return f"removed {len(stale)} temporary file(s) a killed run left: {[p.name for p in stale]}" if stale else None
