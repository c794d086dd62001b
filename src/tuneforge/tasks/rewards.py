"""Reward functions for GRPO: built-in verifiable rewards, your own Python function, or a trained reward model.

``grpo.rewards`` lists specs; their weighted sum is a completion's reward:

    ends_with_period      1 if the answer ends with "."
    max_words:N           1 if the answer has fewer than N words
    length:N              1 - |words - N| / N, at least 0 (closest to N words is best)
    short_answer:N        1 if the answer ends with "." and has fewer than N words (both at once)
    regex:PATTERN         1 if PATTERN matches somewhere in the answer (anchor it with ^...$ for the whole)
    contains:TEXT         1 if TEXT appears in the answer (case-insensitive)
    module:function       your function, imported (``my_rewards:politeness``; or ``path/to/file.py:function``)
    RUN_DIR               a reward model trained with ``task: reward`` (its score of prompt + answer)

A function is called as ``fn(prompts=[...], completions=[...], references=[...])`` with one string per
completion (``references`` holds the dataset's answer when it has one, else None); it returns one number per
completion. It may take only the keywords it needs, or ``**kwargs``. Built-in names win over module names.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tuneforge.errors import ConfigError, TuneforgeError


def _words(text: str) -> int:
    return len(text.split())


def ends_with_period(completions: list[str], **_) -> list[float]:
    return [float(c.strip().endswith(".")) for c in completions]


def max_words(n: int) -> Callable[..., list[float]]:
    return lambda completions, **_: [float(_words(c) < n) for c in completions]


def length(n: int) -> Callable[..., list[float]]:
    return lambda completions, **_: [max(0.0, 1.0 - abs(_words(c) - n) / n) for c in completions]


def short_answer(n: int) -> Callable[..., list[float]]:
    return lambda completions, **_: [float(c.strip().endswith(".") and _words(c) < n) for c in completions]


def regex(pattern: str) -> Callable[..., list[float]]:
    try:
        compiled = re.compile(pattern, re.DOTALL)
    except re.error as e:
        raise ConfigError(
            f"grpo.rewards: 'regex:{pattern}' is not a valid regular expression ({e})."
        ) from None
    return lambda completions, **_: [float(compiled.search(c) is not None) for c in completions]


def contains(text: str) -> Callable[..., list[float]]:
    return lambda completions, **_: [float(text.lower() in c.lower()) for c in completions]


# name -> (factory or function, argument type or None)
BUILTINS: dict[str, tuple[Callable, type | None]] = {
    "ends_with_period": (ends_with_period, None),
    "max_words": (max_words, int),
    "length": (length, int),
    "short_answer": (short_answer, int),
    "regex": (regex, str),
    "contains": (contains, str),
}


class RewardModel:
    """A reward model run folder (task: reward) as a reward function: its score of prompt + completion."""

    def __init__(self, path: str):
        from transformers import AutoTokenizer

        from tuneforge.config import load_config
        from tuneforge.tasks.reward import RewardTask

        folder = Path(path).expanduser()
        if not (folder / "config.yaml").is_file():
            raise ConfigError(f"grpo.rewards: {path} is a folder but not a tuneforge run (no config.yaml).")
        cfg = load_config(folder / "config.yaml")
        if cfg.task != RewardTask.name:
            raise ConfigError(
                f"grpo.rewards: {path} is a '{cfg.task}' run, not a reward model (task: reward)."
            )
        if not (folder / "model").is_dir():
            raise ConfigError(
                f"grpo.rewards: {path} has no final model yet (model/): finish or resume that run."
            )
        self.max_length = cfg.data.max_length
        self.model = RewardTask.load_model(folder / "model", cfg).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(folder / "model")

    def __call__(self, prompts: list[str], completions: list[str], **_) -> list[float]:
        from tuneforge.tasks.reward import score_responses

        return score_responses(self.model, self.tokenizer, self.max_length, prompts, completions)


def _import(spec: str) -> Callable:
    where, _, name = spec.rpartition(":")
    try:
        if where.endswith(".py"):
            path = Path(where).expanduser()
            if not path.is_file():
                raise ConfigError(f"grpo.rewards: file {path} not found (from '{spec}').")
            module_spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules.setdefault(path.stem, module)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except ImportError as e:
        raise ConfigError(
            f"grpo.rewards: cannot import '{where}' for '{spec}' ({e}). Is it on PYTHONPATH, or give "
            f"path/to/file.py:{name}."
        ) from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ConfigError(f"grpo.rewards: '{where}' has no function '{name}'.")
    return fn


@dataclass
class Reward:
    name: str
    fn: Callable[..., list[float]]
    weight: float = 1.0

    def __call__(
        self, prompts: list[str], completions: list[str], references: list[str | None]
    ) -> list[float]:
        kwargs = {"prompts": prompts, "completions": completions, "references": references}
        try:
            params = inspect.signature(self.fn).parameters
            if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
                kwargs = {k: v for k, v in kwargs.items() if k in params}
        except (TypeError, ValueError):  # builtins without a signature: pass everything
            pass
        values = self.fn(**kwargs)
        values = list(values) if values is not None else []
        if len(values) != len(completions):
            raise TuneforgeError(
                f"reward '{self.name}' returned {len(values)} values for {len(completions)} completions: "
                f"it must return one number per completion."
            )
        out = []
        for v in values:
            v = float("nan") if v is None else float(v)
            out.append(v)
        if any(math.isnan(v) for v in out):
            raise TuneforgeError(
                f"reward '{self.name}' returned None or NaN for some completions: return a number for each."
            )
        return out


def load_reward(spec: str, weight: float = 1.0) -> Reward:
    """One ``grpo.rewards`` entry as a callable ``Reward``."""
    name, _, arg = spec.partition(":")
    if name in BUILTINS:
        fn, kind = BUILTINS[name]
        if kind is None:
            if arg:
                raise ConfigError(f"grpo.rewards: '{name}' takes no argument (got '{spec}').")
            return Reward(spec, fn, weight)
        if not arg:
            raise ConfigError(
                f"grpo.rewards: '{name}' needs an argument, e.g. '{name}:{12 if kind is int else 'text'}'."
            )
        if kind is int:
            if not arg.isdigit() or int(arg) < 1:
                raise ConfigError(
                    f"grpo.rewards: '{spec}': the argument must be a positive whole number of words."
                )
            return Reward(spec, fn(int(arg)), weight)
        return Reward(spec, fn(arg), weight)
    if Path(spec).expanduser().is_dir():
        return Reward(spec, RewardModel(spec), weight)
    if ":" in spec:
        return Reward(spec, _import(spec), weight)
    raise ConfigError(
        f"grpo.rewards: '{spec}' is not a built-in reward ({', '.join(BUILTINS)}), a reward-model run "
        f"folder, nor module:function."
    )


def load_rewards(specs: list[str], weights: list[float] | None = None) -> list[Reward]:
    weights = weights or [1.0] * len(specs)
    return [load_reward(s, w) for s, w in zip(specs, weights)]
