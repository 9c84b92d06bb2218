"""How a training run ends other than by finishing: an error that names its cause, or preemption;
and the checks that refuse bad options before any work."""

import numpy as np

EXIT_PREEMPTED = 75   # EX_TEMPFAIL: "try again" (continue with resume="auto")


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message says why and what to try."""


class Preempted(SystemExit):
    """SIGTERM/SIGUSR1 arrived: every rank finished its step and a checkpoint was written.
    A SystemExit with code 75, so an uncaught one ends the script on every rank alike."""

    def __init__(self, message: str):
        super().__init__(EXIT_PREEMPTED)
        self.message = message

    def __str__(self):
        return self.message


MINIMUM = {"global_batch": 1, "micro_batches": 1, "chunk": 1, "eval_batch": 1, "keep_checkpoints": 1, "seed": -1, "epochs": 1,
           "checkpoint_every": 0, "log_every": 0, "eval_every": 0, "check_every": 0, "max_steps": 0}


def check_options(**options):
    """Refuse a Trainer (or fit) option of the wrong type or out of range, naming it, before any work."""
    for name, value in options.items():
        if name in MINIMUM and (not isinstance(value, int) or isinstance(value, bool) or value < MINIMUM[name]):
            raise ValueError(f"option {name} = {value!r} must be an integer >= {MINIMUM[name]}")
    if options.get("micro_batches", 1) > options.get("global_batch", options.get("micro_batches", 1)):
        raise ValueError(f"option micro_batches = {options['micro_batches']} exceeds global_batch = "
                         f"{options['global_batch']}: a micro-batch needs an example")
    timeout = options.get("timeout_s", 0)
    if not (isinstance(timeout, (int, float)) and (timeout == 0 or timeout >= 1)):
        raise ValueError(f"option timeout_s = {timeout!r} must be 0 (off) or at least 1 second")
    if options.get("nonfinite", "stop") not in ("stop", "skip"):
        raise ValueError(f"option nonfinite = {options['nonfinite']!r} must be 'stop' or 'skip'")
    if not 0 <= options.get("max_skipped", 0) < 1:
        raise ValueError(f"option max_skipped = {options['max_skipped']!r} must be a fraction in [0, 1)")
    schedule, lr = options.get("schedule", (None, 0))
    if schedule is not None and schedule.kind == "cosine" and schedule.min_lr > lr:
        raise ValueError(f"a cosine schedule from lr = {lr} down to min_lr = {schedule.min_lr} would climb: "
                         f"give min_lr <= lr")


def check_skipped(skipped: int, steps: int, limit: float, final: bool, params=None):
    """Fail a run that skipped more than ``limit`` of its steps for a non-finite loss (judged from the
    10th step on, and at the end), or that ends with non-finite parameters."""
    if skipped > limit * steps and (final or steps >= 10):
        raise TrainingError(f"{skipped} of {steps} steps had a non-finite loss and were skipped (more than "
                            f"{limit:.0%}): lower the learning rate or add warm-up steps")
    if params is not None and not np.all(np.isfinite(params)):
        raise TrainingError(f"the parameters are not finite at step {steps} (not saved; the earlier checkpoints "
                            f"are): lower the learning rate or add warm-up steps")
