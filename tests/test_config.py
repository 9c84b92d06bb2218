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
    ("optim.lr=0", "optim.lr = 0.0 must be > 0"),
    ("optim.lr=-1", "optim.lr = -1.0 must be > 0"),
    ("train.global_batch=0", "train.global_batch = 0 must be an integer >= 1"),
    ("train.global_batch=1.5", "train.global_batch = 1.5 has the wrong type: expected int"),
    ("train.drop_last=1", "train.drop_last = 1 has the wrong type: expected bool"),
    ("model.activation=gelu", "model.activation = 'gelu' is not one of ['relu', 'sigmoid', 'tanh']"),
    ("model.kind=rnn", "model.kind = 'rnn' is not one of ['logreg', 'mlp', 'lecture_mlp', 'cnn', 'vit']"),
    ("model.heads=0", "model.heads = 0 must be an integer >= 1"),
    ("model.init_seed=-2", "model.init_seed = -2 must be an integer >= 0"),
    ("optim.name=rmsprop", "optim.name = 'rmsprop' is not one of ['sgd', 'adam']"),
    ("optim.schedule=exp", "optim.schedule = 'exp' is not one of ['constant', 'step', 'cosine']"),
    ("optim.momentum=1.5", "optim.momentum = 1.5 must be in [0, 1)"),
    ("model.hidden=[0]", "model.hidden = [0] must be a list of integer widths in [1, 1000000]"),
    ("optim.schedule=step", "optim.step_size = 0 must be >= 1 for the 'step' schedule"),
    ("dist.timeout_s=0.5", "dist.timeout_s = 0.5 must be 0 (off) or at least 1 second"),
    ("dist.nonfinite=ignore", "dist.nonfinite = 'ignore' is not one of ['stop', 'skip']"),
    ("data.train_limit=-1", "data.train_limit = -1 must be >= 0"),
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


@pytest.mark.parametrize("overrides,message", [
    (["model.kind=logreg", "model.hidden=[32,32]"], "model.hidden = [32, 32] is not used with model.kind = 'logreg'"),
    (["model.kind=lecture_mlp", "model.activation=tanh"], "model.activation = 'tanh' is not used with model.kind"),
    (["optim.name=adam", "optim.momentum=0.5"], "optim.momentum = 0.5 is not used with optim.name = 'adam'"),
    (["optim.beta1=0.8"], "optim.beta1 = 0.8 is not used with optim.name = 'sgd': drop it (it is used with "
                          "optim.name = 'adam')"),
    (["optim.schedule=cosine", "optim.gamma=0.5"], "optim.gamma = 0.5 is not used with optim.schedule = 'cosine'"),
    (["dist.chunk=8"], "dist.chunk = 8 is not used with dist.deterministic = False"),
    (["model.channels=[8]"], "model.channels = [8] is not used with model.kind = 'mlp'"),
    (["model.kind=cnn", "model.heads=2"], "model.heads = 2 is not used with model.kind = 'cnn'"),
    (["model.dropout=0.5"], "model.dropout = 0.5 is not used with model.kind = 'mlp'"),
    (["dist.deterministic=true", "train.micro_batches=2"], "train.micro_batches = 2 is not used with "
                                                           "dist.deterministic = true (its fixed chunks are")])
def test_a_key_the_choice_does_not_use_is_refused_not_recorded(overrides, message):
    with pytest.raises(ConfigError) as error:
        load_config(None, overrides)
    assert message in str(error.value)


def test_a_key_left_at_its_default_is_not_in_the_way_and_help_lists_every_key_with_its_meaning():
    from ddp_edf.config import all_keys, describe_keys
    assert load_config(None, ["model.kind=logreg", "optim.name=adam"]).model.hidden == [256]   # unset: fine
    text = describe_keys()
    assert all(f"  {key} = " in text for key in all_keys())
    assert "train.global_batch = 128  -- examples per step, summed over all ranks" in text
    assert "dist.timeout_s = 300.0  -- watchdog" in text
