"""Tasks wire data, model and loss together: classification, sft, reward, dpo, grpo.

Each task class takes the run config and implements the ``Task`` protocol of ``train/loop.py``: what
the training loop needs (``lengths``, ``counts``, ``collate``, ``loss``, ``evaluate``, ``save_model``),
what the recipe records (``data_summary``) and what the run needs after training (``full_evaluation``).
``task_class`` maps ``config.task`` to the class.
"""

from __future__ import annotations

from tuneforge.errors import ConfigError


def task_class(name: str):
    if name == "classification":
        from tuneforge.tasks.classification import ClassificationTask

        return ClassificationTask
    if name == "sft":
        from tuneforge.tasks.sft import SFTTask

        return SFTTask
    if name == "reward":
        from tuneforge.tasks.reward import RewardTask

        return RewardTask
    if name == "dpo":
        from tuneforge.tasks.dpo import PreferenceTask

        return PreferenceTask
    if name == "grpo":
        from tuneforge.tasks.grpo import GRPOTask

        return GRPOTask
    raise ConfigError(f"task '{name}' is not available in this version of tuneforge.")
