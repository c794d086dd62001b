from pathlib import Path

import pytest

from tuneforge.config import RunConfig, describe, from_dict, load_config
from tuneforge.errors import ConfigError

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


def test_defaults_are_valid():
    cfg = RunConfig()
    assert cfg.task == "classification" and cfg.method.name == "full"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert cfg.model.name and cfg.data.train


def test_unknown_key_suggests_the_right_one():
    with pytest.raises(ConfigError, match="unknown key 'learning_rate'.*Valid keys"):
        from_dict({"training": {"learning_rate": 1e-4}})
    with pytest.raises(ConfigError, match="Did you mean 'batch_size'"):
        from_dict({"training": {"batchsize": 8}})
    with pytest.raises(ConfigError, match="unknown section 'trainig'.*Did you mean 'training'"):
        from_dict({"trainig": {}})


def test_wrong_types_and_values_are_rejected():
    with pytest.raises(ConfigError, match="training.batch_size: expected int"):
        from_dict({"training": {"batch_size": "eight"}})
    with pytest.raises(ConfigError, match="method.name 'lorra' is unknown.*Did you mean 'lora'"):
        from_dict({"method": {"name": "lorra"}})
    with pytest.raises(ConfigError, match="training.scheduler"):
        from_dict({"training": {"scheduler": "exponential"}})


def test_conflicting_options_are_rejected():
    with pytest.raises(ConfigError, match="freeze_layers is only used by method 'freeze'"):
        from_dict({"method": {"name": "lora", "freeze_layers": 2}})
    with pytest.raises(ConfigError, match="warmup_steps and training.warmup_ratio are both set"):
        from_dict({"training": {"warmup_steps": 10, "warmup_ratio": 0.1}})
    with pytest.raises(ConfigError, match="layer_lr_decay applies to 'full' and 'unfreeze'"):
        from_dict({"method": {"name": "lora", "layer_lr_decay": 0.5}})
    with pytest.raises(ConfigError, match="early stopping needs validation data"):
        from_dict({"data": {"validation_fraction": 0}, "training": {"early_stopping_patience": 2}})


def test_overrides_and_yaml_errors(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  name: minilm-l6\ntraining:\n  lr: 1e-4\n")
    cfg = load_config(p, ["training.lr=3e-4", "data.limit=100", "method.target_modules=[query, value]"])
    assert (
        cfg.training.lr == 3e-4 and cfg.data.limit == 100 and cfg.method.target_modules == ["query", "value"]
    )
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(p, ["training.lr"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  name: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml line"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_round_trip_and_reference(tmp_path):
    cfg = load_config(None, ["training.lr=2e-5", "method.name=lora"])
    cfg.save(tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again.to_dict() == cfg.to_dict()
    ref = describe()
    assert "`training.lr`" in ref and "`method.r`" in ref
