"""The command line's typed configuration: dataclasses whose defaults are configs/digits_mlp.toml.

A TOML file overrides some keys, ``--set section.key=value`` overrides more; anything unknown,
mistyped or out of range is a ConfigError naming the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import json
import math
import sys
import typing
from dataclasses import dataclass, field

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ConfigError(ValueError):
    """A config file, key or value is wrong; the message says which and what is allowed."""


@dataclass
class DataConfig:
    dataset: str = "digits"       # digits (built in) | mnist | fashion-mnist | idx:<folder with the four IDX files>
    dir: str = ""                 # the folder holding the dataset's files (mnist, fashion-mnist; else searched)
    download: bool = True         # fetch mnist / fashion-mnist into the cache when not found
    dev_size: int = -1            # dev = the last N training images (-1: 300 digits, 10000 (fashion-)mnist, 1/6 idx:)
    train_limit: int = 0          # keep only the first N training examples (0 = all)


@dataclass
class ModelConfig:
    kind: str = "mlp"             # logreg | mlp | lecture_mlp
    hidden: list = field(default_factory=lambda: [256])   # hidden widths (mlp; lecture_mlp takes one)
    activation: str = "relu"      # relu | sigmoid | tanh (mlp)
    init_seed: int = 0            # seed of the parameter initialisation


@dataclass
class OptimConfig:
    name: str = "sgd"             # sgd | adam
    lr: float = 0.1               # base learning rate eta
    momentum: float = 0.9         # sgd momentum mu (0 = the lecture's plain SGD)
    nesterov: bool = False        # sgd: Nesterov momentum
    weight_decay: float = 0.0     # L2 coefficient added to the gradient
    schedule: str = "constant"    # constant | step | cosine
    warmup_steps: int = 0         # linear warm-up steps (Goyal et al. 2017)
    step_size: int = 0            # step schedule: decay every step_size steps
    gamma: float = 0.1            # step schedule: decay factor
    min_lr: float = 0.0           # cosine schedule: final learning rate
    beta1: float = 0.9            # adam
    beta2: float = 0.999          # adam
    eps: float = 1e-8             # adam


@dataclass
class TrainConfig:
    global_batch: int = 128       # examples per step, summed over all ranks
    epochs: int = 10              # passes over the training set
    max_steps: int = 0            # stop after this many steps (0 = no cap)
    seed: int = -1                # data-order seed; -1 = draw one (logged, so the run can be repeated)
    drop_last: bool = False       # drop the short last batch of each epoch
    micro_batches: int = 1        # split each rank's shard into this many accumulated micro-batches (<= the batch)


@dataclass
class EvalConfig:
    every: int = 0                # evaluate dev every N steps (0 = at the end of every epoch)
    batch: int = 1000             # examples per evaluation forward pass, per rank


@dataclass
class LogConfig:
    every: int = 100              # steps between training-loss log lines


@dataclass
class DistConfig:
    check_every: int = 1000       # steps between parameter checksums across ranks (0 = only at the end)
    timeout_s: float = 300.0      # watchdog (several ranks): abort when a rank waits this long (0 = off)
    nonfinite: str = "stop"       # non-finite loss: stop | skip (the step, on every rank)
    max_skipped: float = 0.1      # skip: fail when more than this fraction of the steps was skipped
    deterministic: bool = False   # the same bits on any number of ranks (exact sums of fixed chunks)
    chunk: int = 32               # deterministic: examples per fixed chunk of a global batch


@dataclass
class CheckpointConfig:
    every_steps: int = 0          # write OUT/checkpoints/step-N.npz every N steps (0 = only at the end)
    keep: int = 3                 # how many of the newest checkpoints to keep


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)


CHOICES = {
    "model.kind": ("logreg", "mlp", "lecture_mlp"),
    "model.activation": ("relu", "sigmoid", "tanh"),
    "optim.name": ("sgd", "adam"),
    "optim.schedule": ("constant", "step", "cosine"),
    "dist.nonfinite": ("stop", "skip"),
}
# key -> the least value allowed, for the numbers a minimum describes
AT_LEAST = {"data.dev_size": -1, "data.train_limit": 0, "optim.weight_decay": 0, "optim.warmup_steps": 0,
            "optim.step_size": 0, "optim.min_lr": 0, "train.global_batch": 1, "train.epochs": 1, "train.max_steps": 0,
            "train.seed": -1, "train.micro_batches": 1, "eval.every": 0, "eval.batch": 1, "log.every": 1,
            "dist.check_every": 0, "dist.chunk": 1, "checkpoint.every_steps": 0, "checkpoint.keep": 1}
# key -> (test, what is allowed), for the others
RANGES = {
    "model.hidden": (lambda v: all(isinstance(w, int) and not isinstance(w, bool) and 1 <= w <= 1_000_000 for w in v),
                     "a list of integer widths in [1, 1000000]"),
    "optim.lr": (lambda v: v > 0, "> 0"),
    "optim.momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "optim.gamma": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "optim.beta1": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "optim.beta2": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "optim.eps": (lambda v: v > 0, "> 0"),
    "dist.timeout_s": (lambda v: v == 0 or v >= 1, "0 (off) or at least 1 second"),
    "dist.max_skipped": (lambda v: 0 <= v < 1, "a fraction in [0, 1)"),
    **{key: ((lambda low: lambda v: v >= low)(low), f">= {low}") for key, low in AT_LEAST.items()},
}


def sections() -> dict[str, type]:
    """section name -> its dataclass, e.g. 'optim' -> OptimConfig."""
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in dataclasses.fields(Config)}


def all_keys() -> list[str]:
    return [f"{name}.{f.name}" for name, cls in sections().items() for f in dataclasses.fields(cls)]


def _suggest(key: str) -> str:
    close = difflib.get_close_matches(key, all_keys(), n=1, cutoff=0.5)
    if not close:
        close = [k for k in all_keys() if k.split(".")[1] == key.split(".")[-1]]
    return f"; did you mean '{close[0]}'?" if close else ""


def _coerce(key: str, value, expected):
    """value as the field's type, or ConfigError.  int -> float is allowed, bool -> int is not."""
    if expected is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ConfigError(f"{key} = {value!r} must be a finite number")
        return float(value)
    if expected is list:
        if isinstance(value, list):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return [value]
    elif isinstance(value, expected) and not (expected is int and isinstance(value, bool)):
        return value
    shown = str(value) if isinstance(value, (datetime.date, datetime.time)) else repr(value)
    hint = f' (text: quote it, {key.split(".")[1]} = "{value}")' if expected is str else ""
    raise ConfigError(f"{key} = {shown} has the wrong type: expected {expected.__name__}{hint}")


