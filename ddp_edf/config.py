"""The command line's configuration: the Trainer's options (training/options.py) plus what to train on,
what model, which optimizer.  Defaults are configs/digits_mlp.toml; a TOML file overrides some keys,
``--set section.key=value`` more.  This module maps TOML onto the constructors, which check their values
(OptionError), and names the key: an unknown key, a wrong type, a value out of range, or a key the
chosen model, optimizer or schedule does not use (given other than its default) is a ConfigError.
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

from .engine.models import check_model
from .engine.optim import SGD, Adam, Schedule
from .errors import OptionError
from .parallel.watchdog import check_timeout
from .training.options import DistOptions, Options, option

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ConfigError(ValueError):
    """A config file, key or value is wrong; the message says which and what is allowed."""


@dataclass
class DataConfig:
    dataset: str = option("digits", "digits (built in) | mnist | fashion-mnist | idx:<folder with the four IDX files>")
    dir: str = option("", "the folder holding the dataset's files (mnist, fashion-mnist; else searched)")
    download: bool = option(True, "fetch mnist / fashion-mnist into the cache when not found")
    dev_size: int = option(-1, "dev = the last N training images (-1: 300 digits, 10000 (fashion-)mnist, 1/6 idx:)")
    train_limit: int = option(0, "keep only the first N training examples (0 = all)")

    def __post_init__(self):
        if not self.dataset:
            raise OptionError("data", "dataset", "", "is empty: use digits, mnist, fashion-mnist or idx:<folder>")
        if self.dataset.startswith("idx:") and self.dir:
            raise OptionError("data", "dir", self.dir, f"is not used with data.dataset = {self.dataset!r}, which "
                                                       f"names its folder itself: drop data.dir")
        for name, low in (("dev_size", -1), ("train_limit", 0)):
            if getattr(self, name) < low:
                raise OptionError("data", name, getattr(self, name), f"must be >= {low}")


@dataclass
class ModelConfig:
    kind: str = option("mlp", "logreg | mlp | lecture_mlp | cnn | vit")
    hidden: list = option((256,), "hidden widths (mlp, cnn; lecture_mlp and vit (its blocks' MLP) take one)")
    activation: str = option("relu", "relu | sigmoid | tanh (mlp)")
    channels: list = option((32, 64), "cnn: the widths of its 3x3 convolutions, each followed by a 2x2 max pool")
    patch: int = option(7, "vit: patches of patch x patch pixels")
    dim: int = option(64, "vit: the model width D")
    depth: int = option(2, "vit: transformer blocks")
    heads: int = option(4, "vit: attention heads (they divide dim)")
    dropout: float = option(0.0, "cnn, vit: dropout probability while training")
    init_seed: int = option(0, "seed of the parameter initialisation (and of the dropout masks)")

    def __post_init__(self):
        self.hidden, self.channels = list(self.hidden), list(self.channels)
        check_model(self.kind, self.hidden, self.activation, self.init_seed, self.channels, self.patch, self.dim,
                    self.depth, self.heads, self.dropout)


@dataclass
class OptimConfig:
    name: str = option("sgd", "sgd | adam")
    lr: float = option(0.1, "base learning rate eta")
    momentum: float = option(0.9, "sgd momentum mu (0 = the lecture's plain SGD)")
    nesterov: bool = option(False, "sgd: Nesterov momentum")
    weight_decay: float = option(0.0, "L2 coefficient added to the gradient")
    schedule: str = option("constant", "constant | step | cosine")
    warmup_steps: int = option(0, "linear warm-up steps (Goyal et al. 2017)")
    step_size: int = option(0, "step schedule: decay every step_size steps")
    gamma: float = option(0.1, "step schedule: decay factor")
    min_lr: float = option(0.0, "cosine schedule: final learning rate")
    beta1: float = option(0.9, "adam")
    beta2: float = option(0.999, "adam")
    eps: float = option(1e-8, "adam")
    clip_norm: float = option(0.0, "clip the reduced gradient to this global L2 norm (0 = off)")

    def __post_init__(self):
        optimizer_of(self)


@dataclass
class DistConfig(DistOptions):
    timeout_s: float = option(300.0, "watchdog: a rank waiting this long in a collective ends the job (0 = off)")

    def __post_init__(self):
        super().__post_init__()
        check_timeout("dist", self.timeout_s)


@dataclass
class Config(Options):
    dist: DistConfig = field(default_factory=DistConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)


SECTIONS = ("data", "model", "optim", "train", "eval", "log", "dist", "checkpoint")
# Constructor argument names that are config keys by another name
KEY_OF = {("optim", "kind"): "schedule", ("model", "seed"): "init_seed"}
# key -> (the key that chooses, the choices that use it): any other choice must leave the key at its default
USED_ONLY_WITH = {
    "model.hidden": ("model.kind", ("mlp", "lecture_mlp", "cnn", "vit")), "model.activation": ("model.kind", ("mlp",)),
    "model.channels": ("model.kind", ("cnn",)), "model.dropout": ("model.kind", ("cnn", "vit")),
    **{f"model.{key}": ("model.kind", ("vit",)) for key in ("patch", "dim", "depth", "heads")},
    "optim.momentum": ("optim.name", ("sgd",)), "optim.nesterov": ("optim.name", ("sgd",)),
    "optim.beta1": ("optim.name", ("adam",)), "optim.beta2": ("optim.name", ("adam",)),
    "optim.eps": ("optim.name", ("adam",)), "optim.step_size": ("optim.schedule", ("step",)),
    "optim.gamma": ("optim.schedule", ("step",)), "optim.min_lr": ("optim.schedule", ("cosine",)),
    "dist.chunk": ("dist.deterministic", (True,)), "dist.max_skipped": ("dist.nonfinite", ("skip",)),
}


# Keys a config saved by an earlier release may lack: each one's default reproduces what that release did
ADDED_LATER = ("model.channels", "model.patch", "model.dim", "model.depth", "model.heads", "model.dropout",
               "optim.clip_norm")


def optimizer_of(o: OptimConfig):
    """The optimizer and schedule ``o`` describes (their constructors check the values)."""
    optimizer = (SGD(o.lr, o.momentum, o.nesterov, o.weight_decay, o.clip_norm) if o.name == "sgd" else
                 Adam(o.lr, (o.beta1, o.beta2), o.eps, o.weight_decay, o.clip_norm) if o.name == "adam" else None)
    if optimizer is None:
        raise OptionError("optim", "name", o.name, "is not one of ['sgd', 'adam']")
    schedule = Schedule(o.schedule, o.warmup_steps, o.step_size, o.gamma, o.min_lr)
    schedule.check(o.lr)
    return optimizer, schedule


def section_classes() -> dict[str, type]:
    """section name -> its dataclass, e.g. 'optim' -> OptimConfig."""
    hints = typing.get_type_hints(Config)
    return {name: hints[name] for name in SECTIONS}


def all_keys() -> list[str]:
    return [f"{name}.{f.name}" for name, cls in section_classes().items() for f in dataclasses.fields(cls)]


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
    if expected is list and isinstance(value, (list, int)) and not isinstance(value, bool):
        return value if isinstance(value, list) else [value]
    if expected is not list and isinstance(value, expected) and not (expected is int and isinstance(value, bool)):
        return value
    shown = str(value) if isinstance(value, (datetime.date, datetime.time)) else repr(value)
    hint = f' (text: quote it, {key.split(".")[1]} = "{value}")' if expected is str else ""
    raise ConfigError(f"{key} = {shown} has the wrong type: expected {expected.__name__}{hint}")


def from_dict(tree: dict, source: str = "config", overrides=()) -> Config:
    """A Config from {section: {key: value}} and then ``overrides`` [(key, value)], each value checked by
    the constructor of its section; a ConfigError names the key."""
    given: dict[str, dict] = {name: {} for name in SECTIONS}
    for section, values in tree.items():
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: '{section}' must be a [section] table; "
                              f"keys look like [section] key = value{_suggest(section + '.x')}")
        for name, value in values.items():
            _set(given, f"{section}.{name}", value)
    for key, value in overrides:
        _set(given, key, value)
    sections = {}
    for name, cls in section_classes().items():
        try:
            sections[name] = cls(**given[name])
        except OptionError as error:
            raise config_error(name, error) from None
    try:
        return Config(**sections)
    except OptionError as error:       # a rule across sections: its name is the key
        raise ConfigError(f"{error.name} = {error.value!r} {error.allowed}") from None


def _set(given: dict, key: str, value):
    section, _, name = key.partition(".")
    cls = section_classes().get(section)
    if cls is None or "." in name or name not in {f.name for f in dataclasses.fields(cls)}:
        raise ConfigError(f"unknown config key '{key}'{_suggest(key)}" if key.count(".") == 1 else
                          f"'{key}' is not a config key: keys look like section.key{_suggest(key)}")
    given[section][name] = _coerce(key, value, typing.get_type_hints(cls)[name])


def config_error(section: str, error: OptionError) -> ConfigError:
    """The constructor's OptionError, told with the config key."""
    key = f"{section}.{KEY_OF.get((section, error.name), error.name)}"
    return ConfigError(f"{key} = {error.value!r} {error.allowed}")


