"""Configs: defaults equal configs/digits_mlp.toml; every kind of error is one clear line."""

import sys
from pathlib import Path

import pytest

from ddp_edf.config import Config, ConfigError, load_config, to_toml

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_defaults_equal_digits_mlp_toml():
    assert load_config(CONFIGS / "digits_mlp.toml") == Config()


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.toml")))
def test_every_shipped_config_loads(name):
    load_config(CONFIGS / name)


def test_resolved_config_round_trips_through_toml(tmp_path):
    config = load_config(CONFIGS / "smoke.toml", ["optim.lr=0.25", "model.hidden=[8, 4]"])
    path = tmp_path / "c.toml"
    path.write_text(to_toml(config))
    assert load_config(path) == config


def test_overrides():
    config = load_config(None, ["optim.lr=0.05", "data.dataset=fashion-mnist", "train.drop_last=true",
                                "model.hidden=[10,20]", "optim.lr = 1"])
    assert config.optim.lr == 1.0 and isinstance(config.optim.lr, float)
    assert config.data.dataset == "fashion-mnist" and config.train.drop_last is True
    assert config.model.hidden == [10, 20]


@pytest.mark.parametrize("override,message", [
    ("optim.lrr=0.1", "unknown config key 'optim.lrr'; did you mean 'optim.lr'?"),
    ("train.global_bach=3", "did you mean 'train.global_batch'?"),
    ("optimizer.lr=0.1", "did you mean 'optim.lr'?"),
    ("lr=0.1", "'lr' is not a config key"),
    ("optim.lr", "must look like section.key=value"),
    ("optim.lr=0", "optim.lr = 0.0 is out of range: must be > 0"),
    ("optim.lr=-1", "optim.lr = -1.0 is out of range"),
    ("train.global_batch=0", "train.global_batch = 0 is out of range: must be >= 1"),
    ("train.global_batch=1.5", "train.global_batch = 1.5 has the wrong type: expected int"),
    ("train.drop_last=1", "train.drop_last = 1 has the wrong type: expected bool"),
    ("model.activation=gelu", "model.activation = 'gelu' is not allowed: choose one of ['relu', 'sigmoid', 'tanh']"),
    ("model.kind=cnn", "model.kind = 'cnn' is not allowed"),
    ("optim.name=rmsprop", "optim.name = 'rmsprop' is not allowed"),
    ("optim.schedule=exp", "optim.schedule = 'exp' is not allowed"),
    ("optim.momentum=1.5", "optim.momentum = 1.5 is out of range: must be in [0, 1)"),
    ("model.hidden=[0]", "model.hidden = [0] is out of range"),
    ("optim.schedule=step", "needs optim.step_size >= 1"),
])
def test_config_errors_name_key_value_and_what_is_allowed(override, message):
    with pytest.raises(ConfigError) as error:
        load_config(None, [override])
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_errors_in_a_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[optim]\nlearning_rate = 0.1\n")
    with pytest.raises(ConfigError, match="unknown config key 'optim.learning_rate'"):
        load_config(bad)
    bad.write_text("[optim\nlr = 0.1\n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_config(bad)
    bad.write_text("lr = 0.1\n")
    with pytest.raises(ConfigError, match="'lr' must be a \\[section\\] table"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")


def test_shipped_configs_parse_as_toml():
    for path in CONFIGS.glob("*.toml"):
        with open(path, "rb") as handle:
            assert isinstance(tomllib.load(handle), dict)
