"""Bad config inputs (issue 21): each row is a config file and/or overrides that must fail at load with a
ConfigError whose message names the key (or file and line) and says what to write instead.

Every row failed differently before: a traceback, a silent acceptance, or an unhelpful message.
"""

from __future__ import annotations

import re

import pytest

from tuneforge.config import apply_overrides, from_dict, load_config
from tuneforge.errors import ConfigError

DIR = object()  # the row's "file" is a folder

# (id, file contents or None for no file or DIR, overrides, pattern the message must match)
BAD = [
    # non-finite numbers: the training loop would run on NaN
    (
        "nan-lr",
        "training:\n  lr: nan\n",
        [],
        r"training.lr must be a finite number, got nan; .*default 5e-05",
    ),
    ("yaml-nan-lr", "training:\n  lr: .nan\n", [], r"training.lr must be a finite number"),
    ("inf-head-lr", "training:\n  head_lr: .inf\n", [], r"training.head_lr must be a finite number"),
    (
        "nan-weight-decay",
        None,
        ["training.weight_decay=.nan"],
        r"override 'training.weight_decay=.nan'.*finite",
    ),
    ("inf-grad-norm", "training:\n  max_grad_norm: inf\n", [], r"training.max_grad_norm must be a finite"),
    ("nan-epochs", "training:\n  epochs: nan\n", [], r"training.epochs must be a finite"),
    ("nan-beta", "preference:\n  beta: .nan\n", [], r"preference.beta must be a finite"),
    ("nan-reward-weight", "grpo:\n  reward_weights: [.nan]\n", [], r"grpo.reward_weights must hold finite"),
    # file shape
    ("yaml-list", "- task: sft\n- training: {}\n", [], r"top level must be a mapping.*got a list.*task: sft"),
    ("yaml-list-overrides", "- a\n- b\n", ["training.lr=1e-4"], r"c\.yaml: the top level must be a mapping"),
    ("yaml-scalar", "hello\n", [], r"top level must be a mapping.*got str 'hello'"),
    (
        "empty-file",
        "",
        [],
        r"is empty; write at least task: and data.train, or omit the file to use the defaults",
    ),
    ("comments-only", "# a run\n", [], r"is empty; write at least task:"),
    ("folder", DIR, [], r"is a folder, not a config file; give a YAML file such as configs/.*\.yaml"),
    ("section-as-list", "training: []\n", [], r"training: expected a mapping of keys, got \[\]"),
    ("section-as-number", "training: 5\n", [], r"training: expected a mapping of keys, got 5"),
    ("not-utf8", b"task: \xff\xfe sft\n", [], r"not a UTF-8 text file"),
    # duplicate keys: YAML keeps the last one silently
    (
        "duplicate-key",
        "task: sft\ntraining:\n  lr: 1e-4\n  batch_size: 2\n  lr: 3e-4\n",
        [],
        r"c\.yaml line 5: key 'lr' is given twice in the same mapping \(first on line 3\); keep one",
    ),
    ("duplicate-section", "training:\n  lr: 1e-4\ntraining:\n  epochs: 2\n", [], r"line 3: key 'training'"),
    # counts and cadences that must be at least 1
    (
        "log-every-0",
        "training:\n  log_every: 0\n",
        [],
        r"training.log_every must be at least 1, got 0; the default is 10",
    ),
    ("eval-batch-size-0", "eval:\n  batch_size: 0\n", [], r"eval.batch_size must be at least 1, got 0"),
    (
        "max-steps-0",
        "training:\n  max_steps: 0\n",
        [],
        r"training.max_steps must be at least 1 \(null trains for",
    ),
    ("max-steps-negative", "training:\n  max_steps: -5\n", [], r"training.max_steps must be at least 1"),
    ("eval-every-0", "training:\n  eval_every: 0\n", [], r"training.eval_every must be at least 1"),
    ("save-every-0", "training:\n  save_every: 0\n", [], r"training.save_every must be at least 1"),
    (
        "keep-checkpoints-0",
        "training:\n  keep_checkpoints: 0\n",
        [],
        r"training.keep_checkpoints must be at least 1",
    ),
    (
        "threads-0",
        "training:\n  threads: 0\n",
        [],
        r"training.threads must be at least 1, got 0; the default is auto",
    ),
    (
        "threads-word",
        "training:\n  threads: many\n",
        [],
        r"training.threads 'many' is unknown. Choose auto or a number",
    ),
    ("limit-0", "data:\n  limit: 0\n", [], r"data.limit must be at least 1 \(null uses every row\)"),
    ("seed-negative", "training:\n  seed: -1\n", [], r"training.seed must be at least 0"),
    # optimizer settings out of range
    (
        "weight-decay-negative",
        "training:\n  weight_decay: -0.1\n",
        [],
        r"training.weight_decay must be at least 0",
    ),
    (
        "grad-norm-0",
        "training:\n  max_grad_norm: 0\n",
        [],
        r"training.max_grad_norm must be positive \(null disables",
    ),
    (
        "grad-norm-negative",
        "training:\n  max_grad_norm: -1\n",
        [],
        r"training.max_grad_norm must be positive",
    ),
    # adapter settings, in our words before PEFT sees them
    ("lora-r-0", "method:\n  name: lora\n  r: 0\n", [], r"method.r must be at least 1 \(the adapter's rank"),
    ("lora-alpha-negative", "method:\n  name: lora\n  alpha: -8\n", [], r"method.alpha must be positive"),
    (
        "lora-dropout-1",
        "method:\n  name: lora\n  lora_dropout: 1.0\n",
        [],
        r"method.lora_dropout must be in \[0, 1\)",
    ),
    (
        "lora-dropout-neg",
        None,
        ["method.name=lora", "method.lora_dropout=-0.1"],
        r"method.lora_dropout must be in",
    ),
    (
        "virtual-tokens-0",
        "method:\n  name: prompt\n  num_virtual_tokens: 0\n",
        [],
        r"method.num_virtual_tokens must be",
    ),
    # names from other tools: the suggestion is ours, not the closest spelling
    (
        "learning-rate",
        "training:\n  learning_rate: 1e-4\n",
        [],
        r"unknown key 'learning_rate'. Did you mean 'lr'\?",
    ),
    ("num-train-epochs", "training:\n  num_train_epochs: 3\n", [], r"Did you mean 'epochs'\?"),
    ("num-epochs", "training:\n  num_epochs: 3\n", [], r"Did you mean 'epochs'\?"),
    ("per-device-batch", "training:\n  per_device_train_batch_size: 8\n", [], r"Did you mean 'batch_size'\?"),
    ("grad-acc-steps", "training:\n  gradient_accumulation_steps: 4\n", [], r"Did you mean 'grad_accum'\?"),
    ("warmup", "training:\n  warmup: 0.1\n", [], r"Did you mean 'warmup_ratio'\?"),
    ("lora-r", "method:\n  lora_r: 8\n", [], r"unknown key 'lora_r'. Did you mean 'r'\?"),
    ("lora-alpha", "method:\n  lora_alpha: 16\n", [], r"Did you mean 'alpha'\?"),
    ("lora-r-in-training", "training:\n  lora_r: 8\n", [], r"Did you mean 'method.r'\?"),
    ("key-in-wrong-section", "training:\n  max_length: 256\n", [], r"Did you mean 'data.max_length'\?"),
    (
        "flat-learning-rate",
        "learning_rate: 1e-4\n",
        [],
        r"unknown section 'learning_rate'. Did you mean 'training.lr'\?",
    ),
    ("grpo-beta", "grpo:\n  beta: 0.04\n", [], r"Did you mean 'kl_beta'\?"),
    ("grpo-loss-type", "grpo:\n  loss_type: dapo\n", [], r"Did you mean 'loss_aggregation'\?"),
    # booleans as text
    (
        "bool-maybe",
        "data:\n  audit: maybe\n",
        [],
        r"data.audit: expected true or false, got the text 'maybe'",
    ),
    (
        "bool-quoted-yes",
        'eval:\n  report: "yes"\n',
        [],
        r"eval.report: expected true or false, got the text 'yes'",
    ),
    (
        "bool-override",
        None,
        ["data.allow_audit_errors=perhaps"],
        r"override 'data.allow_audit_errors=perhaps'",
    ),
    # overrides name themselves
    (
        "override-type",
        None,
        ["training.batch_size=abc"],
        r"override 'training.batch_size=abc': training.batch_size",
    ),
    (
        "override-range",
        "training:\n  lr: 1e-4\n",
        ["training.log_every=0"],
        r"override 'training.log_every=0': .*at least 1",
    ),
    (
        "override-alias",
        None,
        ["training.learning_rate=1e-4"],
        r"override 'training.learning_rate=1e-4'.*'lr'\?",
    ),
    (
        "override-section",
        None,
        ["trainig.lr=1e-4"],
        r"override 'trainig.lr=1e-4': unknown section.*'training'\?",
    ),
    (
        "override-too-deep",
        None,
        ["training.lr.peak=1"],
        r"override 'training.lr.peak=1': keys have two parts",
    ),
    ("override-no-value", None, ["training.lr"], r"write it as section.key=value"),
    ("override-into-scalar", "training: 5\n", ["training.lr=1e-4"], r"has 'training: 5', not a mapping"),
    # other values
    ("task-empty", 'task: ""\n', [], r"task must name a task, e.g. task: classification"),
    ("task-null", None, ["task="], r"override 'task=': task must name a task"),
    (
        "loss-aggregation",
        None,
        ["grpo.loss_aggregation=mean"],
        r"'mean' is unknown. Choose grpo, bnpo, dr_grpo or dapo",
    ),
    ("grpo-range-any-task", "task: sft\ngrpo:\n  group_size: 1\n", [], r"grpo.group_size must be at least 2"),
    ("data-format", "data:\n  format: chat\n", [], r"data.format 'chat' is unknown"),
]


