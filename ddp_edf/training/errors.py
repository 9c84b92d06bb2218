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
