"""The Trainer's options, grouped as the config's sections ([train], [eval], [log], [dist],
[checkpoint]), each group checked when it is made; ``help`` in each field's metadata is its meaning
(the command line's --help lists them).

    Trainer(..., options=Options(train=TrainOptions(global_batch=100, seed=1), dist=DistOptions(deterministic=True)))
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..errors import check_integer, check_option


def option(default, help: str):
    """A field with its default and its meaning."""
    return field(default=default, metadata={"help": help})


def _integers_at_least(owner, minimum: dict):
    for name, least in minimum.items():
        check_integer(type(owner).__name__, name, getattr(owner, name), least)


@dataclass
class TrainOptions:
    global_batch: int = option(128, "examples per step, summed over all ranks")
    epochs: int = option(10, "passes over the training set")
    max_steps: int = option(0, "stop after this many steps (0 = no cap)")
    seed: int = option(-1, "data-order seed; -1 = draw one (logged, so the run can be repeated)")
    drop_last: bool = option(False, "drop the short last batch of each epoch")
    micro_batches: int = option(1, "split each rank's shard into this many micro-batches whose gradients add up")

    def __post_init__(self):
        _integers_at_least(self, {"global_batch": 1, "epochs": 1, "max_steps": 0, "seed": -1, "micro_batches": 1})
        check_option("TrainOptions", "micro_batches", self.micro_batches, self.micro_batches <= self.global_batch,
                     f"exceeds global_batch = {self.global_batch}: a micro-batch needs an example")


@dataclass
class EvalOptions:
    every: int = option(0, "evaluate dev every N steps (0 = at the end of every epoch)")
    batch: int = option(1000, "examples per evaluation forward pass")

    def __post_init__(self):
        _integers_at_least(self, {"every": 0, "batch": 1})


@dataclass
class LogOptions:
    every: int = option(100, "steps between training-loss log lines")
    echo: bool = option(True, "print the log lines on the console too (rank 0)")

    def __post_init__(self):
        _integers_at_least(self, {"every": 1})


@dataclass
class DistOptions:
    check_every: int = option(1000, "steps between parameter checksums across ranks (0 = only at the end)")
    nonfinite: str = option("stop", "a non-finite loss: stop | skip (the step, on every rank)")
    max_skipped: float = option(0.1, "skip: fail when more than this fraction of the steps was skipped")
    deterministic: bool = option(False, "the same bits on any number of ranks (exact sums of fixed chunks)")
    chunk: int = option(32, "deterministic: examples per fixed chunk of a global batch")

    def __post_init__(self):
        _integers_at_least(self, {"check_every": 0, "chunk": 1})
        check_option("DistOptions", "nonfinite", self.nonfinite, self.nonfinite in ("stop", "skip"),
                     "is not one of ['stop', 'skip']")
        check_option("DistOptions", "max_skipped", self.max_skipped, isinstance(self.max_skipped, (int, float))
                     and 0 <= self.max_skipped < 1, "must be a fraction in [0, 1)")


@dataclass
class CheckpointOptions:
    every_steps: int = option(0, "write OUT/checkpoints/step-N.npz every N steps (0 = only at the end)")
    keep: int = option(3, "how many of the newest checkpoints to keep")

    def __post_init__(self):
        _integers_at_least(self, {"every_steps": 0, "keep": 1})


@dataclass
class Options:
    train: TrainOptions = field(default_factory=TrainOptions)
    eval: EvalOptions = field(default_factory=EvalOptions)
    log: LogOptions = field(default_factory=LogOptions)
    dist: DistOptions = field(default_factory=DistOptions)
    checkpoint: CheckpointOptions = field(default_factory=CheckpointOptions)

    def flat(self) -> dict:
        """{"train.global_batch": 128, ...}: every option by its config key."""
        return {f"{section}.{key}": value for section, values in asdict(self).items() for key, value in values.items()}

    def __post_init__(self):
        check_option("Options", "train.micro_batches", self.train.micro_batches, self.train.micro_batches == 1 or
                     not self.dist.deterministic, "is not used with dist.deterministic = true (its fixed chunks are "
                     "its micro-batches): drop it")