def apply(config: Config, key: str, value):
    if key.count(".") != 1:
        raise ConfigError(f"'{key}' is not a config key: keys look like section.key{_suggest(key)}")
    section, name = key.split(".")
    section_cls = sections().get(section)
    if section_cls is None or name not in {f.name for f in dataclasses.fields(section_cls)}:
        raise ConfigError(f"unknown config key '{key}'{_suggest(key)}")
    setattr(getattr(config, section), name, _coerce(key, value, typing.get_type_hints(section_cls)[name]))


def from_dict(tree: dict, config: Config | None = None, source: str = "config") -> Config:
    config = config or Config()
    for section, values in tree.items():
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: '{section}' must be a [section] table; "
                              f"keys look like [section] key = value{_suggest(section + '.x')}")
        for name, value in values.items():
            apply(config, f"{section}.{name}", value)
    return config


def parse_override(text: str) -> tuple[str, object]:
    """'section.key=value' -> (key, value); value is read as TOML, else taken as a plain string.
    A key whose type is a string takes the text as given (data.dir=123 is the folder '123')."""
    if "=" not in text:
        raise ConfigError(f"--set '{text}' must look like section.key=value")
    key, raw = (part.strip() for part in text.split("=", 1))
    section, _, name = key.partition(".")
    section_cls = sections().get(section)
    if section_cls and typing.get_type_hints(section_cls).get(name) is str and not raw.startswith(('"', "'")):
        return key, raw
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, raw if isinstance(value, (datetime.date, datetime.time)) else value   # no key holds a date


