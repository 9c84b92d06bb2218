"""How a training run ends other than by finishing: an error that names its cause, or preemption."""

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


MINIMUM = {"global_batch": 1, "micro_batches": 1, "eval_batch": 1, "keep_checkpoints": 1, "seed": -1, "epochs": 1,
           "checkpoint_every": 0, "log_every": 0, "eval_every": 0, "check_every": 0, "max_steps": 0}


def check_options(**options):
    """Refuse a Trainer (or fit) option of the wrong type or out of range, naming it, before any work."""
    for name, value in options.items():
        if name in MINIMUM and (not isinstance(value, int) or isinstance(value, bool) or value < MINIMUM[name]):
            raise ValueError(f"option {name} = {value!r} must be an integer >= {MINIMUM[name]}")
    if "timeout_s" in options and not (isinstance(options["timeout_s"], (int, float)) and options["timeout_s"] >= 0):
        raise ValueError(f"option timeout_s = {options['timeout_s']!r} must be a number of seconds >= 0 (0 = off)")
    if "nonfinite" in options and options["nonfinite"] not in ("stop", "skip"):
        raise ValueError(f"option nonfinite = {options['nonfinite']!r} must be 'stop' or 'skip'")
