"""The task interface: everything a task declares and does, in one place.

A task wires data, model and loss together for one kind of fine-tuning. It is one file under ``tasks/``
with one class that subclasses ``Task`` plus one line in ``tasks/__init__.py``'s ``TASKS``. Everything
outside ``tasks/`` (config validation, the recipe, ``Run``, the report, the CLI) asks the task class
instead of comparing task names:

- what it is: ``name``, ``kind`` (classifier, language model, reward model, policy), the config
  ``sections`` it reads and the ``methods`` it can train with;
- how it is judged: ``metrics`` (validation metrics with their direction; the first is the default for
  ``training.metric: auto``) and ``result`` (the type of its ``eval.json``, see ``EVAL_SCHEMA``);
- which probes the report may run on it (``probes``);
- how its model is loaded back (``load_model``) and saved (``save_model``);
- what the training loop needs: ``lengths``, ``counts``, ``token_cost``, ``collate``, ``loss``,
  ``evaluate`` and ``begin_step`` (online tasks sample there).

``eval.json`` always carries ``schema_version``, ``task``, ``kind`` and ``result`` (``stamp``), so a reader
(the report, ``tuneforge eval``) knows its shape without knowing the task. The shapes are written down in
``docs/architecture.md`` ("eval.json").
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from tuneforge.data.bundled import DATASETS, load_bundled
from tuneforge.data.formats import Example
from tuneforge.data.split import split_grouped, subsample
from tuneforge.errors import ConfigError, DataError

EVAL_SCHEMA_VERSION = 1
KINDS = ("classifier", "language_model", "reward_model", "policy")
ALL_METHODS = ("full", "freeze", "unfreeze", "lora", "dora", "ia3", "prefix", "prompt", "houlsby", "pfeiffer")
OPTIONAL_SECTIONS = ("sft", "preference", "grpo", "seq2seq")  # sections only some tasks read
PROBES = ("lengths", "bias", "forgetting", "lm_eval", "samples")


@dataclass(frozen=True)
class Metric:
    """A validation metric a task logs, and which way is better."""

    name: str
    greater_is_better: bool
    help: str = ""


class Task:
    """Base class of every task. Subclasses set the class attributes and implement the methods."""

    # ---- what the task is (class attributes, read without building the task)
    name: ClassVar[str]
    kind: ClassVar[str]  # one of KINDS
    metrics: ClassVar[tuple[Metric, ...]]  # validation metrics; the first is the default training.metric
    result: ClassVar[str]  # eval.json result type: classification | language_model | preference | ...
    probes: ClassVar[frozenset[str]] = frozenset({"lengths"})
    sections: ClassVar[tuple[str, ...]] = ()  # optional config sections it reads (of OPTIONAL_SECTIONS)
    methods: ClassVar[tuple[str, ...]] = ALL_METHODS
    samples_during_training: ClassVar[bool] = (
        False  # generates inside each step (online RL): auto compiles only long runs
    )
    encoder_decoder: ClassVar[bool] = False  # trains an encoder-decoder (reads model.seq2seq_warm_start)

    # ---- what the training loop reads (set by __init__)
    lengths: list[int]  # tokens of every training example (for grouping and the token cap)
    counts: list[int]  # items each training example adds to the loss (1, or its loss tokens)
    splits: dict[str, list[Example]]
    tokenizer: Any
    model: Any = None
    data_format: str = "auto"

    # ---- class-level questions
    @classmethod
    def has_head(cls) -> bool:
        """A new output head is trained (classifiers and reward models)."""
        return cls.kind in ("classifier", "reward_model")

    @classmethod
    def generates(cls) -> bool:
        """The model writes text (chat, generate, samples, forgetting probes)."""
        return cls.kind in ("language_model", "policy")

    def default_metric(self) -> Metric:
        """The metric ``training.metric: auto`` means for this run (the task's first, unless the data says)."""
        return self.metrics[0]

    @classmethod
    def metric(cls, name: str) -> Metric:
        """The metric ``training.metric`` names ("auto": the task's first)."""
        if name == "auto":
            return cls.metrics[0]
        for m in cls.metrics:
            if m.name == name:
                return m
        raise ConfigError(cls.unknown_metric(name))

    @classmethod
    def unknown_metric(cls, name: str) -> str:
        names = [m.name for m in cls.metrics]
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        return (
            f"training.metric: '{name}' is not a validation metric of task '{cls.name}'.{hint} "
            f"Choose auto or one of {', '.join(names)}."
        )

    @classmethod
    def check_config(cls, cfg) -> None:
        """Task rules on a config: the metric, the method, the sections it reads. Subclasses add their own."""
        cls.metric(cfg.training.metric)
        if cfg.model.seq2seq_warm_start and not cls.encoder_decoder:
            raise ConfigError(
                f"model.seq2seq_warm_start builds an encoder-decoder, which task '{cls.name}' does not train: "
                "remove it, or use task: seq2seq."
            )
        qlora = cfg.method.name == "qlora" and "lora" in cls.methods  # LoRA on a 4-bit base: where LoRA is
        if cfg.method.name not in cls.methods and not qlora:
            raise ConfigError(
                f"method '{cfg.method.name}' cannot train task '{cls.name}' (a {cls.kind.replace('_', ' ')}): use one "
                f"of {', '.join(cls.methods)}."
            )
        for section in OPTIONAL_SECTIONS:
            if section in cls.sections:
                continue
            changed = _changed_keys(cfg, section)
            if changed:
                raise ConfigError(
                    f"{', '.join(f'{section}.{k}' for k in changed)} set, but task '{cls.name}' does not read the "
                    f"'{section}' section: remove {'it' if len(changed) == 1 else 'them'}"
                    + (f" (task '{cls.name}' reads: {', '.join(cls.sections)})." if cls.sections else ".")
                )

    # ---- the model
    @classmethod
    def load_model(cls, model_dir: Path, cfg) -> torch.nn.Module:
        """The saved model of a run folder (``model/`` or ``best/``), as transformers/PEFT loads it."""
        raise NotImplementedError

    def save_model(self, model, out: Path, notes: dict | None = None) -> None:
        """Save the model (or adapter) and tokenizer as a folder ``from_pretrained`` loads; ``notes``: extra
        JSON files to put in it (e.g. the training step it holds)."""
        raise NotImplementedError

    # ---- training
    def end_training(self) -> None:
        """Training is over and the final model saved: drop what only training needed (the training model;
        GRPO its sampling copy), so the final evaluation, which loads the saved model, holds one model."""
        self.model = None

    def token_cost(self, i: int) -> int:
        """Tokens the step computes for training example ``i`` (GRPO: prompt plus sampled completions)."""
        return self.lengths[i]

    def begin_step(self, model, micro: list[list[int]], reduce) -> float | None:
        """Called before an optimizer step's micro-batches (this process's ``micro``). Online tasks sample here
        (GRPO) and return this process's loss items for the step, which the loop sums over processes; KTO
        estimates its KL reference point over the whole step (``reduce`` sums a tensor over processes).
        Offline tasks return None: the loop counts items from ``counts``."""
        return None

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def loss(self, model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        """Summed loss of a micro-batch and the number of items it sums over."""
        raise NotImplementedError

    def pop_train_metrics(self) -> dict[str, float]:
        """Task-specific training metrics since the last call (rewards, margins, KL, ...)."""
        return {}

    # ---- evaluation
    def evaluate(self, model, split: str) -> dict[str, float]:
        """Validation metrics of ``model`` on ``split`` (every name in ``metrics``)."""
        raise NotImplementedError

    def full_evaluation(self, model, split: str = "test", baseline: bool = True) -> dict:
        """The test evaluation written to eval.json (call ``stamp`` on it)."""
        raise NotImplementedError

    def stamp(self, result: dict) -> dict:
        """Add the schema fields every eval.json carries."""
        return {
            "schema_version": EVAL_SCHEMA_VERSION,
            "task": self.name,
            "kind": self.kind,
            "result": self.result,
            **result,
        }

    def data_summary(self) -> dict:
        raise NotImplementedError

    def read_file(self, spec: str) -> list[Example]:
        """Examples of another file or bundled split (``tuneforge eval RUN --data FILE``)."""
        raise NotImplementedError

    def preflight(self) -> None:
        """Print what the user should see before training (e.g. SFT: the trained tokens of one example)."""

    @staticmethod
    def format_eval(result: dict) -> list[str]:
        """Lines that summarise this task's eval.json for the terminal."""
        return [
            f"{k}: {v}" for k, v in (result.get("tuned") or {}).items() if not isinstance(v, (dict, list))
        ]


def _changed_keys(cfg, section: str) -> list[str]:
    """Keys of an optional section that differ from their defaults."""
    import dataclasses

    current = getattr(cfg, section)
    default = type(current)()
    return [
        f.name for f in dataclasses.fields(current) if getattr(current, f.name) != getattr(default, f.name)
    ]


Reader = Callable[[str], tuple[list[Example], str]]


def load_splits(d, seed: int, read: Reader, key=None) -> tuple[dict[str, list[Example]], str, bool]:
    """train / validation / test examples: files or bundled splits, split off the training data when absent.

    ``read(spec) -> (examples, format)`` reads one file or bundled split; ``key`` stratifies the split (the label).
    Returns the splits, the training data's format, and whether the user (or the dataset) made the held-out
    splits (``user_split``): only then can train and test overlap, since tuneforge's own split keeps every
    group of duplicates on one side.
    """
    train, fmt = read(d.train)
    alias = d.train.split(":")[0]
    user_split = bool(d.test or d.validation)
    test = read(d.test)[0] if d.test else None
    if test is None and alias in DATASETS and "test" in load_bundled(alias) and ":" not in d.train:
        test = read(f"{alias}:test")[0]
        user_split = True
    # tuneforge's own split keeps each group of exact and near duplicates on one side: it never leaks
    if test is None:
        train, test = split_grouped(train, d.test_fraction, seed + 1, key=key, threshold=d.near_dup_threshold)
    validation = read(d.validation)[0] if d.validation else None
    if validation is None:
        train, validation = split_grouped(
            train, d.validation_fraction, seed, key=key, threshold=d.near_dup_threshold
        )
    splits = {
        "train": subsample(train, d.limit, seed),
        "validation": subsample(validation, d.eval_limit, seed),
        "test": subsample(test, d.eval_limit, seed),
    }
    if not splits["train"]:
        raise DataError(f"{d.train}: no training examples left after splitting.")
    return splits, fmt, user_split
