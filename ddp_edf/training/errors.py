"""How a training run ends other than by finishing: an error that names its cause and its fix, or
preemption (exit code 75, continue with resume="auto")."""

import errno

import numpy as np

EXIT_PREEMPTED = 75   # EX_TEMPFAIL: "try again"


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message says why and what to try."""


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or belongs to another model, optimizer or run."""


class RunFolderError(RuntimeError):
    """The output folder cannot be used (a file, not creatable, in use, full, holding another run)."""


class Preempted(SystemExit):
    """SIGTERM/SIGUSR1 arrived: every rank finished its step and a checkpoint was written.
    A SystemExit with code 75, so an uncaught one ends the script on every rank alike."""

    def __init__(self, message: str):
        super().__init__(EXIT_PREEMPTED)
        self.message = message

    def __str__(self):
        return self.message


def disk_error(error: OSError, path) -> RunFolderError:
    """The one-line error for a failed write; a full disk says so and what then works."""
    if error.errno == errno.ENOSPC:
        return RunFolderError(f"disk full at {path}: free space there and rerun with --resume auto (resume=\"auto\"): "
                              f"it continues from the newest checkpoint, which is intact, or starts afresh without one")
    return RunFolderError(f"cannot write {path} ({error.strerror})")


def check_skipped(skipped: int, steps: int, limit: float, final: bool, params=None):
    """Fail a run that skipped more than ``limit`` of its steps for a non-finite loss (judged from the
    10th step on, and at the end), or that ends with non-finite parameters."""
    if skipped > limit * steps and (final or steps >= 10):
        raise TrainingError(f"{skipped} of {steps} steps had a non-finite loss and were skipped (more than "
                            f"{limit:.0%}): lower the learning rate or add warm-up steps")
    if params is not None and not np.all(np.isfinite(params)):
        raise TrainingError(f"the parameters are not finite at step {steps} (not saved; the earlier checkpoints "
                            f"are): lower the learning rate or add warm-up steps")