def _load(tmp_path, contents, overrides):
    if contents is DIR:
        return load_config(tmp_path, overrides)
    if contents is None:
        return load_config(None, overrides)
    path = tmp_path / "c.yaml"
    if isinstance(contents, bytes):
        path.write_bytes(contents)
    else:
        path.write_text(contents)
    return load_config(path, overrides)


@pytest.mark.parametrize(
    "contents, overrides, pattern", [row[1:] for row in BAD], ids=[row[0] for row in BAD]
)
def test_bad_input_is_a_clear_config_error(tmp_path, contents, overrides, pattern):
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, contents, overrides)
    message = str(info.value)
    assert re.search(pattern, message), message
    assert "Traceback" not in message and "\n" not in message


def test_row_ids_are_unique():
    ids = [row[0] for row in BAD]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize(
    "contents, overrides",
    [
        ("training:\n  threads: 4\n", []),
        (None, ["training.threads=auto", "data.allow_audit_errors=true"]),
        ("data:\n  audit: yes\n", []),  # YAML 1.1 reads an unquoted yes as true
        ("\ufefftask: sft\ndata:\n  train: x.jsonl\n", []),  # a UTF-8 BOM
        ("training:\n  lr: 1e-4\n  max_grad_norm: null\n  weight_decay: 0\n", []),
        ("training: null\n", ["training.lr=1e-4"]),
        ("task: grpo\ngrpo:\n  loss_aggregation: dr_grpo\n  kl_beta: 0.04\n", []),
        ("method:\n  name: unfreeze\n  unfreeze_every: 40\n", []),
        ("training:\n  epochs: -1\n  max_steps: 10\n", []),  # epochs is ignored when max_steps is set
    ],
)
def test_good_inputs_still_load(tmp_path, contents, overrides):
    _load(tmp_path, contents, overrides)


def test_apply_overrides_refuses_a_list_instead_of_crashing():
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        apply_overrides(["a", "b"], ["training.lr=1e-4"])
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        from_dict(["a", "b"])


def test_override_replaces_a_null_section():
    raw = apply_overrides({"training": None}, ["training.lr=1e-4"])
    assert raw == {"training": {"lr": 1e-4}} or raw == {"training": {"lr": "1e-4"}}


def test_cli_exits_nonzero_with_the_message(tmp_path, capsys):
    from tuneforge.cli import main

    path = tmp_path / "c.yaml"
    path.write_text("training:\n  lr: nan\n")
    with pytest.raises(SystemExit) as info:
        main(["config", str(path)])
    assert info.value.code != 0
    err = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert "training.lr must be a finite number" in err and "Traceback" not in err
