"""Tasks wire data, model and loss together. One file per task behind ``tasks.base.Task``, one line here.

``get_task(name)`` is the task class; everything outside ``tasks/`` asks it (its kind, metrics, probes,
how to load its model) instead of comparing task names. Adding a task: ``docs/architecture.md``.
"""

from __future__ import annotations

import difflib
import importlib

from tuneforge import config as _config
from tuneforge.errors import ConfigError
from tuneforge.tasks.base import Metric, Task

# name -> "module:Class" (imported when first asked for)
TASKS: dict[str, str] = {
    "classification": "tuneforge.tasks.classification:ClassificationTask",
    "sft": "tuneforge.tasks.sft:SFTTask",
    "seq2seq": "tuneforge.tasks.seq2seq:Seq2SeqTask",
    "reward": "tuneforge.tasks.reward:RewardTask",
    "dpo": "tuneforge.tasks.dpo:PreferenceTask",
    "grpo": "tuneforge.tasks.grpo:GRPOTask",
}


def get_task(name: str) -> type[Task]:
    """The class of task ``name``; a clear error naming the tasks when it is unknown."""
    if name not in TASKS:
        close = difflib.get_close_matches(str(name), list(TASKS), n=1, cutoff=0.5)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"task '{name}' is unknown.{hint} Choose one of {', '.join(TASKS)}.")
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def check_config(cfg) -> None:
    """The task's own rules on a config (run by ``tuneforge.config.validate``)."""
    get_task(cfg.task).check_config(cfg)


_config.register_task_check(check_config)

__all__ = ["TASKS", "Metric", "Task", "check_config", "get_task"]
