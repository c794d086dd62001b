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


# ---------------------------------------------------------------- rules and the task hook
def test_every_rule_is_small_and_says_what_it_checks():
    from tuneforge.config import RULES

    assert len(RULES) >= 10
    for fn in RULES:
        doc = (fn.__doc__ or "").strip()
        assert doc and "\n" not in doc, f"{fn.__name__} needs a one-line docstring stating its rule"


def test_no_rule_here_knows_task_names(monkeypatch):
    import tuneforge.config as config

    monkeypatch.setattr(config, "TASK_CHECK", [])
    assert not hasattr(config, "TASKS")
    # with no task check registered, any non-empty task name passes the generic rules
    assert from_dict({"task": "seq2seq", "method": {"name": "prompt"}}).task == "seq2seq"
    with pytest.raises(ConfigError, match="task must name a task"):
        from_dict({"task": "  "})


def test_registered_task_checks_run_after_the_generic_rules(monkeypatch):
    import tuneforge.config as config

    monkeypatch.setattr(config, "TASK_CHECK", [])
    seen = []

    def only_known(cfg):
        seen.append(cfg.task)
        if cfg.task not in ("classification", "sft"):
            raise ConfigError(f"task '{cfg.task}' is unknown.")

    assert config.register_task_check(only_known) is only_known
    config.register_task_check(only_known)  # idempotent
    assert config.TASK_CHECK == [only_known]
    from_dict({"task": "sft"})
    with pytest.raises(ConfigError, match="config: task 'tarnslate' is unknown"):
        from_dict({"task": "tarnslate"})
    with pytest.raises(ConfigError, match="training.lr must be positive"):
        from_dict({"task": "tarnslate", "training": {"lr": 0}})  # generic rules come first
    assert seen == ["sft", "tarnslate"]


def test_new_fields_and_their_defaults():
    cfg = RunConfig()
    assert cfg.training.threads == "auto" and cfg.data.allow_audit_errors is False
    assert cfg.grpo.loss_aggregation == "dapo" and cfg.grpo.kl_beta == 0.0
    ref = describe()
    for key in ("training.threads", "data.allow_audit_errors", "grpo.loss_aggregation"):
        assert f"`{key}`" in ref
    assert "0.0 as TRL" in ref


# ---------------------------------------------------------------- resume
def test_config_changes_lists_dotted_keys_sorted():
    from tuneforge.config import config_changes

    old = from_dict({"training": {"lr": 1e-4, "max_steps": 10}})
    new = from_dict({"training": {"lr": 3e-4, "max_steps": 20}, "method": {"name": "lora"}})
    assert config_changes(old, new) == [
        ("method.name", "full", "lora"),
        ("training.lr", 1e-4, 3e-4),
        ("training.max_steps", 10, 20),
    ]
    # dicts are read over the defaults: a missing key is its default value
    assert config_changes({"training": {"lr": 5e-5}}, RunConfig()) == []
    assert config_changes(old.to_dict(), old) == []


def test_resume_allows_only_cadence_and_length_changes():
    from tuneforge.config import RESUMABLE_KEYS, check_resume_changes

    saved = from_dict({"training": {"max_steps": 10, "precision": "bf16", "max_batch_tokens": 583}})
    longer = from_dict(
        {"training": {"max_steps": 30, "eval_every": 5, "precision": "bf16", "max_batch_tokens": 583}}
    )
    check_resume_changes(saved, longer)
    with pytest.raises(ConfigError) as info:
        check_resume_changes(saved, from_dict({"training": {"max_steps": 30, "lr": 1e-3}}))
    message = str(info.value)
    assert "training.lr: 5e-05 -> 0.001" in message
    assert (
        "training.precision: bf16 -> auto" in message and "training.max_batch_tokens: 583 -> auto" in message
    )
    assert "training.max_steps" not in message.split("only these keys")[0]
    assert f"only these keys may change: {', '.join(RESUMABLE_KEYS)}" in message
    assert "start a new run (another output.name)" in message


def test_resume_treats_auto_as_the_saved_resolved_value():
    from tuneforge.config import check_resume_changes

    saved = from_dict({"training": {"precision": "bf16", "max_batch_tokens": 583}})
    resolved = {"training.precision", "training.max_batch_tokens"}
    check_resume_changes(saved, RunConfig(), resolved_keys=resolved)
    with pytest.raises(ConfigError, match="training.precision: bf16 -> fp32"):
        check_resume_changes(saved, from_dict({"training": {"precision": "fp32"}}), resolved_keys=resolved)
    with pytest.raises(ConfigError, match="training.max_batch_tokens: 583 -> null"):
        check_resume_changes(
            saved, from_dict({"training": {"max_batch_tokens": None}}), resolved_keys=resolved
        )


def test_config_source_compares_no_task_names():
    import re

    import tuneforge.config as config

    source = Path(config.__file__).read_text()
    assert not re.search(r"\.task\s*(==|!=|in\b|not in\b)", source)


def test_bf16_where_it_is_emulated_warns_and_auto_falls_back_to_fp32(monkeypatch, caplog):
    """An explicit bf16 on hardware without native bf16 matmuls runs (the user asked) with a warning naming
    the fix; `auto` resolves to fp32 there, as the shipped configs ask."""
    from tuneforge import recipe

    monkeypatch.setattr(recipe, "bf16_native", lambda cuda: False)
    cfg = from_dict({"training": {"precision": "bf16", "device": "cpu"}})
    with caplog.at_level("WARNING", logger="tuneforge.recipe"):
        assert recipe.make_accelerator(cfg).mixed_precision == "bf16"
    assert "without native bf16" in caplog.text and "training.precision=auto" in caplog.text
    caplog.clear()
    cfg = from_dict({"training": {"precision": "auto", "device": "cpu"}})
    with caplog.at_level("WARNING", logger="tuneforge.recipe"):
        assert recipe.make_accelerator(cfg).mixed_precision == "no"
    assert cfg.training.precision == "fp32" and "bf16" not in caplog.text
    shipped = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
    assert shipped
    for path in shipped:  # a shipped config never forces the emulated path
        assert load_config(path).training.precision != "bf16", path