def check_used(config: Config):
    """Refuse a key the chosen model, optimizer, schedule or mode does not use, given other than its default."""
    defaults = Config()
    for key, (chooser, users) in USED_ONLY_WITH.items():
        if get(config, chooser) not in users and get(config, key) != get(defaults, key):
            raise ConfigError(f"{key} = {get(config, key)!r} is not used with {chooser} = {get(config, chooser)!r}: "
                              f"drop it (it is used with {chooser} = {' or '.join(map(repr, users))})")


def parse_override(text: str) -> tuple[str, object]:
    """'section.key=value' -> (key, value); value is read as TOML, else taken as a plain string.
    A key whose type is a string takes the text as given (data.dir=123 is the folder '123')."""
    if "=" not in text:
        raise ConfigError(f"--set '{text}' must look like section.key=value")
    key, raw = (part.strip() for part in text.split("=", 1))
    section, _, name = key.partition(".")
    cls = section_classes().get(section)
    if cls and typing.get_type_hints(cls).get(name) is str and not raw.startswith(('"', "'")):
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
    config = from_dict(read_toml(path) if path else {}, str(path or "config"), [parse_override(t) for t in overrides])
    check_used(config)
    return config


def get(config: Config, key: str):
    section, name = key.split(".")
    return getattr(getattr(config, section), name)


def to_dict(config: Config) -> dict:
    return {name: dataclasses.asdict(getattr(config, name)) for name in SECTIONS}


def to_toml(config: Config) -> str:
    """The resolved config as TOML (what tomllib reads back to the same Config)."""
    return "\n".join(f"[{section}]\n" + "".join(f"{name} = {_toml_value(value)}\n" for name, value in values.items())
                     for section, values in to_dict(config).items())


def _toml_value(value) -> str:
    """TOML's booleans, numbers, arrays and string escapes are JSON's (DEL aside); NaN/inf never get here."""
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def describe_keys() -> str:
    """Every key with its default and meaning, for --help."""
    return "\n".join(f"  {section}.{f.name} = {_toml_value(get(Config(), f'{section}.{f.name}'))}  -- "
                     f"{f.metadata.get('help', '')}" for section, cls in section_classes().items()
                     for f in dataclasses.fields(cls))