def read_toml(path) -> dict:
    """A TOML file as a dict (UTF-8, a byte-order mark accepted), or a ConfigError naming the problem."""
    try:
        with open(path, "rb") as handle:
            text = handle.read().decode("utf-8-sig")
        return tomllib.loads(text)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except IsADirectoryError:
        raise ConfigError(f"--config {path} is a folder: give a TOML file (e.g. configs/digits_mlp.toml)") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path} is not UTF-8 text (byte {error.start}): save it as UTF-8") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path} is not valid TOML: {error}") from None
    except OSError as error:
        raise ConfigError(f"cannot read {path} ({error.strerror})") from None


def load_config(path=None, overrides=()) -> Config:
    config = Config()
    if path:
        from_dict(read_toml(path), config, str(path))
    for text in overrides:
        apply(config, *parse_override(text))
    validate(config)
    return config


def validate(config: Config):
    for key, allowed in CHOICES.items():
        value = get(config, key)
        if value not in allowed:
            raise ConfigError(f"{key} = {value!r} is not allowed: choose one of {list(allowed)}")
    for key, (test, allowed) in RANGES.items():
        value = get(config, key)
        if not test(value):
            raise ConfigError(f"{key} = {value!r} is out of range: must be {allowed}")
    if config.optim.schedule == "step" and config.optim.step_size < 1:
        raise ConfigError("optim.schedule = 'step' needs optim.step_size >= 1")
    if config.train.micro_batches > config.train.global_batch:
        raise ConfigError(f"train.micro_batches = {config.train.micro_batches} > train.global_batch = "
                          f"{config.train.global_batch}: a micro-batch needs an example; give at most the batch")
    if config.optim.nesterov and config.optim.momentum == 0:
        raise ConfigError("optim.nesterov = true needs optim.momentum > 0")
    if config.optim.schedule == "cosine" and config.optim.min_lr > config.optim.lr:
        raise ConfigError(f"optim.min_lr = {config.optim.min_lr} > optim.lr = {config.optim.lr}: a cosine schedule "
                          f"would climb; give min_lr <= lr")
    if config.model.kind == "lecture_mlp" and len(config.model.hidden) != 1:
        raise ConfigError(f"model.kind = 'lecture_mlp' has one hidden layer: model.hidden = {config.model.hidden} "
                          f"must hold one width")
    if not config.data.dataset:
        raise ConfigError("data.dataset is empty: use digits, mnist, fashion-mnist or idx:<folder>")
    if config.data.dataset.startswith("idx:") and config.data.dir:
        raise ConfigError(f"data.dir = {config.data.dir!r} is not used with data.dataset = {config.data.dataset!r}, "
                          f"which names its folder itself: drop data.dir")


def get(config: Config, key: str):
    section, name = key.split(".")
    return getattr(getattr(config, section), name)


def to_dict(config: Config) -> dict:
    return dataclasses.asdict(config)


def to_toml(config: Config) -> str:
    """The resolved config as TOML (what tomllib reads back to the same Config)."""
    return "\n".join(f"[{section}]\n" + "".join(f"{name} = {_toml_value(value)}\n" for name, value in values.items())
                     for section, values in to_dict(config).items())


def _toml_value(value) -> str:
    """TOML's booleans, numbers, arrays and string escapes are JSON's (DEL aside); NaN/inf never get here."""
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def describe_keys() -> str:
    """Every key with its default and meaning (the comments above), for --help."""
    import inspect
    lines = []
    defaults = to_dict(Config())
    for section, cls in sections().items():
        source = inspect.getsource(cls).splitlines()
        for f in dataclasses.fields(cls):
            meaning = next((line.split("#", 1)[1].strip() for line in source
                            if line.strip().startswith(f"{f.name}:") and "#" in line), "")
            lines.append(f"  {section}.{f.name} = {_toml_value(defaults[section][f.name])}  -- {meaning}")
    return "\n".join(lines)
